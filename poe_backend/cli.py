"""``poe-backend`` command line. Each subcommand lives in its own module, which exposes
``register(subparsers)`` adding its parser with ``func=`` set; imports stay lazy so that
``poe-backend toy`` never loads diffusers."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that define subcommands, in help order.
COMMAND_MODULES = (
    "poe_backend.toy.cli",
    "poe_backend.tasks.cli",
    "poe_backend.server.cli",
    "poe_backend.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poe-backend", description="Product-of-Experts visual generation backend")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    register_models(subparsers)
    return parser


def register_models(subparsers: argparse._SubParsersAction) -> None:
    """``poe-backend models list|pull|check [--task T] [--preset P]``: the weights manager
    (:mod:`poe_backend.models.weights`), without torch; without ``--task``, every task's
    roles. ``poe-backend models plan [--task T] [--card-gb N ...] [--ram-gb M ...]``: the
    memory planner's decisions for the full-size models (:func:`planner.plan_report`)."""
    models = subparsers.add_parser("models", help="list, download or check the model weights a task needs")
    actions = models.add_subparsers(dest="action", required=True)
    for action, help_text, func in (
        ("list", "table of roles: repo, subfolders, size, present/partial/missing, path", _models_list),
        ("pull", "download only the missing subfolders (snapshot_download allow_patterns)", _models_pull),
        ("check", "exit 1 with the pull command when something is missing", _models_check),
        ("plan", "memory plans of the full-size models per card and host RAM (no weights needed)", _models_plan),
    ):
        parser = actions.add_parser(action, help=help_text)
        parser.add_argument("--task", default=None, help="a task name (default: every task)")
        parser.add_argument("--preset", default="default", help="model preset: default, preview, tiny or a JSON preset")
        if action == "pull":
            parser.add_argument("--dry-run", action="store_true", help="print what would be downloaded and stop")
        if action == "plan":
            parser.add_argument("--card-gb", type=float, nargs="+", default=[24, 48, 80, 141], help="GPU memory sizes in GiB (default: 24 48 80 141)")
            parser.add_argument("--ram-gb", type=float, nargs="+", default=[32, 64, 128], help="host RAM sizes in GiB (default: 32 64 128)")
        parser.set_defaults(func=func)


def _models_roles(arguments: argparse.Namespace) -> list[str]:
    from poe_backend.tasks.requirements import required_roles, task_names

    tasks = [arguments.task] if arguments.task else task_names()
    return list(dict.fromkeys(role for task in tasks for role in required_roles(task, None, arguments.preset)))


def _models_status(arguments: argparse.Namespace) -> list:
    from poe_backend.models import weights
    from poe_backend.models.specs import data_dir

    return weights.status(_models_roles(arguments), arguments.preset, data_dir())


def _models_list(arguments: argparse.Namespace) -> int:
    from poe_backend.models import weights

    statuses = _models_status(arguments)
    rows = [("role", "repo", "subfolders", "size", "state", "path")]
    for item in statuses:
        size = weights.format_bytes(item.size_bytes) if item.size_exact else "~" + weights.format_bytes(item.size_bytes)
        path = f"{item.path} (shared, from {item.found_in})" if item.found_in else str(item.path or "-")
        rows.append((item.role, item.repo_id or "local", " ".join(item.allow_patterns) or "-", size, item.state, path))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    needed, to_download = weights.totals(statuses)
    exact = all(item.size_exact for item in statuses)
    directory, free = weights.disk_free()
    print(f"total {weights.format_bytes(needed)}{'' if exact else ' (estimate)'}; to download {weights.format_bytes(to_download)}; disk free {weights.format_bytes(free)} at {directory}")
    for hint in dict.fromkeys(item.gated for item in statuses if item.gated and item.state != "present"):
        print(hint)
    return 0


def _models_pull(arguments: argparse.Namespace) -> int:
    from poe_backend.models import weights

    statuses = _models_status(arguments)
    for item in statuses:
        if item.state == "present" and item.repo_id is not None:
            print(f"present {item.role}: {item.path}")
    downloads = weights.plan(statuses)
    for download in downloads:
        size = weights.format_bytes(download.size_bytes) if download.size_exact else "~" + weights.format_bytes(download.size_bytes)
        print(f"download {download.repo_id}@{download.revision or 'main'} {' '.join(download.allow_patterns)} ({size}; for {', '.join(download.roles)})")
        if download.gated:
            print(f"  {download.gated}")
    if not downloads:
        print("nothing to download")
    if arguments.dry_run or not downloads:
        return 0
    try:
        weights.download(downloads)
    except OSError as error:  # too little disk, offline, no access to a gated repo, no network
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _models_check(arguments: argparse.Namespace) -> int:
    from poe_backend.models import weights

    lacking = [item for item in _models_status(arguments) if item.state != "present"]
    for item in lacking:
        print(f"{item.state} {item.role}: {item.repo_id} {' '.join(item.allow_patterns)}")
    if lacking:
        print(f"run: {weights.pull_command(arguments.task, arguments.preset)}")
        return 1
    print("all weights present")
    return 0


def _models_plan(arguments: argparse.Namespace) -> int:
    from poe_backend.runtime import planner

    try:
        print(planner.plan_report([arguments.task] if arguments.task else None, tuple(arguments.card_gb), tuple(arguments.ram_gb)))
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return int(arguments.func(arguments) or 0)


if __name__ == "__main__":
    sys.exit(main())
