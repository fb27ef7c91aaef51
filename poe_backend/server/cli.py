"""``poe-backend serve``: the HTTP service (see :mod:`poe_backend.server.app`)."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from poe_backend.server.limits import JobLimits

if TYPE_CHECKING:
    from poe_backend.server.executor import Executor

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "poe-backend"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP backend the Blender add-on talks to")
    add_arguments(parser)
    parser.set_defaults(func=serve)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="jobs, uploads and the token live here")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address (use a tunnel if you can)")
    parser.add_argument("--allow-root", type=Path, action="append", default=[], help="a folder whose bundles may be submitted by path (repeatable; the data dir always is)")
    parser.add_argument("--max-upload-mb", type=float, default=8192, help="largest accepted bundle upload (MiB, also after gzip decoding)")
    parser.add_argument("--max-upload-entries", type=int, default=20_000, help="most tar members in one upload (empty files and folders count)")
    parser.add_argument("--upload-timeout-s", type=positive_float, default=60.0, help="longest wait for the next piece of an upload's body (seconds)")
    parser.add_argument(
        "--upload-min-rate-kib", type=positive_float, default=64.0,
        help="slowest average an upload may keep once --upload-grace-s has passed (KiB/s; slower ones end with a 408)",
    )
    parser.add_argument("--upload-grace-s", type=positive_float, default=60.0, help="seconds of an upload before --upload-min-rate-kib applies")
    parser.add_argument("--max-uploads", type=positive_int, default=8, help="uploads received at once; the next gets a 503 (busy) with Retry-After")
    parser.add_argument(
        "--header-timeout-s", type=positive_float, default=10.0,
        help="seconds a connection has to send a request's headers, from connecting or from its previous response; then it is closed",
    )
    parser.add_argument(
        "--devices", default=None,
        help="comma-separated torch devices, one worker (one job at a time) each, e.g. cuda:0,cuda:1; a name may repeat (cpu,cpu runs two CPU jobs at once). "
        "Default: every visible GPU, else cpu. With --executor ray only cpu entries: that many CPU workers on each node (default: one worker per GPU of the cluster)",
    )
    parser.add_argument(
        "--executor", choices=("local", "ray"), default="local",
        help="local: one job process per device of this machine; ray: one worker per GPU of a Ray cluster, models kept loaded between jobs "
        "(pip install -e '.[cluster]'; README: Several GPU machines)",
    )
    parser.add_argument(
        "--ray-address", default=None,
        help="with --executor ray: the Ray cluster's head (HOST:6379), joined only with Ray's token authentication (RAY_AUTH_MODE=token and a token). "
        "Default: start a local Ray instance (token authentication, no dashboard). Ray's ports stay inside the studio network (README)",
    )
    parser.add_argument("--shared-root", type=Path, default=None, help="with --executor ray: a folder every node mounts at the same path (NFS); bundles under it are read in place, not sent")
    parser.add_argument("--keep-jobs", type=int, default=None, help="keep only the newest N finished jobs (default: all)")
    parser.add_argument("--keep-days", type=float, default=None, help="delete finished jobs older than D days (default: never)")
    parser.add_argument("--models", default="default", help="model preset when a job names none (e.g. tiny, default)")
    parser.add_argument("--max-forwards", type=positive_int, default=JobLimits.max_forwards, help="most network forwards a job may plan (levels x Langevin steps x experts); more is refused at submit")
    parser.add_argument("--max-token-forwards", type=positive_int, default=JobLimits.max_token_forwards, help="most token-forwards a job may plan: forwards x particles x latent tokens")
    parser.add_argument("--max-pixels", type=positive_int, default=JobLimits.max_pixels, help="largest image or video frame a job may generate (width x height)")
    parser.add_argument("--max-total-pixels", type=positive_int, default=JobLimits.max_total_pixels, help="most pixels a job may decode and write over all its particles and frames")


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_devices() -> list[str]:
    """Every visible GPU (``cuda:0`` ...), else ``["cpu"]``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{index}" for index in range(count)] or ["cpu"]


def ray_executor(arguments: argparse.Namespace, devices: list[str] | None) -> tuple[Executor, list[str], str]:
    """The Ray executor the options ask for, the devices ``/v1/health`` names before any
    worker is attached, and where jobs run (for the start-up line). Imports Ray (this
    process never touches CUDA: the workers are the cluster's actors). Raises ImportError
    without the ``cluster`` extra, :class:`~poe_backend.server.ray_executor.ClusterRefused`
    (a RuntimeError) for an address without token authentication, ValueError for a GPU
    in ``devices``."""
    try:
        from poe_backend.server.ray_executor import RayExecutor
    except ModuleNotFoundError as error:
        if error.name != "ray":
            raise
        raise ImportError("--executor ray needs Ray: pip install -e '.[cluster]'") from None
    shared_root = None if arguments.shared_root is None else arguments.shared_root.expanduser().resolve()
    executor = RayExecutor(arguments.ray_address, devices=devices, shared_root=shared_root)
    where = f"the Ray cluster at {arguments.ray_address}" if arguments.ray_address else "a local Ray instance"
    return executor, devices or [executor.gpu_device], where


def serve(arguments: argparse.Namespace) -> int:
    if not is_loopback(arguments.host) and not arguments.allow_remote:
        print(f"poe-backend: refusing to bind {arguments.host}, which is not a loopback address; pass --allow-remote (the token is then the only protection)", file=sys.stderr)
        return 2
    if arguments.executor != "ray" and (arguments.ray_address or arguments.shared_root):
        print("poe-backend: --ray-address and --shared-root need --executor ray", file=sys.stderr)
        return 2
    import uvicorn

    from poe_backend.server.app import ServerConfig, create_app
    from poe_backend.server.auth import TokenRefused, load_or_create_token
    from poe_backend.server.datadir import DataDirBusy, DataDirUnwritable, lock_data_dir, writable_private_dir
    from poe_backend.server.http_protocol import ConnectionLimits, protocol

    try:
        data_dir = writable_private_dir(arguments.data_dir.expanduser().resolve())
        lock = lock_data_dir(data_dir, arguments.port)
        token = load_or_create_token(data_dir)
    except (DataDirBusy, DataDirUnwritable, TokenRefused) as error:
        print(f"poe-backend: {error}", file=sys.stderr)
        return 3
    named_devices = [name.strip() for name in arguments.devices.split(",") if name.strip()] if arguments.devices else None
    if arguments.executor == "ray":
        try:
            executor, devices, where = ray_executor(arguments, named_devices)
        except (ImportError, RuntimeError, ValueError) as error:  # no Ray; ClusterRefused; a GPU named in --devices
            print(f"poe-backend: {error}", file=sys.stderr)
            os.close(lock)
            return 2
    else:
        executor, devices = None, named_devices or default_devices()
        where = ", ".join(devices)
    config = ServerConfig(
        data_dir=data_dir,
        token=token,
        allowed_roots=[root.expanduser().resolve() for root in arguments.allow_root],
        max_upload_bytes=int(arguments.max_upload_mb * 2**20),
        max_upload_entries=arguments.max_upload_entries,
        upload_read_timeout_s=arguments.upload_timeout_s,
        upload_min_rate_bytes_s=arguments.upload_min_rate_kib * 1024,
        upload_rate_grace_s=arguments.upload_grace_s,
        max_uploads=arguments.max_uploads,
        devices=devices,
        executor=executor,
        models=arguments.models,
        allow_remote=arguments.allow_remote,
        keep_jobs=arguments.keep_jobs,
        keep_days=arguments.keep_days,
        job_limits=JobLimits(arguments.max_forwards, arguments.max_token_forwards, arguments.max_pixels, arguments.max_total_pixels),
    )
    try:
        app = create_app(config)
    except DataDirUnwritable as error:  # the data dir is, but its jobs/ folder is not
        print(f"poe-backend: {error}", file=sys.stderr)
        os.close(lock)
        return 3
    print(f"poe-backend: serving http://{arguments.host}:{arguments.port}/v1 on {where}; token in {data_dir / 'token'}", flush=True)
    http = protocol(ConnectionLimits(header_timeout_s=arguments.header_timeout_s))
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning", http=http)
    os.close(lock)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poe-backend serve")
    add_arguments(parser)
    return serve(parser.parse_args(argv))
