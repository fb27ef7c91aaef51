"""The HTTP routes (``/v1``). Everything but ``/v1/health`` needs the bearer token; every
request needs a ``Host`` header naming this machine (localhost, 127.0.0.1, [::1]) unless
the server was started with ``--allow-remote`` (defeats DNS rebinding). ``/docs`` and
``/openapi.json`` are off.

``GET /v1/jobs?limit=&offset=`` pages through jobs oldest first (limit 1..500, default
100) with short entries; ``GET /v1/jobs/{id}`` has the whole status
(with ``output_dir``, the job's outputs folder on this machine); ``DELETE
/v1/jobs/{id}`` removes a finished job and its files.

``POST /v1/jobs`` takes one of three bodies:

* ``application/json`` (at most :data:`MAX_JSON_BODY_BYTES`): ``{"task", "bundle_path",
  "params", "models"}`` — a bundle directory on this machine, under an allowed root (local
  jobs, no copy);
* ``application/x-tar`` (or gzip): the bundle as a raw tar body, with ``task``,
  ``params`` (JSON text) and ``models`` in the query — streamed and extracted while it
  arrives (what the add-on sends to remote backends);
* ``multipart/form-data``: a ``bundle`` file part (tar) and the same fields as form
  fields (for curl and browsers).

Every field's JSON is held to bundle.json's limits (:func:`_checked_fields`) and params to
:data:`~poe_backend.server.validation.MAX_PARAMS_CHARS`: what a job stores and echoes is
bounded, and an error names the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from poe_backend import __version__
from poe_backend.bundle import API_VERSION, TASK_PASSES, BundleError, check_json_value, decode_json
from poe_backend.server import uploads, validation
from poe_backend.server.auth import token_matches
from poe_backend.server.errors import InputError
from poe_backend.server.executor import Executor
from poe_backend.server.info import describe_task, workers_info
from poe_backend.server.jobs import Job, JobStore, new_job_id, storage_error
from poe_backend.server.limits import JobLimits, check_job_cost
from poe_backend.server.presets import allowed_model_roots, check_models
from poe_backend.tasks import TASK_CLASSES

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
#: Largest JSON submit body, in bytes: its fields and params (at most
#: :data:`~poe_backend.server.validation.MAX_PARAMS_CHARS`) with room to spare; a bundle
#: travels as a tar, never inside JSON.
MAX_JSON_BODY_BYTES = 1 << 20
TAR_TYPES = frozenset({"application/x-tar", "application/tar", "application/gzip", "application/x-gzip", "application/octet-stream"})


@dataclass
class ServerConfig:
    data_dir: Path
    token: str
    allowed_roots: list[Path] = field(default_factory=list)
    max_upload_bytes: int = 8 << 30
    max_upload_entries: int = uploads.UploadLimits.max_entries
    upload_read_timeout_s: float = uploads.UploadLimits.read_timeout_s
    upload_min_rate_bytes_s: float = uploads.UploadLimits.min_rate_bytes_s
    upload_rate_grace_s: float = uploads.UploadLimits.rate_grace_s
    max_uploads: int = uploads.UploadLimits.max_concurrent
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    #: What runs the jobs; None: the embedded executor, one job process per entry of ``devices``.
    executor: Executor | None = None
    models: str = "default"
    allow_remote: bool = False
    keep_jobs: int | None = None
    keep_days: float | None = None
    job_limits: JobLimits = field(default_factory=JobLimits)


def create_app(config: ServerConfig, store: JobStore | None = None) -> FastAPI:
    store = store or JobStore(config.data_dir, devices=config.devices, executor=config.executor, keep_jobs=config.keep_jobs, keep_days=config.keep_days, allowed_roots=config.allowed_roots)
    roots = [config.data_dir, *config.allowed_roots]
    limits = uploads.UploadLimits(
        config.max_upload_bytes, config.max_upload_entries, config.upload_read_timeout_s,
        min_rate_bytes_s=config.upload_min_rate_bytes_s, rate_grace_s=config.upload_rate_grace_s, max_concurrent=config.max_uploads,
    )
    upload_slots = uploads.UploadSlots(limits.max_concurrent)
    model_roots = allowed_model_roots(config.data_dir, config.allowed_roots)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        store.start()
        yield
        store.stop()

    app = FastAPI(title="poe-backend", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    app.add_middleware(RequestGate, token=config.token, local_only=not config.allow_remote)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field_path = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
        return JSONResponse(InputError(field_path or "request", first["msg"]).body(), status_code=400)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "api_version": API_VERSION,
            **workers_info(store.workers, config.devices),
            "devices": config.devices,
            "queued": store.queue_length(),
            "max_upload_bytes": config.max_upload_bytes,
        }

    api = APIRouter(prefix="/v1")

    @api.get("/tasks")
    def tasks() -> dict[str, Any]:
        return {"tasks": [describe_task(name) for name in TASK_CLASSES]}

    @api.get("/jobs")
    async def list_jobs(limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0)) -> Response:
        jobs, total = store.list(limit, offset)
        return _plain_json({"jobs": jobs, "total": total, "limit": limit, "offset": offset})

    @api.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        # output_dir: a client on this machine reads the outputs there instead of downloading them
        return _plain_json({**_found(store.get(job_id), job_id), "output_dir": str(store.job_dir(job_id) / "outputs")})

    @api.delete("/jobs/{job_id}")
    def delete_job(job_id: str) -> dict[str, Any]:
        deleted = store.delete(job_id)
        if deleted is None:
            _found(None, job_id)
        if not deleted:
            raise InputError("job_id", f"job {job_id} is queued or running: cancel it first", code="job_active", status=409)
        return {"id": job_id, "deleted": True}

    @api.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: str) -> dict[str, Any]:
        return _found(store.cancel(job_id), job_id)

    @api.get("/jobs/{job_id}/outputs/{name:path}")
    def get_output(job_id: str, name: str) -> FileResponse:
        _found(store.get(job_id), job_id)
        path = store.output_path(job_id, name)
        if path is None:
            raise InputError("name", f"job {job_id} has no output {name!r}", code="not_found", status=404)
        return FileResponse(path)

    @api.post("/jobs", status_code=201)
    async def submit_job(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        with upload_slots.hold() if content_type != "application/json" else contextlib.nullcontext():
            return await submit(request, content_type)

    async def submit(request: Request, content_type: str) -> dict[str, Any]:
        """Receive and commit one job; an upload holds one of ``upload_slots`` meanwhile."""
        job_id = new_job_id()
        upload_dir = store.job_dir(job_id) / "bundle"
        try:
            if content_type != "application/json":
                store.prepare_dir(job_id)
            if content_type == "application/json":
                fields = await _json_body(request, limits)
                bundle_dir = await run_in_threadpool(uploads.check_under_roots, _required(fields, "bundle_path"), roots)
            elif content_type == "multipart/form-data":
                fields, bundle_dir = await _multipart(request, upload_dir, limits, roots)
            elif content_type in TAR_TYPES:
                fields = await run_in_threadpool(_form_fields, request.query_params)
                _precheck_task(fields.get("task"))
                bundle_dir = await uploads.receive_tar(request, upload_dir, limits)
            else:
                raise InputError("content-type", f"{content_type or 'none'} is not accepted: send JSON with bundle_path, a tar body, or multipart", status=415)
            job = await run_in_threadpool(_build_job, job_id, fields, bundle_dir, config.models, config.job_limits)
            job.models = check_models(job.models, config.data_dir, model_roots)
            return await run_in_threadpool(store.submit, job)
        except OSError as error:
            shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
            answer = storage_error(error, config.data_dir)  # 507 full disk, 503 read-only data dir, else 500
            if answer is None:
                raise
            raise answer from None
        except BaseException:
            shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
            raise

    app.include_router(api)
    return app


class RequestGate:
    """ASGI middleware in front of every route: with ``local_only``, a 421 to any HTTP
    request whose ``Host`` is not a localhost name (:data:`LOCAL_HOSTS`), so a DNS-rebound
    page cannot reach the service; then a 401 to any ``/v1/`` request but ``/v1/health``
    without the bearer ``token``. A middleware rather than a route dependency: FastAPI's
    dependency resolution was a sixth of a status request's server time
    (``benchmarks/server_latency.py``), and no route can be added without the check."""

    def __init__(self, app: Any, *, token: str, local_only: bool) -> None:
        self.app, self.token, self.local_only = app, token, local_only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            error = self._refusal(scope)
            if error is not None:
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict[str, Any]) -> InputError | None:
        headers = dict(scope["headers"])
        if self.local_only:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host if host.endswith("]") else host.rsplit(":", 1)[0]
            if name not in LOCAL_HOSTS:
                return InputError("host", "this backend answers only requests addressed to localhost (start it with --allow-remote to serve other names)", code="bad_host", status=421)
        if scope["path"].startswith("/v1/") and scope["path"] != "/v1/health":
            header = headers.get(b"authorization", b"").decode("latin-1") or None
            if not token_matches(header, self.token):
                reason = "missing bearer token" if not header else "wrong token"
                message = f"{reason}: use the token in the backend's data dir, file 'token' (add-on preferences: Token)"
                return InputError("authorization", message, code="unauthorized", status=401)
        return None


def _plain_json(data: dict[str, Any]) -> Response:
    """``data`` (JSON types only: a job record) as a JSON answer, rendered by :func:`json.dumps`
    directly. The status routes are the ones polled while jobs run; FastAPI's
    ``jsonable_encoder`` walk cost ten times the rendering itself
    (``benchmarks/server_latency.py``). ASCII-escaped, so any text renders."""
    return Response(json.dumps(data).encode("ascii"), media_type="application/json")


def _found(job: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
    if job is None:
        raise InputError("job_id", f"no job {job_id!r}", code="not_found", status=404)
    return job


def _required(fields: dict[str, Any], name: str) -> Any:
    if fields.get(name) in (None, ""):
        raise InputError(name, "is required")
    return fields[name]


def _precheck_task(name: Any) -> None:
    if name is not None and not isinstance(name, str):
        raise InputError("task", f"must be a task name, got {name!r}", code="unknown_task")
    if name is not None and name not in TASK_CLASSES and name not in TASK_PASSES:
        raise InputError("task", f"unknown task {name!r}; known: {', '.join(TASK_CLASSES)}", code="unknown_task")


def _parse_params_text(text: Any) -> Any:
    """The ``params`` query or form field (JSON text) decoded; 400 naming ``params``."""
    if text in (None, ""):
        return None
    try:
        return decode_json(text, "params")
    except BundleError as error:
        raise InputError(error.field, error.message, code="invalid_params") from None


def _checked_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (task, bundle_path, params, models) under the limits bundle.json has
    (:func:`~poe_backend.bundle.check_json_value`): every text at most
    :data:`~poe_backend.bundle.MAX_TEXT_CHARS` characters of valid Unicode without NUL,
    shallow nesting, 64-bit integers, finite numbers; 400 naming the place (``params.prompt``)."""
    try:
        check_json_value(fields, "")
    except BundleError as error:
        raise InputError(error.field, error.message, code="invalid_params" if error.field.startswith("params") else "invalid_input") from None
    return fields


async def _json_body(request: Request, limits: uploads.UploadLimits) -> dict[str, Any]:
    """The JSON submit body's fields, decoded and checked in a worker thread (up to a
    second of CPU for a body at :data:`MAX_JSON_BODY_BYTES`: not in the event loop)."""
    return await run_in_threadpool(_json_fields, await _read_json_body(request, limits))


def _json_fields(body_bytes: bytes) -> dict[str, Any]:
    """The JSON body's fields: an object of task, bundle_path, params and models, checked
    (:func:`_checked_fields`); 400 naming ``body`` or the field."""
    try:
        body = decode_json(body_bytes, "body")
    except BundleError as error:
        raise InputError(error.field, error.message) from None
    if not isinstance(body, dict):
        raise InputError("body", "must be a JSON object")
    unknown = set(body) - {"task", "bundle_path", "params", "models"}
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field (expected task, bundle_path, params, models)")
    return _checked_fields(body)


async def _read_json_body(request: Request, limits: uploads.UploadLimits) -> bytes:
    """The body's bytes, read piece by piece under the uploads' time rules and at most
    :data:`MAX_JSON_BODY_BYTES` (a larger Content-Length, or the count while reading a
    body without one: 413 naming ``body``, before more is buffered)."""
    pieces = []
    try:
        async for piece in uploads.limited_body(request, dataclasses.replace(limits, max_bytes=MAX_JSON_BODY_BYTES)):
            pieces.append(piece)
    except InputError as error:
        if error.status != 413:
            raise
        message = f"larger than {MAX_JSON_BODY_BYTES >> 20} MiB: a JSON submission holds its fields and params only (send a bundle as a tar)"
        raise InputError("body", message, code="too_large", status=413) from None
    return b"".join(pieces)


def _form_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a tar upload's query or of a multipart form (``params`` as JSON text),
    decoded and checked (:func:`_checked_fields`); run in a worker thread."""
    fields = {"task": values.get("task"), "params": _parse_params_text(values.get("params")), "models": values.get("models"), "bundle_path": values.get("bundle_path")}
    return _checked_fields(fields)


async def _multipart(request: Request, upload_dir: Path, limits: uploads.UploadLimits, roots: list[Path]) -> tuple[dict[str, Any], Path]:
    form = await uploads.receive_form(request, limits)
    fields = await run_in_threadpool(_form_fields, form)
    upload = form.get("bundle")
    if upload is None or isinstance(upload, str):
        bundle_dir = await run_in_threadpool(uploads.check_under_roots, _required(fields, "bundle_path"), roots)
        return fields, bundle_dir
    return fields, await run_in_threadpool(uploads.extract_tar, upload.file, upload_dir, limits)


def _build_job(job_id: str, fields: dict[str, Any], bundle_dir: Path, default_models: str, job_limits: JobLimits) -> Job:
    task_name = fields.get("task")
    if task_name is not None:
        _precheck_task(task_name)
    bundle = validation.load_bundle(bundle_dir, task_name)
    task = validation.resolve_task(bundle.task)
    params = validation.validate_params(task, bundle.params, fields.get("params"))
    check_job_cost(task, bundle, params, job_limits)
    models = fields.get("models") or default_models
    summary = {"prompt": bundle.prompt, "seed": bundle.seed, "width": bundle.width, "height": bundle.height, "fps": bundle.fps, "frames": bundle.frames}
    return Job(id=job_id, task=bundle.task, bundle_dir=str(bundle_dir), params=params.model_dump(mode="json", exclude_unset=True), models=models, bundle=summary)


