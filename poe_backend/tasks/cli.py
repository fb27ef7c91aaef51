"""``poe-backend run``: run one task on a bundle without the server.

    poe-backend run --task insertion --bundle DIR --out DIR [--models tiny|default|<preset>]
                    [--param levels=12 --param sampler=fkc ...] [--device cpu|cuda]

Parameters: the bundle's ``params`` first, then each ``--param k=v`` (values parsed as JSON
when they parse -- numbers, true/false, null -- else taken as strings). Bad input exits with
status 2 and one line naming the field; missing weights exit 3 with the download command;
cancellation (Ctrl-C) exits 130. Progress is a tqdm bar over annealing levels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT, EXIT_MISSING_WEIGHTS, EXIT_CANCELLED = 2, 3, 130


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run a task on a scene bundle (no server)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", help="task name (default: the bundle's task)")
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (with bundle.json)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created)")
    parser.add_argument("--models", default="default", help="model preset: default, preview, tiny, or a JSON preset")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="task parameter (repeatable)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_command)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; ValueError names a pair without ``=``."""
    params = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--param {pair!r}: expected K=V")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def validation_message(error: Any) -> str:
    """The first pydantic error as ``param <field>: <message>``."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "params"
    return f"param {field}: {first['msg']}"


def run_command(arguments: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from poe_backend.bundle import BundleError, read_bundle
    from poe_backend.tasks import get_task
    from poe_backend.tasks.base import TaskContext

    try:
        bundle = read_bundle(arguments.bundle)
        task_name = arguments.task or bundle.task
        task = get_task(task_name)
        if bundle.task != task_name:
            raise BundleError("task", f"the bundle is for '{bundle.task}', not '{task_name}'")
        params = task.Params.model_validate({**bundle.params, **parse_params(arguments.param)})
    except BundleError as error:
        return _fail(f"bundle {error.field}: {error.message}", EXIT_BAD_INPUT)
    except ValidationError as error:
        return _fail(validation_message(error), EXIT_BAD_INPUT)
    except KeyError as error:
        return _fail(f"task: {error.args[0]}", EXIT_BAD_INPUT)
    except ValueError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    device = arguments.device or _default_device()
    arguments.out.mkdir(parents=True, exist_ok=True)
    bar = _ProgressBar(disabled=arguments.quiet)
    context = TaskContext(bundle=bundle, params=params, out_dir=arguments.out, models=arguments.models, device=device, callback=bar.update)
    return _run(task, context, bar)


def _run(task: Any, context: Any, bar: "_ProgressBar") -> int:
    from poe_backend.bundle import BundleError
    from poe_backend.models.specs import MissingWeights
    from poe_backend.sampling import SamplingCancelled

    try:
        result = task.run(context)
    except MissingWeights as error:
        return _fail(str(error), EXIT_MISSING_WEIGHTS)
    except BundleError as error:
        return _fail(f"bundle {error.field}: {error.message}", EXIT_BAD_INPUT)
    except (SamplingCancelled, KeyboardInterrupt):
        return _fail("cancelled", EXIT_CANCELLED)
    except ValueError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    finally:
        bar.close()
    path = result.write(context.out_dir)
    print(f"wrote {path}")
    print(memory_summary(result.manifest))
    return 0


def memory_summary(manifest: dict[str, Any]) -> str:
    """One line: the placement per role and the job's peak device memory / host RSS in GiB."""
    placements = manifest.get("placement", {}).get("placements", {})
    memory = manifest.get("memory", {})
    device = memory.get("peak_device_bytes")
    host = memory.get("peak_host_rss_bytes")
    where = ", ".join(f"{role}: {name}" for role, name in placements.items()) or "-"

    def gib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**30:.2f} GiB"

    return f"placement {where}; peak device {gib(device)}; peak host RSS {gib(host)}"


def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _ProgressBar:
    """A tqdm bar over levels, showing t, expert evaluations (NFE) and the network forwards
    behind them against the planned totals, and ESS; created on the first report."""

    def __init__(self, disabled: bool = False) -> None:
        self.disabled, self.bar, self.level = disabled, None, 0

    def update(self, progress: Any) -> None:
        if self.disabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.num_levels, unit="level", file=sys.stderr)
            self.level = max(0, progress.level - 1)
            self.bar.update(self.level)
        if progress.level > self.level:
            self.bar.update(progress.level - self.level)
            self.level = progress.level
        ess = "-" if progress.ess is None else f"{progress.ess:.2f}"
        nfe = f"{progress.nfe}" + (f"/{progress.planned_nfe}" if progress.planned_nfe else "")
        forwards = "" if progress.forwards is None else f" forwards={progress.forwards}" + (f"/{progress.planned_forwards}" if progress.planned_forwards else "")
        self.bar.set_postfix_str(f"t={progress.t:.3f} step={progress.step} nfe={nfe}{forwards} ess={ess}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
