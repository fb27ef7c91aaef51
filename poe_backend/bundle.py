"""The scene bundle: the directory the Blender add-on writes and the backend reads.

One definition for both sides. Stdlib only (no bpy, numpy or torch), so the add-on's build
copies this file into the extension and tests import it from either side.

Layout (DESIGN.md section 4)::

    bundle.json   {"schema": "poe-bundle/1", "task", "prompt", "seed", "width", "height",
                   "fps", "frames": [int], "camera": {...}, "passes": {...},
                   "objects": [...], "params": {...}, "capture": {...}}
    rgb/####.png  8-bit sRGB, one per frame          depth/####.exr  float32 camera Z
    mask/<object>/####.png  8-bit 0/255              plate.png       scene without the object

``####`` is the scene frame number, zero-padded to 4 digits (Blender's convention).
Depth is camera-space Z in scene units (not the distance along the ray); pixels that hit
nothing are ``+inf``. The EXR holds one float32 channel named ``Z``.
Bounding boxes are pixel rectangles ``[x_min, y_min, x_max, y_max]`` with the origin at the
image's top-left, x to the right, y down, max exclusive; ``null`` where the object is not
in view on that frame. ``params`` holds task parameters only (the backend validates them
against the task's parameter model); ``capture`` is free-form provenance of how the bundle
was made (renderer samples, Blender version), which the backend keeps but never reads.

Limits (both sides refuse past them, naming the field): every string in bundle.json (and in
a request's JSON) at most :data:`MAX_TEXT_CHARS` characters, valid Unicode without NUL;
nesting at most :data:`MAX_JSON_DEPTH`; integers within 64 bits, numbers finite;
bundle.json at most :data:`MAX_BUNDLE_JSON_BYTES`; at most :data:`MAX_FRAMES` frames,
:data:`MAX_OBJECTS` objects and :data:`MAX_FRAME_PIXELS` pixels per frame.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "poe-bundle/1"
#: The service API version both sides speak (``api_version`` in ``GET /v1/health``).
API_VERSION = 1
#: Job states after which nothing changes (the server's worker and the add-on's tracker).
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})
BUNDLE_FILE = "bundle.json"
FRAME_TOKEN = "####"

#: Passes each task needs. ``mask`` means one ``mask.<object>`` pass per listed object.
TASK_PASSES: dict[str, tuple[str, ...]] = {
    "insertion": ("plate", "rgb", "depth", "mask"),
    "sim2video": ("rgb", "depth"),
    "sim2video_ar": ("rgb",),
    "regional_t2i": (),
    "toy2d": (),
}
#: Tasks whose bundles cover several frames; the others use the first frame only.
VIDEO_TASKS = frozenset({"sim2video", "sim2video_ar"})
PASS_NAME = re.compile(r"^(rgb|depth|plate|mask\.[^/\\]+)$")

#: Longest string in bundle.json or a request's JSON (a prompt, a name, a path), in characters.
MAX_TEXT_CHARS = 10_000
#: Deepest nesting of arrays and objects in bundle.json or a request's JSON. A bundle needs
#: 6 (an object's per-frame 4x4 matrices: bundle > objects > object > matrices > matrix >
#: row) and params a few more (a toy spec's covariances); what is stored and echoed stays
#: shallow, and no reader of it recurses deep.
MAX_JSON_DEPTH = 32
#: Integers in bundle.json or a request's JSON fit in 64 bits (seeds, frame numbers); a
#: larger one would overflow where it is turned into a float or a C integer.
JSON_INT_RANGE = (-(2**63), 2**63 - 1)
#: Largest bundle.json, in bytes. A 1000-frame capture with ten moving objects (a camera
#: and ten object matrices and boxes per frame) is ~4 MiB.
MAX_BUNDLE_JSON_BYTES = 16 << 20
#: Most frames in a bundle: 10 000 is ~7 minutes at 24 fps, beyond any capture the add-on
#: makes for these tasks (a video task generates at most :data:`VIDEO_MAX_FRAMES`). The
#: server reads each per-frame pass file's header at submit and keeps the frame list in
#: the job's record, which every status read copies.
MAX_FRAMES = 10_000
#: Most objects in a bundle: regional_t2i makes one FLUX expert per boxed, prompted object
#: and insertion reads one mask pass per object.
MAX_OBJECTS = 256
#: Most pixels in one frame (width x height): 8192² (an 8K UHD render is 7680x4320, 33 M).
#: Every pass file must be the bundle's size, so no pass is decoded larger.
MAX_FRAME_PIXELS = 8192 * 8192
#: A lone surrogate: a str that is not valid Unicode (from a JSON escape like "\ud800").
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BundleError(ValueError):
    """A bundle that does not follow the schema; ``field`` is a dotted path into bundle.json."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Camera:
    """Per-bundle intrinsics (millimetres / scene units) and one 4x4 world matrix per frame
    (row-major lists, Blender's camera convention: looks down -Z, +Y up)."""

    lens_mm: float
    sensor_mm: float
    sensor_fit: str
    clip_start: float
    clip_end: float
    matrix_world: list[list[list[float]]]


@dataclass(frozen=True)
class SceneObject:
    """An object of interest: its name, object-index pass value, optional regional prompt,
    per-frame pixel box (``None`` when out of view) and, optionally, its per-frame 4x4
    world matrix (the baked motion of a simulated object; row-major lists)."""

    name: str
    pass_index: int
    prompt: str
    bbox_px: list[list[int] | None]
    matrix_world: list[list[list[float]]] | None = None


@dataclass(frozen=True)
class Bundle:
    """A validated bundle; :meth:`pass_path` resolves files under :attr:`root`."""

    root: Path
    task: str
    prompt: str
    seed: int
    width: int
    height: int
    fps: float
    frames: list[int]
    camera: Camera | None
    passes: dict[str, str]
    objects: list[SceneObject]
    params: dict[str, Any] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)

    def pass_path(self, name: str, frame: int | None = None) -> Path:
        """The file of pass ``name`` at scene ``frame`` (frame-less passes ignore it).

        The path must stay inside :attr:`root` once symlinks are resolved (a pass file or
        folder that links out of the bundle is refused), so a bundle under an allowed
        root cannot make the backend read files outside it."""
        if name not in self.passes:
            raise BundleError(f"passes.{name}", f"this bundle has no '{name}' pass")
        pattern = self.passes[name]
        if FRAME_TOKEN in pattern:
            if frame is None:
                raise ValueError(f"pass '{name}' is per frame: give a frame")
            pattern = pattern.replace(FRAME_TOKEN, f"{frame:04d}")
        path = self.root / pattern
        resolved = path.resolve()
        _expect(resolved.is_relative_to(self.root.resolve()), f"passes.{name}", f"{pattern} links outside the bundle (to {resolved}); pass files must be inside it")
        return path

    def to_json(self) -> dict[str, Any]:
        """The bundle.json dictionary (without :attr:`root`)."""
        data = {
            "schema": SCHEMA,
            "task": self.task,
            "prompt": self.prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": self.frames,
            "camera": None if self.camera is None else vars(self.camera),
            "passes": self.passes,
            "objects": [vars(obj) for obj in self.objects],
            "params": self.params,
            "capture": self.capture,
        }
        return json.loads(json.dumps(data))


def read_bundle(root: str | Path, *, check_files: bool = True) -> Bundle:
    """Read and validate ``root/bundle.json`` (at most :data:`MAX_BUNDLE_JSON_BYTES`);
    raises :class:`BundleError` naming the field."""
    root = Path(root)
    path = root / BUNDLE_FILE
    if not path.is_file():
        raise BundleError("bundle.json", f"not found in {root}")
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_BUNDLE_JSON_BYTES + 1)
    except OSError as error:  # unreadable: permissions, a folder named bundle.json
        raise BundleError("bundle.json", f"cannot be read ({error.strerror or error})") from None
    _expect(len(text) <= MAX_BUNDLE_JSON_BYTES, "bundle.json", f"is larger than {MAX_BUNDLE_JSON_BYTES >> 20} MiB")
    return parse_bundle(decode_json(text, "bundle.json"), root, check_files=check_files)


def decode_json(text: str | bytes, field: str) -> Any:
    """``text`` (bytes: UTF-8) parsed as JSON. Raises :class:`BundleError` naming ``field``
    where Python's parser fails or would keep what JSON has not: invalid UTF-8, a syntax
    error, ``NaN``/``Infinity``, nesting past the interpreter's recursion limit, an integer
    longer than ``int()`` reads (4300 digits). The values are not checked against this
    module's limits: :func:`check_json_value` does that."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise BundleError(field, f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise BundleError(field, f"is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects") from None
    except (json.JSONDecodeError, _NotJSONNumber) as error:
        raise BundleError(field, f"not valid JSON ({error})") from None
    except ValueError:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise BundleError(field, "holds an integer with thousands of digits; integers must fit in 64 bits") from None


class _NotJSONNumber(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's parser reads them, JSON has none."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSONNumber(f"{name} is not a JSON number")


def check_json_value(value: Any, path: str) -> None:
    """Check a decoded JSON ``value`` found at ``path`` (a dotted path; ``""`` for a whole
    document, which must then be an object): nesting at most :data:`MAX_JSON_DEPTH`, every
    string (keys too) at most :data:`MAX_TEXT_CHARS` characters without NUL or lone
    surrogates, integers in :data:`JSON_INT_RANGE`, floats finite. Raises
    :class:`BundleError` naming the place of the first bad value (``objects[2].prompt``).
    Iterative, so any nesting is safe to check; about 0.6 s per million values (the most a
    16 MiB bundle.json holds is 8 million)."""
    if (problem := _value_problem(value)) is not None:
        raise BundleError(path, problem)
    pending = [(value, path, 1)] if type(value) in (dict, list) else []
    while pending:
        container, where, depth = pending.pop()
        _expect(depth <= MAX_JSON_DEPTH, where, f"is nested {depth} levels deep; at most {MAX_JSON_DEPTH} levels of arrays and objects")
        for key, child in container.items() if type(container) is dict else enumerate(container):
            if type(key) is str and (problem := _text_problem(key)) is not None:
                raise BundleError(_place(where, key), f"its name {problem}")
            if type(child) in (dict, list):
                pending.append((child, _place(where, key), depth + 1))
            elif (problem := _value_problem(child)) is not None:
                raise BundleError(_place(where, key), problem)


def _place(where: str, key: str | int) -> str:
    """The dotted path of member ``key`` (an object's name, an array's index) of ``where``."""
    if type(key) is int:
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _value_problem(value: Any) -> str | None:
    """What is wrong with a JSON scalar (None: nothing, or not a scalar)."""
    kind = type(value)
    if kind is str:
        return _text_problem(value)
    if kind is int and not JSON_INT_RANGE[0] <= value <= JSON_INT_RANGE[1]:
        return "is an integer beyond 64 bits"
    if kind is float and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return None


def _text_problem(text: str) -> str | None:
    if len(text) > MAX_TEXT_CHARS:
        return f"is {len(text)} characters; at most {MAX_TEXT_CHARS}"
    if "\0" in text:
        return "holds a NUL character"
    surrogate = LONE_SURROGATE.search(text)
    return None if surrogate is None else f"holds a lone surrogate ({ascii(surrogate.group())}): text must be valid Unicode"


def write_bundle(bundle: Bundle) -> Path:
    """Validate, then write ``bundle.json`` atomically into ``bundle.root``."""
    data = bundle.to_json()
    parse_bundle(data, bundle.root, check_files=False)
    path = bundle.root / BUNDLE_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    temporary.replace(path)
    return path


def parse_bundle(data: Any, root: str | Path, *, check_files: bool = True) -> Bundle:
    """Validate a bundle.json dictionary; ``check_files`` also checks every pass file exists."""
    root = Path(root)
    _expect(isinstance(data, dict), "bundle.json", "must be a JSON object")
    check_json_value(data, "")
    _expect(data.get("schema") == SCHEMA, "schema", f"must be '{SCHEMA}', got {data.get('schema')!r}")
    task = data.get("task")
    _expect(isinstance(task, str) and task in TASK_PASSES, "task", f"unknown task {task!r}; known: {', '.join(TASK_PASSES)}")
    prompt = _typed(data, "prompt", str, default="")
    seed = _typed(data, "seed", int, default=0)
    width, height = _positive_int(data, "width"), _positive_int(data, "height")
    _expect(width * height <= MAX_FRAME_PIXELS, "width", f"{width}x{height} is {width * height} pixels a frame; at most {MAX_FRAME_PIXELS} (8192x8192)")
    fps = _typed(data, "fps", (int, float), default=24.0)
    _expect(fps > 0, "fps", f"must be positive, got {fps}")
    frames = data.get("frames")
    _expect(isinstance(frames, list) and len(frames) > 0, "frames", "must be a non-empty list of frame numbers")
    _expect(len(frames) <= MAX_FRAMES, "frames", f"has {len(frames)} frames; at most {MAX_FRAMES}")
    for index, frame in enumerate(frames):
        _expect(isinstance(frame, int) and not isinstance(frame, bool), f"frames[{index}]", f"must be an integer, got {frame!r}")
    _expect(len(set(frames)) == len(frames), "frames", "frame numbers must be unique")
    camera = _parse_camera(data.get("camera"), len(frames))
    passes = _parse_passes(data.get("passes", {}))
    objects = _parse_objects(data.get("objects", []), len(frames))
    params = data.get("params", {})
    _expect(isinstance(params, dict), "params", "must be an object")
    capture = data.get("capture", {})
    _expect(isinstance(capture, dict), "capture", "must be an object")
    bundle = Bundle(root, task, prompt, seed, width, height, float(fps), frames, camera, passes, objects, params, capture)
    _check_task_passes(bundle)
    if check_files:
        _check_files(bundle)
    return bundle


def _parse_camera(camera: Any, num_frames: int) -> Camera | None:
    if camera is None:
        return None
    _expect(isinstance(camera, dict), "camera", "must be an object")
    values = {}
    for name in ("lens_mm", "sensor_mm", "clip_start", "clip_end"):
        value = camera.get(name)
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, f"camera.{name}", f"must be a positive number, got {value!r}")
        values[name] = float(value)
    sensor_fit = camera.get("sensor_fit", "AUTO")
    _expect(sensor_fit in ("AUTO", "HORIZONTAL", "VERTICAL"), "camera.sensor_fit", f"unknown fit {sensor_fit!r}")
    matrices = camera.get("matrix_world")
    _expect(isinstance(matrices, list) and len(matrices) == num_frames, "camera.matrix_world", f"needs one 4x4 matrix per frame ({num_frames})")
    for index, matrix in enumerate(matrices):
        _expect(_is_matrix(matrix), f"camera.matrix_world[{index}]", "must be a 4x4 list of lists")
    return Camera(matrix_world=matrices, sensor_fit=sensor_fit, **values)


def _parse_passes(passes: Any) -> dict[str, str]:
    _expect(isinstance(passes, dict), "passes", "must be an object of name -> relative path pattern")
    for name, pattern in passes.items():
        _expect(bool(PASS_NAME.match(name)), f"passes.{name}", "unknown pass name (rgb, depth, plate, mask.<object>)")
        _expect(isinstance(pattern, str) and pattern != "", f"passes.{name}", "must be a relative path pattern")
        parts = Path(pattern).parts
        _expect(not Path(pattern).is_absolute() and ".." not in parts, f"passes.{name}", f"must stay inside the bundle, got {pattern!r}")
        per_frame = name != "plate"
        _expect((FRAME_TOKEN in pattern) == per_frame, f"passes.{name}", "per-frame passes need '####' in the pattern; 'plate' must not have it")
    return dict(passes)


def _parse_objects(objects: Any, num_frames: int) -> list[SceneObject]:
    _expect(isinstance(objects, list), "objects", "must be a list")
    _expect(len(objects) <= MAX_OBJECTS, "objects", f"has {len(objects)} objects; at most {MAX_OBJECTS}")
    parsed = []
    for index, obj in enumerate(objects):
        where = f"objects[{index}]"
        _expect(isinstance(obj, dict), where, "must be an object")
        name = obj.get("name")
        _expect(isinstance(name, str) and name != "", f"{where}.name", "must be a non-empty string")
        pass_index = obj.get("pass_index")
        _expect(isinstance(pass_index, int) and not isinstance(pass_index, bool) and pass_index > 0, f"{where}.pass_index", f"must be a positive integer, got {pass_index!r}")
        prompt = obj.get("prompt", "")
        _expect(isinstance(prompt, str), f"{where}.prompt", "must be a string")
        boxes = obj.get("bbox_px", [None] * num_frames)
        _expect(isinstance(boxes, list) and len(boxes) == num_frames, f"{where}.bbox_px", f"needs one box (or null) per frame ({num_frames})")
        for frame_index, box in enumerate(boxes):
            valid = box is None or (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box) and box[0] < box[2] and box[1] < box[3])
            _expect(valid, f"{where}.bbox_px[{frame_index}]", f"must be null or [x_min, y_min, x_max, y_max] integers with min < max, got {box!r}")
        matrices = obj.get("matrix_world")
        if matrices is not None:
            _expect(isinstance(matrices, list) and len(matrices) == num_frames, f"{where}.matrix_world", f"needs one 4x4 matrix per frame ({num_frames})")
            for frame_index, matrix in enumerate(matrices):
                _expect(_is_matrix(matrix), f"{where}.matrix_world[{frame_index}]", "must be a 4x4 list of lists")
        parsed.append(SceneObject(name, pass_index, prompt, boxes, matrices))
    names = [obj.name for obj in parsed]
    _expect(len(set(names)) == len(names), "objects", "object names must be unique")
    return parsed


#: sim2video ``mode`` -> the passes it reads: ``depth`` for the VACE depth control, ``rgb``
#: for the first frame (unless ``params.first_frame`` names an image) and, for
#: ``ddim_inversion``, the whole clip it inverts. ``TASK_PASSES["sim2video"]`` is their
#: union: what the add-on captures.
SIM2VIDEO_MODE_PASSES: dict[str, tuple[str, ...]] = {
    "product": ("rgb", "depth"),
    "i2v": ("rgb",),
    "depth": ("depth",),
    "vace_combined": ("rgb", "depth"),
    "ddim_inversion": ("rgb",),
}


def required_passes(task: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The passes ``task`` reads with ``params`` (task parameters; missing ones take the
    defaults): :data:`TASK_PASSES`, narrowed per mode for sim2video. The bundle check uses
    the bundle's params; the task checks again with the job's (a request may override)."""
    if task != "sim2video":
        return TASK_PASSES[task]
    mode = params.get("mode", "product")
    passes = SIM2VIDEO_MODE_PASSES.get(mode, TASK_PASSES[task]) if isinstance(mode, str) else TASK_PASSES[task]  # a bad mode fails in the params check
    if params.get("first_frame") and mode != "ddim_inversion":
        passes = tuple(name for name in passes if name != "rgb")
    return passes


def _check_task_passes(bundle: Bundle) -> None:
    for required in required_passes(bundle.task, bundle.params):
        if required == "mask":
            _expect(bool(bundle.objects), "objects", f"task '{bundle.task}' needs at least one object")
            for obj in bundle.objects:
                _expect(f"mask.{obj.name}" in bundle.passes, f"passes.mask.{obj.name}", f"task '{bundle.task}' needs a mask per object")
        else:
            _expect(required in bundle.passes, f"passes.{required}", f"task '{bundle.task}' needs the '{required}' pass")
    if bundle.task == "regional_t2i":
        _expect(any(obj.prompt for obj in bundle.objects) or bundle.prompt != "", "prompt", "regional_t2i needs a prompt or per-object prompts")


def _check_files(bundle: Bundle) -> None:
    for name, pattern in bundle.passes.items():
        frames = bundle.frames if FRAME_TOKEN in pattern else [None]
        for frame in frames:
            path = bundle.pass_path(name, frame)
            _expect(path.is_file(), f"passes.{name}", f"missing file {path.relative_to(bundle.root)}")


def _is_matrix(matrix: Any) -> bool:
    return isinstance(matrix, list) and len(matrix) == 4 and all(isinstance(row, list) and len(row) == 4 for row in matrix)


def _typed(data: dict, name: str, kind: type | tuple[type, ...], *, default: Any) -> Any:
    value = data.get(name, default)
    _expect(isinstance(value, kind) and not isinstance(value, bool), name, f"has the wrong type: {value!r}")
    return value


def _positive_int(data: dict, name: str) -> int:
    value = data.get(name)
    _expect(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, f"must be a positive integer, got {value!r}")
    return value


def _expect(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise BundleError(field, message)


#: The video models' native size: Wan2.1 480p (832×480) and 81 frames (5 s at 16 fps).
VIDEO_MAX_SIDE = 832
VIDEO_MAX_FRAMES = 81


def capped_size(width: int, height: int, *, max_side: int, multiple: int = 16) -> tuple[int, int]:
    """``(width, height)`` scaled down (aspect kept, never up) so the longer side is at most
    ``max_side``, each side then rounded down to a multiple of ``multiple`` (at least
    ``multiple``): the generation size of every task."""
    scale = min(1.0, max_side / max(width, height))
    return max(multiple, int(width * scale) // multiple * multiple), max(multiple, int(height * scale) // multiple * multiple)


def capped_video_size(width: int, height: int, num_frames: int, *, max_side: int = VIDEO_MAX_SIDE,
                      max_frames: int = VIDEO_MAX_FRAMES, multiple: int = 16, frame_multiple: int = 4) -> tuple[int, int, int]:
    """What a video task generates from a bundle of ``width``×``height`` pixels and
    ``num_frames`` frames: the size scaled down (aspect kept, never up) so that its longer
    side is at most ``max_side``, each side then rounded down to a multiple of ``multiple``
    (at least ``multiple``); the frame count cut to at most ``max_frames`` and down to the
    form ``frame_multiple·k + 1`` (video VAEs compress time by 4 after the first frame).

    Returns ``(width, height, num_frames)``. One rule for both sides: the backend applies it,
    the add-on shows it before sending. ``num_frames`` below ``frame_multiple + 1`` is
    returned as 0 (too short to generate)."""
    width, height = capped_size(width, height, max_side=max_side, multiple=multiple)
    frames = min(num_frames, max_frames)
    frames = (frames - 1) // frame_multiple * frame_multiple + 1 if frames >= frame_multiple + 1 else 0
    return width, height, frames


def frames_at_rate(frames: list[int], fps: float, rate: float) -> list[int]:
    """The captured frame each frame of a ``rate`` frames-per-second clip shows, for a
    capture of scene ``frames`` at ``fps``: the clip keeps the capture's seconds.

    Captured frame ``n`` is at ``(n - first) / fps`` s, clip frame ``k`` at ``k / rate`` s for
    ``k = 0 .. floor(duration · rate)`` (``duration = (last - first) / fps``), and shows the
    captured frame nearest in time (a tie takes the later one). The timing error is at most
    half a captured frame (±1/48 s at 24 fps) and zero when ``fps`` is a multiple of
    ``rate``; a ``rate`` above ``fps`` repeats captured frames (24 -> 30 fps shows every
    fourth twice). A 2 s capture at 24 fps (frames 1..49) is 33 frames at 16 fps:
    ``[1, 3, 4, 6, 7, ..., 48, 49]``. One rule for both sides: the backend samples the
    simulation with it, the add-on counts the frames a job will generate with it."""
    ordered = sorted(frames)
    offsets = [frame - ordered[0] for frame in ordered]  # scene frames since the first
    count = math.floor(offsets[-1] * rate / fps + 1e-9) + 1
    chosen = []
    for index in range(count):
        target = index * fps / rate  # clip frame time, in scene frames since the first
        right = bisect.bisect_left(offsets, target)
        if right == len(offsets) or (right > 0 and target - offsets[right - 1] < offsets[right] - target):
            right -= 1
        chosen.append(ordered[right])
    return chosen
