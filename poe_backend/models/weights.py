"""Weights manager: what each role needs from the Hub, whether it is here, and downloading
only that (torch-free; ``poe-backend models list|pull|check``).

A role's *part* is the set of files its loader reads from one repo: its subfolder
(``transformer/*``), or, for specs without a subfolder (FramePack transformers, Qwen2.5-VL),
the repo's top-level config and weight files (:func:`allow_patterns`). A part is

* **present** when every file is there: no snapshot link points at a missing blob, every
  shard named by a ``*.index.json`` exists, and a model part holds weights;
* **partial** when some of it is there, or a download of the repo was interrupted (an
  ``.incomplete`` blob in the cache);
* **missing** otherwise.

:func:`locate` looks in ``<data dir>/models/<owner>/<name>``, then in the Hugging Face cache
snapshot of the spec's revision, then, for the parts in :data:`SHAREABLE_SUBFOLDERS`, in the
other repos of the family's ``shared_repos`` (its declaration) that carry the identical files
(FLUX.1-Depth-dev's ``vae/`` and ``text_encoder_2/`` are FLUX.1-dev's). Only cache snapshots
are borrowed from: their files are named by blob hash, so identity can be checked; a
data-dir copy serves its own repo only. :func:`pull`
downloads with ``snapshot_download(allow_patterns=...)``, one call per repo with the
patterns of every role that needs it, skipping parts found anywhere, after checking the
disk has room. Download sizes are exact (``HfApi.model_info(files_metadata=True)``) when
online, else the families' declared estimates (:func:`estimated_bytes`: parameter count × stored dtype bytes).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from poe_backend.models.specs import ModelSpec, family_facts, get_spec

State = Literal["present", "partial", "missing"]

#: Subfolders that may come from another repo of a family's ``shared_repos`` (never transformers).
SHAREABLE_SUBFOLDERS = frozenset({"vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"})
#: Top-level files a loader reads when a spec has no subfolder (the repo root holds one
#: model): a module's config and weights; a tokenizer's or processor's json, txt and model.
ROOT_PATTERNS = {True: ("*.json", "*.safetensors"), False: ("*.json", "*.txt", "*.model")}


def estimated_bytes() -> dict[tuple[str, str | None, bool], int]:
    """Offline download-size estimates per ``(repo, subfolder or None, is_module)``, from
    every family's declaration; a repo not declared (a JSON preset's) counts 0."""
    return {key: size for facts in family_facts().values() for key, size in facts.estimated_bytes.items()}


class InsufficientDisk(OSError):
    """The disk under the Hugging Face cache has less free space than a pull needs."""


@dataclass(frozen=True)
class RoleStatus:
    """One role's weights: where they come from, whether they are here, what a pull costs.

    ``allow_patterns`` are the files of ``repo_id`` the role needs; ``gated`` says how to
    get access (None when the repo is open); ``path`` is the directory the loader reads
    (the subfolder itself; possibly in another repo of a shared group, named by
    ``found_in``). ``size_bytes`` is the role's files (exact when ``size_exact``, else an
    estimate); ``download_bytes`` what :func:`pull` fetches for it: 0 when present, or when
    an earlier role of the same list already counts the same files."""

    role: str
    repo_id: str | None
    revision: str | None
    subfolder: str | None
    allow_patterns: tuple[str, ...]
    gated: str | None
    state: State
    path: Path | None
    found_in: str | None
    size_bytes: int
    size_exact: bool
    download_bytes: int


@dataclass(frozen=True)
class Download:
    """One ``snapshot_download`` of a pull: a repo, the merged patterns of the roles that
    need it from there, and their size in bytes (``size_exact`` False: an estimate)."""

    repo_id: str
    revision: str | None
    allow_patterns: tuple[str, ...]
    roles: tuple[str, ...]
    size_bytes: int
    size_exact: bool
    gated: str | None


def pull_command(task: str | None, preset: str = "default") -> str:
    """The command that downloads what ``task`` needs under ``preset`` (every task's needs
    when ``task`` is None), e.g. ``poe-backend models pull --task insertion --preset default``."""
    task_flag = f" --task {task}" if task else ""
    return f"poe-backend models pull{task_flag} --preset {preset}"


def gated_hint(repo_id: str) -> str | None:
    """How to get access to a gated repo, or None when it is open."""
    if not any(repo_id in facts.gated_repos for facts in family_facts().values()):
        return None
    return f"gated: log in at https://huggingface.co/{repo_id}, accept the licence ('Agree and access repository'), then run `hf auth login` with a read token"


def allow_patterns(spec: ModelSpec) -> list[str]:
    """The ``snapshot_download`` patterns of the files ``spec``'s loader reads:
    ``["<subfolder>/*"]`` (component loaders read their subfolder only; no model_index.json),
    or :data:`ROOT_PATTERNS` when the model sits at the repo root."""
    if spec.subfolder:
        return [f"{spec.subfolder}/*"]
    return list(ROOT_PATTERNS[spec.is_module])


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read on every call (``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def locate(spec: ModelSpec, *, data_dir: Path) -> Path | None:
    """The directory holding ``spec``'s complete files (its subfolder, or the repo root),
    searched in the data dir, the cache snapshot of its revision, then the repos of its
    shared group; None when no complete copy exists."""
    state, path, _ = _find(spec, data_dir)
    return path if state == "present" else None


def status(roles: Iterable[str], preset: str, data_dir: Path, *, online: bool | None = None) -> list[RoleStatus]:
    """The :class:`RoleStatus` of each role under ``preset``. ``online`` (default: unless
    ``HF_HUB_OFFLINE``) asks the Hub for exact file sizes, falling back to estimates when
    the Hub cannot be reached. Files two roles share are counted once in ``download_bytes``."""
    from huggingface_hub import constants

    online = not constants.HF_HUB_OFFLINE if online is None else online
    sizes = _SizeLookup(online)
    counted: set[tuple[Any, ...]] = set()
    result = []
    for role in dict.fromkeys(roles):
        spec = get_spec(role, preset)
        result.append(_role_status(role, spec, data_dir, sizes, counted))
    return result


def plan(statuses: Iterable[RoleStatus]) -> list[Download]:
    """The downloads that bring every missing or partial role in: one per repo and revision,
    its roles' patterns merged (in first-seen order), sizes added."""
    groups: dict[tuple[str, str | None], list[RoleStatus]] = {}
    for item in statuses:
        if item.state != "present" and item.repo_id is not None:
            groups.setdefault((item.repo_id, item.revision), []).append(item)
    return [
        Download(
            repo_id=repo_id,
            revision=revision,
            allow_patterns=tuple(dict.fromkeys(pattern for item in members for pattern in item.allow_patterns)),
            roles=tuple(item.role for item in members),
            size_bytes=sum(item.download_bytes for item in members),
            size_exact=all(item.size_exact for item in members),
            gated=members[0].gated,
        )
        for (repo_id, revision), members in groups.items()
    ]


def pull(roles: Iterable[str], preset: str, data_dir: Path, *, dry_run: bool = False) -> list[Download]:
    """Download what ``roles`` lack (:func:`plan`, then :func:`download`) and return the
    downloads; ``dry_run`` only returns them."""
    downloads = plan(status(roles, preset, data_dir))
    if not dry_run:
        download(downloads)
    return downloads


def download(downloads: list[Download]) -> None:
    """Run each download into the Hugging Face cache (``snapshot_download`` with its merged
    ``allow_patterns``; huggingface_hub's own tqdm bars show progress; an interrupted one
    resumes). Raises :class:`InsufficientDisk` before downloading anything when the free
    space is below the total size."""
    from huggingface_hub import snapshot_download

    check_disk(sum(item.size_bytes for item in downloads))
    for item in downloads:
        snapshot_download(item.repo_id, revision=item.revision, allow_patterns=list(item.allow_patterns), cache_dir=hub_cache_dir())


def totals(statuses: list[RoleStatus]) -> tuple[int, int]:
    """(bytes of every distinct part the roles need, bytes still to download): a part that
    several roles use is counted once."""
    distinct = {(item.repo_id, item.revision, item.allow_patterns): item.size_bytes for item in statuses}
    return sum(distinct.values()), sum(item.download_bytes for item in statuses)


def disk_free(path: Path | None = None) -> tuple[Path, int]:
    """Free bytes on the disk holding ``path`` (default: the hub cache), measured at its
    nearest existing parent; returns that directory and the bytes."""
    directory = hub_cache_dir() if path is None else path
    while not directory.exists():
        directory = directory.parent
    return directory, shutil.disk_usage(directory).free


def check_disk(needed_bytes: int) -> None:
    """Raise :class:`InsufficientDisk` when the hub cache's disk has under ``needed_bytes``."""
    directory, free = disk_free()
    if free < needed_bytes:
        raise InsufficientDisk(
            f"not enough disk space at {directory}: the download needs {format_bytes(needed_bytes)}, {format_bytes(free)} free; "
            "free some space or point HF_HUB_CACHE at a larger disk"
        )


def format_bytes(size: int) -> str:
    """``size`` bytes in decimal units: ``"23.80 GB"``, ``"167.6 MB"``, ``"1.0 kB"``."""
    if size >= 10**9:
        return f"{size / 10**9:.2f} GB"
    return f"{size / 10**6:.1f} MB" if size >= 10**6 else f"{size / 10**3:.1f} kB"


# ---------------------------------------------------------------------------------------
# Finding parts


def _role_status(role: str, spec: ModelSpec, data_dir: Path, sizes: "_SizeLookup", counted: set[tuple[Any, ...]]) -> RoleStatus:
    if spec.repo_id is None:
        directory = Path(spec.local_dir) if Path(spec.local_dir).is_absolute() else data_dir / spec.local_dir
        target = directory / spec.subfolder if spec.subfolder else directory
        # a tiny family's builder writes it on first use: nothing to download
        state: State = "present" if target.exists() or spec.builder is not None else "missing"
        return RoleStatus(role, None, None, spec.subfolder, (), None, state, target, None, 0, True, 0)
    state, path, found_in = _find(spec, data_dir)
    size, exact = sizes.part_bytes(spec)
    key = (spec.repo_id, spec.revision, tuple(allow_patterns(spec)))
    download = 0 if state == "present" or key in counted else size
    counted.add(key)
    return RoleStatus(role, spec.repo_id, spec.revision, spec.subfolder, key[2], gated_hint(spec.repo_id), state, path, found_in, size, exact, download)


def _find(spec: ModelSpec, data_dir: Path) -> tuple[State, Path | None, str | None]:
    """(state, directory, repo found in when it is another one) of a hub spec."""
    if spec.repo_id is None:
        raise ValueError("locate: the spec has no repo id (local directories are the lookup's)")
    patterns = allow_patterns(spec)
    local = data_dir / "models" / spec.repo_id
    if _completeness(local, patterns, spec.is_module) == "present":
        return "present", _target(local, spec), None
    snapshot = _snapshot(spec.repo_id, spec.revision)
    own = _completeness(snapshot, patterns, spec.is_module) if snapshot else "missing"
    if own == "present":
        return "present", _target(snapshot, spec), None
    if spec.subfolder in SHAREABLE_SUBFOLDERS:
        for other in _group_of(spec.repo_id):
            donor = _snapshot(other, None)
            if donor and _completeness(donor, patterns, spec.is_module) == "present" and _agrees(snapshot, donor, patterns):
                return "present", _target(donor, spec), other
    if own == "missing" and _has_incomplete_blobs(spec.repo_id):
        own = "partial"
    return own, None, None


def _target(root: Path, spec: ModelSpec) -> Path:
    return root / spec.subfolder if spec.subfolder else root


def _group_of(repo_id: str) -> list[str]:
    return sorted(other for facts in family_facts().values() if repo_id in facts.shared_repos for other in facts.shared_repos if other != repo_id)


def _snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cache snapshot directory of ``repo_id`` at ``revision`` (a ref or a commit), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=hub_cache_dir()))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _part_files(root: Path, patterns: list[str]) -> list[str]:
    """Repo-relative posix paths of the files (or dangling links) under ``root`` matching ``patterns``."""
    from huggingface_hub.utils import filter_repo_objects

    if not root.is_dir():
        return []
    paths = [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file() or path.is_symlink()]
    return sorted(filter_repo_objects(paths, allow_patterns=patterns))


def _completeness(root: Path, patterns: list[str], needs_weights: bool) -> State:
    """``present`` when every matching file under ``root`` exists (no dangling link), every
    shard listed by a ``*.index.json`` exists, and (``needs_weights``) weights are there."""
    files = _part_files(root, patterns)
    if not files:
        return "missing"
    if any(not (root / name).exists() for name in files):
        return "partial"
    for index in (name for name in files if name.endswith(".index.json")):
        directory = (root / index).parent
        shards = set(json.loads((root / index).read_text(encoding="utf-8")).get("weight_map", {}).values())
        if any(not (directory / shard).exists() for shard in shards):
            return "partial"
    if needs_weights and not any(name.endswith((".safetensors", ".bin")) for name in files):
        return "partial"
    return "present"


def _agrees(own: Path | None, donor: Path, patterns: list[str]) -> bool:
    """Whether the files ``own`` has of the part point at the same blobs as ``donor``'s
    (nothing to compare when ``own`` has none of them)."""
    if own is None:
        return True
    own_files = _part_files(own, patterns)
    return all(_blob_name(own / name) == _blob_name(donor / name) for name in own_files)


def _blob_name(path: Path) -> str | None:
    """The cache blob a snapshot file links to: its etag (sha256 for LFS files); None when absent."""
    return Path(os.path.realpath(path)).name if path.exists() or path.is_symlink() else None


def _has_incomplete_blobs(repo_id: str) -> bool:
    from huggingface_hub.file_download import repo_folder_name

    blobs = hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    return blobs.is_dir() and any(blobs.glob("*.incomplete"))


# ---------------------------------------------------------------------------------------
# Sizes


class _SizeLookup:
    """Part sizes in bytes: exact from the Hub's file metadata (one ``model_info`` per repo
    and revision) when online and reachable, else :func:`estimated_bytes`."""

    def __init__(self, online: bool) -> None:
        self.online = online
        self._files: dict[tuple[str, str | None], dict[str, int] | None] = {}

    def part_bytes(self, spec: ModelSpec) -> tuple[int, bool]:
        files = self._hub_files(spec.repo_id, spec.revision) if self.online else None
        if files is not None:
            from huggingface_hub.utils import filter_repo_objects

            return sum(files[name] for name in filter_repo_objects(files, allow_patterns=allow_patterns(spec))), True
        return estimated_bytes().get((spec.repo_id, spec.subfolder, spec.is_module), 0), False

    def _hub_files(self, repo_id: str, revision: str | None) -> dict[str, int] | None:
        key = (repo_id, revision)
        if key not in self._files:
            import httpx2  # huggingface_hub's HTTP client: its errors when the Hub is unreachable
            from huggingface_hub import HfApi
            from huggingface_hub.errors import HfHubHTTPError

            try:
                info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
                self._files[key] = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
            except (HfHubHTTPError, httpx2.HTTPError, OSError):
                self._files[key] = None
        return self._files[key]
