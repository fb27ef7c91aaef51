"""``poe-backend demo``: the whole round trip on a fresh machine, in one command.

1. builds an example scene with bpy (``blend_examples``: the table with a can to insert by
   default; the falling objects for the video tasks; the labelled layout for regional
   generation; a plain cube scene for ``toy2d``);
2. captures a bundle from it with the add-on's ``capture_bundle`` (Cycles passes, preview
   quality, small resolution); ``toy2d`` reads no passes and gets a bundle.json written
   from the scene's camera;
3. starts the backend (``poe-backend serve`` as a subprocess on a free loopback port);
4. submits a job through the add-on's own client and job tracker and ticks it to the end
   (the same code the Blender UI runs from a timer);
5. loads the result into the scene as an image plane in front of the camera (the
   add-on's result loader), saves ``demo.blend``, ``result.png`` and a short report
   (``report.txt`` and ``report.json``).

Models: ``--models auto`` (the default) uses the real weights when the model lookup finds
them locally and otherwise the ``tiny`` preset — the same architectures, small and with
random weights, so the pipeline runs end to end on a CPU but the picture is noise — and the
report says which plainly.

The add-on and the example scenes are not installed with poe-backend: they are loaded
from this checkout by path (:func:`load_checkout_package`), never by editing ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOY_PARAMS = {"particles": 400, "langevin_steps": 2}
#: Per task: example scene module, objects to capture, prompt, frames, model families. The
#: video tasks sample the capture at their model's rate: frames 1-30 at the scene's 24 fps
#: last 1.21 s, the 37 frames at 30 fps of one FramePack section (window 9).
EXAMPLES: dict[str, dict[str, Any]] = {
    "insertion": {"scene": "insertion_table", "objects": ["Can"], "prompt": "a red soda can on a wooden table", "frames": None, "families": ("flux",)},
    "regional_t2i": {"scene": "regional_layout", "objects": None, "prompt": "", "frames": None, "families": ("flux", "vqascore")},
    "sim2video": {"scene": "falling_objects", "objects": None, "prompt": "balls and boxes falling onto a floor", "frames": list(range(1, 10)), "families": ("wan",)},
    "sim2video_ar": {"scene": "falling_objects", "objects": None, "prompt": "balls and boxes falling onto a floor", "frames": list(range(1, 31)), "families": ("framepack",)},
}
CAPTURE_RESOLUTION = (256, 160)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="end-to-end demo: scene -> bundle -> backend job -> result back in a .blend")
    parser.add_argument("--out", type=Path, default=Path("poe-demo"), help="folder for demo.blend, result.png and the report")
    parser.add_argument("--task", default="insertion", choices=["toy2d", *EXAMPLES], help="task to run (toy2d: analytic experts, no models at all)")
    parser.add_argument("--models", default="auto", help="model preset: auto (real weights if found, else tiny), default, preview, tiny")
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


def load_checkout_package(name: str):
    """``addon`` or ``blend_examples`` of this checkout, imported from its folder by path.

    Neither is part of the poe-backend distribution (the wheel and the editable install
    hold ``poe_backend`` only; Blender installs the add-on from its own extension zip), so
    neither is on ``sys.path`` when ``poe-backend demo`` runs. Putting the checkout root on
    ``sys.path`` would change how every later import in the process resolves and make all
    its top-level folders (``tests``, ``benchmarks``, ...) importable; ``importlib`` loads
    exactly the one folder under its own name, and its submodules (``addon.client``, ...)
    then import as usual from it."""
    if name in sys.modules:
        return sys.modules[name]
    init = REPO / name / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"poe-backend demo needs the repository checkout ({init} is missing)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        spec.loader.exec_module(package)
    except ImportError as error:
        del sys.modules[name]
        raise SystemExit(f"poe-backend demo needs bpy (./dev setup): {error}") from None
    return package


def _import_addon():
    """The add-on's client, job tracker and result loader (the code the Blender UI runs)."""
    load_checkout_package("addon")
    return tuple(importlib.import_module(f"addon.{name}") for name in ("client", "jobs", "results"))


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


def build_example(task: str, out: Path):
    """The example scene for ``task``, opened in bpy: ``blend_examples`` for real tasks,
    :func:`build_scene` for toy2d."""
    import bpy

    if task == "toy2d":
        return build_scene()
    load_checkout_package("blend_examples")
    module = importlib.import_module(f"blend_examples.{EXAMPLES[task]['scene']}")
    path = module.build(out / "scene.blend")
    bpy.ops.wm.open_mainfile(filepath=str(path))
    return bpy.context.scene


def capture(scene, out_dir: Path, task: str) -> tuple[Path, str]:
    """The bundle folder and how it was made."""
    if task == "toy2d":
        return bundle_from_scene(scene, out_dir, task, "", TOY_PARAMS), "bundle.json from the scene's camera (toy2d reads no passes)"
    from addon.capture import capture_bundle

    example = EXAMPLES[task]
    bundle_json = capture_bundle(
        scene, out_dir, task=task, frames=example["frames"], objects=example["objects"], prompt=example["prompt"] or str(scene.get("poe_prompt", "")),
        params={"preset": "preview"}, quality="preview", samples=8, resolution=CAPTURE_RESOLUTION,
    )
    return Path(bundle_json).parent, f"addon.capture.capture_bundle (Cycles, {CAPTURE_RESOLUTION[0]}x{CAPTURE_RESOLUTION[1]}, preview quality)"


def choose_models(task: str, requested: str) -> tuple[str, str]:
    """The model preset to run and a plain sentence about it."""
    if task == "toy2d":
        return "default", "no models: toy2d samples a product of analytic 2-D Gaussian-mixture experts"
    if requested != "auto":
        return requested, f"model preset {requested!r} as requested"
    from poe_backend.models import lookup
    from poe_backend.models import specs

    try:
        lookup.check_available([role for family in EXAMPLES[task]["families"] for role in specs.roles_of(family)], "default")
    except specs.MissingWeights as error:
        missing = ", ".join(repo_id for repo_id, _ in error.missing if repo_id) or f"model '{error.role}'"
        return "tiny", (
            f"no weights found ({missing}; `poe-backend run` prints the download commands); ran the 'tiny' preset: "
            "the real architectures, small and random, so the image is noise and only the pipeline is shown"
        )
    return "default", "the real weights (found locally)"


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


def _loaded_result(bpy, scene, job_id: str) -> str:
    """Where the job's result landed in the .blend (image plane or movie strip)."""
    plane = next((obj for obj in bpy.data.objects if obj.get("poe_job_id") == job_id), None)
    if plane is not None:
        return f"image plane {plane.name!r} in front of the camera, provenance {sorted(key for key in plane.keys() if key.startswith('poe_'))}"
    editor = scene.sequence_editor
    strips = getattr(editor, "strips", None) or getattr(editor, "sequences", [])
    strip = next(strip for strip in strips if strip.get("poe_job_id") == job_id)
    return f"VSE strip {strip.name!r} at frames {strip.frame_final_start}-{strip.frame_final_end}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(out: Path, client_module, jobs_module, models: str) -> tuple[subprocess.Popen, Any, dict[str, Any]]:
    """``poe-backend serve`` on a free loopback port through the add-on's own
    ``start_backend`` (the Start local backend button's code); its log is backend.log."""
    port = _free_port()
    command = shlex.join([sys.executable, "-m", "poe_backend", "serve", "--port", str(port), "--data-dir", str(out / "backend"), "--allow-root", str(out), "--models", models])
    client = client_module.Client(f"http://127.0.0.1:{port}")
    try:
        process = jobs_module.start_backend(command, client, out / "backend.log")
    except client_module.BackendError as error:
        raise SystemExit(error.message) from None
    client.token = jobs_module.token_path_from_command(command).read_text(encoding="utf-8").strip()
    return process, client, client.health()


def run_demo(arguments: argparse.Namespace) -> int:
    out = arguments.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    client_module, jobs_module, results_module = _import_addon()
    import bpy

    scene = build_example(arguments.task, out)
    report.step("scene built with bpy", f"Blender {bpy.app.version_string}: {EXAMPLES.get(arguments.task, {}).get('scene', 'cube on a ground plane')}")
    bundle_dir, how = capture(scene, out / "bundle", arguments.task)
    report.step("bundle captured", f"{bundle_dir} via {how}")
    arguments.models, models_sentence = choose_models(arguments.task, arguments.models)
    report.facts["models"] = models_sentence
    process, client, health = start_backend(out, client_module, jobs_module, arguments.models)
    report.step("backend started", f"{client.url} (pid {process.pid}), device {health['device']}, torch {health['torch']}")
    try:
        return _run_job(arguments, out, scene, bundle_dir, client, health, report, jobs_module, results_module, bpy)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _run_job(arguments, out, scene, bundle_dir, client, health, report, jobs_module, results_module, bpy) -> int:
    tracker = jobs_module.JobTracker(client, out / "results", lambda result: results_module.load_result(scene, result))
    tracked = tracker.submit(bundle_dir, task=arguments.task)
    report.step("job submitted", f"{tracked.job_id} ({arguments.task}, bundle sent by path)")
    last_print = [0.0]

    def sleep_and_report(delay: float) -> None:
        if time.monotonic() - last_print[0] > 2.0:
            print(f"           {tracked.status_line()}", flush=True)
            last_print[0] = time.monotonic()
        time.sleep(delay)

    tracker.wait(arguments.timeout, sleep=sleep_and_report)
    if not tracked.loaded:
        report.step("job did not finish", tracked.status_line())
        report.facts["outcome"] = f"failed: {tracked.status_line()}"
        print(report.write(out))
        return 1
    progress = tracked.progress or {}
    cost = f"NFE {progress.get('nfe')}, forwards {progress.get('forwards')}"
    report.step("job done", f"levels {progress.get('num_levels')}, {cost}, ESS {progress.get('ess') or 0:.1f}, {progress.get('elapsed_s')} s sampling")
    loaded = _loaded_result(bpy, scene, tracked.job_id)
    report.step("result loaded", loaded)
    blend_path = out / "demo.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend_path))
    result_path = out / f"result{Path(tracked.result.primary).suffix}"
    shutil.copyfile(tracked.result.primary, result_path)
    report.step("saved", f"{blend_path}, {result_path}")
    report.facts.update({
        "outcome": "done",
        "ran_on": f"{health['device']} ({'CPU only' if health['device'] == 'cpu' else 'GPU'})",
        "task": arguments.task,
        "job_id": tracked.job_id,
        "blend": str(blend_path),
        "result": str(result_path),
        "bundle": str(bundle_dir),
        "backend_data": str(out / "backend"),
    })
    print(report.write(out))
    return 0
