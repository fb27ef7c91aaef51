"""``poe-backend demo``: the whole round trip on a fresh machine, in one command.

1. builds an example scene with bpy (camera, ground, a cube, a light);
2. captures a bundle from it (the add-on's ``capture_bundle`` for the tasks it renders;
   for ``toy2d``, which reads no passes, a bundle.json written from the scene's camera
   and render settings);
3. starts the backend (``poe-backend serve`` as a subprocess on a free loopback port);
4. submits a job through the add-on's own client and job tracker and ticks it to the end
   (the same code the Blender UI runs from a timer);
5. loads the result into the scene as an image plane in front of the camera (the
   add-on's result loader), saves ``demo.blend``, ``result.png`` and a short report
   (``report.txt`` and ``report.json``).

On a machine without weights it runs ``toy2d`` (analytic Gaussian-mixture experts, no
weights, CPU) and says so. Real tasks run with ``--task NAME --models tiny`` (their
``preview`` parameters) once they are registered and the add-on's capture is present.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOY_PARAMS = {"particles": 400, "langevin_steps": 2}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="end-to-end demo: scene -> bundle -> backend job -> result back in a .blend")
    parser.add_argument("--out", type=Path, default=Path("poe-demo"), help="folder for demo.blend, result.png and the report")
    parser.add_argument("--task", default="toy2d", help="task to run (toy2d needs no weights)")
    parser.add_argument("--models", default=None, help="model preset for real tasks (e.g. tiny)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job")
    parser.set_defaults(func=run_demo)


class Report:
    """Steps with their durations, printed as they happen and written at the end."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.steps: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}

    def step(self, name: str, detail: str = "") -> None:
        entry = {"step": name, "detail": detail, "at_s": round(time.monotonic() - self.start, 2)}
        self.steps.append(entry)
        print(f"[{entry['at_s']:7.2f} s] {name}{': ' + detail if detail else ''}", flush=True)

    def write(self, out: Path) -> str:
        lines = ["poe-backend demo report", ""]
        lines += [f"{key}: {value}" for key, value in self.facts.items()]
        lines += ["", "steps:"] + [f"  {entry['at_s']:7.2f} s  {entry['step']}{': ' + entry['detail'] if entry['detail'] else ''}" for entry in self.steps]
        text = "\n".join(lines) + "\n"
        (out / "report.txt").write_text(text, encoding="utf-8")
        (out / "report.json").write_text(json.dumps({"facts": self.facts, "steps": self.steps}, indent=2, default=str), encoding="utf-8")
        return text


def _import_addon():
    """The add-on package of this checkout (it is not installed into the venv)."""
    if (REPO / "addon" / "client.py").is_file() and str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import addon  # noqa: F401
        from addon import client, jobs, results
    except ImportError as error:
        raise SystemExit(f"poe-backend demo needs the repository checkout with addon/ (and bpy: ./dev setup): {error}") from None
    return client, jobs, results


def build_scene():
    """A small example scene: ground plane, a cube, a sun and a camera looking at them."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "PoE demo"
    scene.render.resolution_x, scene.render.resolution_y = 480, 480
    scene.frame_start = scene.frame_end = scene.frame_current = 1
    ground = bpy.data.objects.new("Ground", _box_mesh("Ground", (4.0, 4.0, 0.01)))
    cube = bpy.data.objects.new("Cube", _box_mesh("Cube", (0.5, 0.5, 0.5)))
    cube.location = (0.0, 0.0, 0.5)
    cube.pass_index = 1
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (math.radians(40), 0.0, math.radians(30))
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location = (0.0, -6.0, 3.0)
    camera.rotation_euler = (math.radians(65), 0.0, 0.0)
    for obj in (ground, cube, sun, camera):
        scene.collection.objects.link(obj)
    scene.camera = camera
    return scene


def _box_mesh(name: str, half: tuple[float, float, float]):
    import bpy

    x, y, z = half
    vertices = [(sx * x, sy * y, sz * z) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(vertices, [], faces)
    mesh.update()
    return mesh


def capture(scene, out_dir: Path, task: str, prompt: str, params: dict[str, Any]) -> tuple[Path, str]:
    """The bundle folder and how it was made. Uses ``addon.capture.capture_bundle`` for
    the tasks it renders; toy2d (which reads no passes and which capture does not know)
    gets a bundle.json written from the scene's camera and render settings."""
    try:
        from addon import capture as capture_module
    except ImportError:
        capture_module = None
    if capture_module is not None and task in getattr(capture_module, "TASK_RENDERS", ()):
        capture_bundle = capture_module.capture_bundle
        bundle_json = capture_bundle(scene, out_dir, task=task, prompt=prompt, params=params)
        return Path(bundle_json).parent, "addon.capture.capture_bundle (Cycles passes)"
    if task != "toy2d":
        raise SystemExit(f"task {task!r} needs the add-on's capture (addon/capture) to render its passes, which this checkout does not have for it")
    return bundle_from_scene(scene, out_dir, task, prompt, params), "bundle.json from the scene's camera and render settings (toy2d reads no passes)"


def bundle_from_scene(scene, out_dir: Path, task: str, prompt: str, params: dict[str, Any]) -> Path:
    from poe_backend.bundle import Bundle, Camera, write_bundle

    camera = scene.camera
    matrix = [list(row) for row in camera.matrix_world]
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = Bundle(
        root=out_dir, task=task, prompt=prompt, seed=0,
        width=scene.render.resolution_x, height=scene.render.resolution_y, fps=float(scene.render.fps),
        frames=[scene.frame_current],
        camera=Camera(camera.data.lens, camera.data.sensor_width, camera.data.sensor_fit, camera.data.clip_start, camera.data.clip_end, [matrix]),
        passes={}, objects=[], params=params,
    )
    write_bundle(bundle)
    return out_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(out: Path, client_module) -> tuple[subprocess.Popen, Any, dict[str, Any]]:
    port = _free_port()
    data_dir = out / "backend"
    command = [sys.executable, "-m", "poe_backend", "serve", "--port", str(port), "--data-dir", str(data_dir), "--allow-root", str(out)]
    log = open(out / "backend.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    client = client_module.Client(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the backend exited with code {process.returncode}; see {out / 'backend.log'}")
        try:
            health = client.health()
            break
        except client_module.BackendNotRunning:
            if time.monotonic() > deadline:
                process.terminate()
                raise SystemExit(f"the backend did not start within 120 s; see {out / 'backend.log'}") from None
            time.sleep(0.2)
    client.token = (data_dir / "token").read_text(encoding="utf-8").strip()
    return process, client, health


def run_demo(arguments: argparse.Namespace) -> int:
    out = arguments.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    client_module, jobs_module, results_module = _import_addon()
    import bpy

    scene = build_scene()
    report.step("scene built with bpy", f"Blender {bpy.app.version_string}: ground, cube, sun, camera at {scene.render.resolution_x}x{scene.render.resolution_y}")
    params = TOY_PARAMS if arguments.task == "toy2d" else {}  # real tasks: their preview parameters go here
    bundle_dir, how = capture(scene, out / "bundle", arguments.task, "a cube on the ground", params)
    report.step("bundle captured", f"{bundle_dir} via {how}")
    process, client, health = start_backend(out, client_module)
    report.step("backend started", f"{client.url} (pid {process.pid}), device {health['device']}, torch {health['torch']}")
    try:
        return _run_job(arguments, out, scene, bundle_dir, client, health, report, jobs_module, results_module, bpy)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _run_job(arguments, out, scene, bundle_dir, client, health, report, jobs_module, results_module, bpy) -> int:
    tracker = jobs_module.JobTracker(client, out / "results", lambda result: results_module.load_result(scene, result))
    tracked = tracker.submit(bundle_dir, task=arguments.task, models=arguments.models)
    report.step("job submitted", f"{tracked.job_id} ({arguments.task}, bundle sent by path)")
    deadline, last_print = time.monotonic() + arguments.timeout, 0.0
    while (delay := tracker.tick()) is not None and time.monotonic() < deadline:
        if time.monotonic() - last_print > 2.0:
            print(f"           {tracked.status_line()}", flush=True)
            last_print = time.monotonic()
        time.sleep(delay)
    if not tracked.loaded:
        report.step("job did not finish", tracked.status_line())
        report.facts["outcome"] = f"failed: {tracked.status_line()}"
        print(report.write(out))
        return 1
    progress = tracked.progress or {}
    report.step("job done", f"levels {progress.get('num_levels')}, NFE {progress.get('nfe')}, ESS {progress.get('ess') or 0:.1f} of {TOY_PARAMS['particles'] if arguments.task == 'toy2d' else '?'} particles, {progress.get('elapsed_s')} s sampling")
    plane = next(obj for obj in bpy.data.objects if obj.get("poe_job_id") == tracked.job_id)
    report.step("result loaded", f"image plane {plane.name!r} in front of the camera, provenance {sorted(key for key in plane.keys() if key.startswith('poe_'))}")
    blend_path = out / "demo.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend_path))
    shutil.copyfile(tracked.result.primary, out / "result.png")
    report.step("saved", f"{blend_path}, {out / 'result.png'}")
    weights = "no weights: toy2d samples a product of analytic 2-D Gaussian-mixture experts" if arguments.task == "toy2d" else f"models preset {arguments.models or 'default'}"
    report.facts.update({
        "outcome": "done",
        "ran_on": f"{health['device']} ({'CPU only' if health['device'] == 'cpu' else 'GPU'}), {weights}",
        "task": arguments.task,
        "job_id": tracked.job_id,
        "blend": str(blend_path),
        "result_png": str(out / "result.png"),
        "bundle": str(bundle_dir),
        "backend_data": str(out / "backend"),
        "note": "toy2d shows the machinery (capture -> IPC -> sampler -> result in Blender), not image quality; real tasks need their weights (or models=tiny for random tiny ones)" if arguments.task == "toy2d" else "",
    })
    print(report.write(out))
    return 0
