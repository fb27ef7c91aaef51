"""Operators for the backend round trip: Generate, Cancel, Start local backend, Load
result, plus ``draw_jobs`` for the panel. Operators stay thin: read settings, call the
bpy-free tracker (:mod:`.jobs`) or client (:mod:`.client`), report errors with
``self.report({'ERROR'}, message)`` — never a traceback.

Settings come from :func:`.preferences.backend_settings`; Generate captures through
:func:`.operators.capture_scene`, the same call as the Capture operator.

Operators never wait on the network: Generate, Start local backend, Cancel and Load hand
their requests to the session's worker (:mod:`.worker`), and the timer shows the outcome
in the panel. Generate reports that the bundle is on its way; its row in the panel becomes
the job when the backend answers, or fails with the backend's reason (a refused field is
named there, where a synchronous submit used to report it). Load result goes through the
same path as a job that has just finished.

One :class:`Session` per Blender process holds the tracker, the started backend process,
the worker and the timer; Blender's timers and operators need such a place to meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import bpy

from . import job_view, jobs, operators, preferences
from .bundle_schema import FINISHED_STATES
from .client import BackendError, Client
from .preferences import Settings
from .worker import Worker

BL_PREFIX = "poe"


@dataclass
class BackendUp:
    """What starting (or finding) the backend learnt: ``process`` when this Blender
    started it, the health answer, the task list (None when it could not be read) and
    the token a first start wrote (empty when the preferences had one)."""

    process: Any
    health: dict[str, Any]
    tasks: list[dict[str, Any]] | None
    token: str


def bring_up_backend(config: Settings, timeout: float) -> BackendUp:
    """Worker thread: find the backend at ``config.url`` or start it with the
    preferences' command line and wait until it answers (raises :class:`BackendError`)."""
    client = Client(config.url, config.token)
    process = None
    try:
        health = client.health()
    except BackendError:
        process = jobs.start_backend(config.command, client, config.output_dir / "backend.log", timeout=timeout)
        health = client.health()
    token_path = jobs.token_path_from_command(config.command)
    token = token_path.read_text(encoding="utf-8").strip() if not config.token and token_path.is_file() else ""
    try:
        tasks = Client(config.url, token or config.token).tasks()
    except BackendError:
        tasks = None
    return BackendUp(process, health, tasks, token)


@dataclass
class Session:
    """The tracker (recreated when URL or token change, taking over the rows of the one
    before; each tracked job names the scene its result loads into), the backend process
    this Blender started, and the one worker all of them wait on (:mod:`.worker`): the
    timer applies its outcomes."""

    tracker: jobs.JobTracker | None = None
    backend: Any = None
    backend_status: str = ""  # the panel's line about Start local backend
    starting: bool = False
    as_background: bool = False
    tasks: list[dict[str, Any]] | None = None  # GET /v1/tasks, for the panel's size preview
    worker: Worker = field(default_factory=Worker)

    def refresh_tasks(self, client: Client) -> None:
        """Fetch the backend's task list (its caps) on the worker; keeps the last one
        when unreachable."""
        self.worker.submit(client.tasks, self._apply_tasks)

    def _apply_tasks(self, tasks: list[dict[str, Any]] | None, error: Exception | None) -> None:
        if error is None:
            self.tasks = tasks

    def start_backend(self, config: Settings, timeout: float) -> None:
        """Find or start the backend on the worker; the panel shows how it went."""
        if self.starting:
            return
        self.starting, self.backend_status = True, f"waiting for the backend at {config.url}"
        self.worker.submit(partial(bring_up_backend, config, timeout), partial(self._apply_backend, config))
        self.ensure_timer()

    def _apply_backend(self, config: Settings, up: BackendUp | None, error: Exception | None) -> None:
        self.starting = False
        if error is not None:
            self.backend_status = getattr(error, "message", None) or f"could not start the backend: {type(error).__name__}: {error}"
            return
        if up.process is not None:
            self.backend = up.process
        self.tasks = up.tasks or self.tasks
        addon_preferences = preferences.prefs(bpy.context)
        if up.token and addon_preferences is not None:  # first start: fill in the new token
            addon_preferences.token = up.token
        started = "running" if up.process is not None else "already running"
        self.backend_status = job_view.backend_line(up.health, started, config.url)

    def tracker_for(self, config: Settings) -> jobs.JobTracker:
        client = Client(config.url, config.token)
        if self.tracker is None or (self.tracker.client.url, self.tracker.client.token) != (client.url, client.token):
            rows = self.tracker.jobs if self.tracker else {}
            self.tracker = jobs.JobTracker(client, config.output_dir / "results", self.load, self.worker)
            self.tracker.jobs = rows  # the same dict: a submission still under way renames its row in it
        self.as_background = config.as_background
        return self.tracker

    def load(self, result: jobs.JobResult) -> None:
        from . import results

        tracked = self.tracker.jobs.get(result.job_id) if self.tracker else None
        scene = bpy.data.scenes.get(tracked.scene if tracked else "", None) or bpy.context.scene
        results.load_result(scene, result, as_background=self.as_background)

    def tick(self) -> float | None:
        """The timer's work: apply what the worker finished (backend start, task list,
        job polls) and queue the next polls; never waits on the network."""
        self.worker.apply_finished()
        delay = self.tracker.tick() if self.tracker else None
        _redraw_panels()
        return jobs.POLL_INTERVAL_S if delay is None and self.worker.busy else delay

    def ensure_timer(self) -> None:
        if not bpy.app.timers.is_registered(_timer):
            # persistent: polling goes on when the user opens another .blend file
            bpy.app.timers.register(_timer, first_interval=jobs.POLL_INTERVAL_S, persistent=True)


SESSION = Session()


def shutdown() -> None:
    """For the add-on's ``unregister()``: stop polling and stop the backend this Blender
    started (a backend started elsewhere keeps running)."""
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    if SESSION.backend is not None and SESSION.backend.poll() is None:
        SESSION.backend.terminate()
    SESSION.backend = None


def _timer() -> float | None:
    return SESSION.tick()


def _redraw_panels() -> None:
    manager = getattr(bpy.context, "window_manager", None)
    for window in getattr(manager, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PROPERTIES", "SEQUENCE_EDITOR"):
                area.tag_redraw()


def capture_and_submit(context: bpy.types.Context, config: Settings, bundle_dir: str) -> jobs.TrackedJob:
    """Submit ``bundle_dir`` as is, or capture the scene into a new bundle first; returns
    the job's row at once (:data:`.jobs.SUBMITTING`: the submission runs on the worker)."""
    tracker = SESSION.tracker_for(config)
    SESSION.refresh_tasks(tracker.client)
    if bundle_dir:
        tracked = tracker.submit(Path(bpy.path.abspath(bundle_dir)), scene=context.scene.name)
    else:
        bundle_json = operators.capture_scene(context, config.output_dir)
        tracked = tracker.submit(bundle_json.parent, task=context.scene.poe.task, scene=context.scene.name)
    SESSION.ensure_timer()
    return tracked


class POE_OT_generate(bpy.types.Operator):
    """Capture the scene (or take an existing bundle) and submit it to the backend"""

    bl_idname = f"{BL_PREFIX}.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    bundle_dir: bpy.props.StringProperty(name="Bundle", description="Submit this existing bundle folder instead of capturing", subtype="DIR_PATH", default="")

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            tracked = capture_and_submit(context, preferences.backend_settings(context), self.bundle_dir)
        except Exception as error:  # noqa: BLE001 - reported in the UI, never a traceback
            self.report({"ERROR"}, f"could not capture or submit: {type(error).__name__}: {error}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"submitting the bundle{f' ({tracked.task})' if tracked.task else ''}; the panel shows the backend's answer")
        return {"FINISHED"}


class POE_OT_cancel(bpy.types.Operator):
    """Cancel a queued or running job (the latest active one by default)"""

    bl_idname = f"{BL_PREFIX}.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    job_id: bpy.props.StringProperty(name="Job", default="")

    def execute(self, context: bpy.types.Context) -> set[str]:
        tracker = SESSION.tracker_for(preferences.backend_settings(context))
        job_id = self.job_id or next((job.job_id for job in reversed(tracker.active())), "")
        if not job_id:
            self.report({"WARNING"}, "no active job to cancel")
            return {"CANCELLED"}
        tracker.cancel(job_id)
        SESSION.ensure_timer()
        self.report({"INFO"}, f"cancelling job {job_id}")
        return {"FINISHED"}


class POE_OT_start_backend(bpy.types.Operator):
    """Start the local backend with the command line from the preferences (in the background; the panel says when it answers)"""

    bl_idname = f"{BL_PREFIX}.start_backend"
    bl_label = "Start local backend"
    bl_options = {"REGISTER"}

    timeout: bpy.props.FloatProperty(name="Timeout", default=120.0, min=1.0)

    def execute(self, context: bpy.types.Context) -> set[str]:
        config = preferences.backend_settings(context)
        SESSION.start_backend(config, self.timeout)
        self.report({"INFO"}, f"starting the backend at {config.url}; the panel shows when it answers")
        return {"FINISHED"}


class POE_OT_load_result(bpy.types.Operator):
    """Load a finished job's result into the scene again (replaces what it created before)"""

    bl_idname = f"{BL_PREFIX}.load_result"
    bl_label = "Load result"
    bl_options = {"REGISTER", "UNDO"}

    job_id: bpy.props.StringProperty(name="Job", default="")

    def execute(self, context: bpy.types.Context) -> set[str]:
        tracker = SESSION.tracker_for(preferences.backend_settings(context))
        job_id = self.job_id or next((job.job_id for job in reversed(list(tracker.jobs.values())) if job.state == "done"), "")
        if not job_id:
            self.report({"WARNING"}, "no finished job to load; give a job id")
            return {"CANCELLED"}
        tracker.reload(job_id).scene = context.scene.name
        SESSION.ensure_timer()
        self.report({"INFO"}, f"loading job {job_id}")
        return {"FINISHED"}


CLASSES = (POE_OT_generate, POE_OT_cancel, POE_OT_start_backend, POE_OT_load_result)


STATE_ICONS = {"done": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL", "running": "PLAY"}


def draw_jobs(layout: bpy.types.UILayout, context: bpy.types.Context, *, max_rows: int = 5) -> None:
    """The panel's backend section: Start local backend, then a box per recent job: task
    and state with Cancel (while active) or Load (when done); a progress bar with level,
    NFE, ESS, ETA and elapsed time while it runs; the reason and what to do when it failed."""
    layout.operator(POE_OT_start_backend.bl_idname, icon="PLAY")
    if SESSION.backend_status:
        layout.label(text=SESSION.backend_status)
    tracker = SESSION.tracker
    for tracked in list(tracker.jobs.values())[-max_rows:] if tracker else []:
        box = layout.box()
        row = box.row()
        row.label(text=f"{tracked.task} {tracked.state}", icon=STATE_ICONS.get(tracked.state, "TIME"))
        if tracked.state not in FINISHED_STATES and tracked.state != jobs.SUBMITTING:
            row.operator(POE_OT_cancel.bl_idname, text="", icon="CANCEL").job_id = tracked.job_id
        elif tracked.state == "done":
            row.operator(POE_OT_load_result.bl_idname, text="", icon="FILE_REFRESH").job_id = tracked.job_id
        if tracked.state == "running" and tracked.progress:
            fraction = float(tracked.progress.get("fraction", 0.0))
            box.progress(factor=fraction, type="BAR", text=f"{100 * fraction:.0f}%")
            box.label(text=job_view.progress_details(tracked.progress))
        if tracked.state == "failed":
            for line in job_view.failure_lines(tracked.record.get("error"), tracked.message):
                box.label(text=line)
        elif tracked.message:
            box.label(text=tracked.message)
