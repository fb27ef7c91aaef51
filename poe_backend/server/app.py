"""The HTTP routes (``/v1``). Everything but ``/v1/health`` needs the bearer token; every
request needs a ``Host`` header naming this machine (localhost, 127.0.0.1, [::1]) unless
the server was started with ``--allow-remote`` (defeats DNS rebinding). ``/docs`` and
``/openapi.json`` are off.

``GET /v1/jobs?limit=&offset=`` pages through jobs oldest first (limit 1..500, default
100) with short entries; ``GET /v1/jobs/{id}`` has the whole status
(with ``output_dir``, the job's outputs folder on this machine); ``DELETE
/v1/jobs/{id}`` removes a finished job and its files.

``POST /v1/jobs`` takes one of three bodies:

* ``application/json``: ``{"task", "bundle_path", "params", "models"}`` — a bundle
  directory on this machine, under an allowed root (local jobs, no copy);
* ``application/x-tar`` (or gzip): the bundle as a raw tar body, with ``task``,
  ``params`` (JSON text) and ``models`` in the query — streamed and extracted while it
  arrives (what the add-on sends to remote backends);
* ``multipart/form-data``: a ``bundle`` file part (tar) and the same fields as form
  fields (for curl and browsers).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from poe_backend import __version__
from poe_backend.bundle import API_VERSION, TASK_PASSES
from poe_backend.server import uploads, validation
from poe_backend.server.auth import token_matches
from poe_backend.server.errors import InputError
from poe_backend.server.info import describe_task, device_info
from poe_backend.server.jobs import Job, JobStore, disk_full_error, is_disk_full, new_job_id
from poe_backend.server.presets import allowed_model_roots, check_models
from poe_backend.tasks import TASK_CLASSES

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
#: Longest prompt or other text field accepted in a request or bundle, in characters.
MAX_TEXT_CHARS = 10_000
TAR_TYPES = frozenset({"application/x-tar", "application/tar", "application/gzip", "application/x-gzip", "application/octet-stream"})


@dataclass
class ServerConfig:
    data_dir: Path
    token: str
    allowed_roots: list[Path] = field(default_factory=list)
    max_upload_bytes: int = 8 << 30
    max_upload_entries: int = uploads.UploadLimits.max_entries
    upload_read_timeout_s: float = uploads.UploadLimits.read_timeout_s
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    models: str = "default"
    allow_remote: bool = False
    keep_jobs: int | None = None
    keep_days: float | None = None


def create_app(config: ServerConfig, store: JobStore | None = None) -> FastAPI:
    store = store or JobStore(config.data_dir, devices=config.devices, keep_jobs=config.keep_jobs, keep_days=config.keep_days)
    roots = [config.data_dir, *config.allowed_roots]
    limits = uploads.UploadLimits(config.max_upload_bytes, config.max_upload_entries, config.upload_read_timeout_s)
    model_roots = allowed_model_roots(config.data_dir, config.allowed_roots)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        store.start()
        yield
        store.stop()

    app = FastAPI(title="poe-backend", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    if not config.allow_remote:
        app.add_middleware(LocalHostOnly)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field_path = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
        return JSONResponse(InputError(field_path or "request", first["msg"]).body(), status_code=400)

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization")
        if not token_matches(header, config.token):
            reason = "missing bearer token" if not header else "wrong token"
            message = f"{reason}: use the token in the backend's data dir, file 'token' (add-on preferences: Token)"
            raise InputError("authorization", message, code="unauthorized", status=401)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        loaded = store.loaded_models()
        return {
            "status": "ok",
            "version": __version__,
            "api_version": API_VERSION,
            **device_info(config.devices[0], store.workers[0].device_memory()),
            "devices": config.devices,
            "loaded_models": sorted({name for names in loaded for name in names}),
            "loaded_models_per_device": loaded,
            "queued": store.queue_length(),
            "max_upload_bytes": config.max_upload_bytes,
        }

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @api.get("/tasks")
    def tasks() -> dict[str, Any]:
        return {"tasks": [describe_task(name) for name in TASK_CLASSES]}

    @api.get("/jobs")
    async def list_jobs(limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        jobs, total = store.list(limit, offset)
        return {"jobs": jobs, "total": total, "limit": limit, "offset": offset}

    @api.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        # output_dir: a client on this machine reads the outputs there instead of downloading them
        return {**_found(store.get(job_id), job_id), "output_dir": str(store.job_dir(job_id) / "outputs")}

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
        if path is None or not path.is_file():
            raise InputError("name", f"job {job_id} has no output {name!r}", code="not_found", status=404)
        return FileResponse(path)

    @api.post("/jobs", status_code=201)
    async def submit_job(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        job_id = new_job_id()
        upload_dir = store.job_dir(job_id) / "bundle"
        try:
            if content_type != "application/json":
                store.prepare_dir(job_id)
            if content_type == "application/json":
                fields = await _json_body(request)
                bundle_dir = await run_in_threadpool(uploads.check_under_roots, _required(fields, "bundle_path"), roots)
            elif content_type == "multipart/form-data":
                fields, bundle_dir = await _multipart(request, upload_dir, limits, roots)
            elif content_type in TAR_TYPES:
                fields = _query_fields(request)
                _precheck_task(fields.get("task"))
                bundle_dir = await uploads.receive_tar(request, upload_dir, limits)
            else:
                raise InputError("content-type", f"{content_type or 'none'} is not accepted: send JSON with bundle_path, a tar body, or multipart", status=415)
            job = await run_in_threadpool(_build_job, job_id, fields, bundle_dir, config.models)
            job.models = check_models(job.models, config.data_dir, model_roots)
            return await run_in_threadpool(store.submit, job)
        except OSError as error:
            shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
            if is_disk_full(error):
                raise disk_full_error(config.data_dir) from None
            raise
        except BaseException:
            shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
            raise

    app.include_router(api)
    return app


class LocalHostOnly:
    """ASGI middleware: answers 421 to any HTTP request whose ``Host`` is not a localhost
    name (:data:`LOCAL_HOSTS`), so a DNS-rebound page cannot reach the service."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host if host.endswith("]") else host.rsplit(":", 1)[0]
            if name not in LOCAL_HOSTS:
                error = InputError("host", "this backend answers only requests addressed to localhost (start it with --allow-remote to serve other names)", code="bad_host", status=421)
                await JSONResponse(error.body(), status_code=421)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    if text in (None, ""):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError("params", f"not valid JSON ({error})", code="invalid_params") from None


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as error:
        raise InputError("body", f"not valid JSON ({error})") from None
    if not isinstance(body, dict):
        raise InputError("body", "must be a JSON object")
    unknown = set(body) - {"task", "bundle_path", "params", "models"}
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field (expected task, bundle_path, params, models)")
    return body


def _query_fields(request: Request) -> dict[str, Any]:
    query = request.query_params
    return {"task": query.get("task"), "params": _parse_params_text(query.get("params")), "models": query.get("models")}


async def _multipart(request: Request, upload_dir: Path, limits: uploads.UploadLimits, roots: list[Path]) -> tuple[dict[str, Any], Path]:
    form = await uploads.receive_form(request, limits)
    fields = {"task": form.get("task"), "params": _parse_params_text(form.get("params")), "models": form.get("models")}
    upload = form.get("bundle")
    if upload is None or isinstance(upload, str):
        bundle_dir = await run_in_threadpool(uploads.check_under_roots, _required({"bundle_path": form.get("bundle_path")}, "bundle_path"), roots)
        return fields, bundle_dir
    return fields, await run_in_threadpool(uploads.extract_tar, upload.file, upload_dir, limits)


def _build_job(job_id: str, fields: dict[str, Any], bundle_dir: Path, default_models: str) -> Job:
    task_name = fields.get("task")
    if task_name is not None:
        _precheck_task(task_name)
    bundle = validation.load_bundle(bundle_dir, task_name)
    task = validation.resolve_task(bundle.task)
    params = validation.validate_params(task, bundle.params, fields.get("params"))
    models = fields.get("models") or default_models
    if isinstance(bundle.prompt, str) and len(bundle.prompt) > MAX_TEXT_CHARS:
        raise InputError("prompt", f"is {len(bundle.prompt)} characters; at most {MAX_TEXT_CHARS}")
    summary = {"prompt": bundle.prompt, "seed": bundle.seed, "width": bundle.width, "height": bundle.height, "fps": bundle.fps, "frames": bundle.frames}
    return Job(id=job_id, task=bundle.task, bundle_dir=str(bundle_dir), params=params.model_dump(mode="json", exclude_unset=True), models=models, bundle=summary)


