"""Memory of two consecutive jobs of one task on an emulated card, through the real task code;
or one planned evaluation of many particles (``--check``), through the family runtime.

    python benchmarks/gpu_memory.py --task insertion --card-gb 24 [--tiny | --shallow]
    python benchmarks/gpu_memory.py --check regional-p32 --card-gb 48 [--tiny]
    python benchmarks/gpu_memory.py --check conditioned-insertion --card-gb 48 [--tiny]

``--check`` (issue 21), one row each, planned against measured:

* ``regional-p32``: regional FLUX.1 [dev] at 1024², P = 32, Qwen2.5-VL-7B (VQAScore) loaded
  first, as the task does: ``FluxRuntime.plan(["dev"], particles=32)`` picks the micro-batch;
  one evaluation of the global and one region expert (their forwards in micro-batches) and
  one VQAScore twist (previews decoded ``FluxRuntime.preview_batch`` at a time, scored 4 at
  a time). Printed: placements, micro-batch, the batch sizes the transformer saw, planned
  activations (micro-batch × one particle's) against measured (peak minus what was allocated
  before the evaluation), planned peak (plan + the VQAScore model it was planned beside)
  against ``max_memory_allocated``.
* ``conditioned-insertion``: FLUX.1 Depth × Fill at 1024² with Fill conditioned on Depth
  (``Conditioning(child=fill, parents=(depth,))``): ``plan(["depth", "fill"], particles=32,
  conditioned=["fill"])`` picks the micro-batch B; one evaluation of B particles (one
  micro-batch: Depth's forward, then Fill's aligned pass, forward and backward,
  checkpointed). Printed as above: the aligned pass's measured peak against
  ``planner.flux_conditioned_bytes`` × B.

Prompt embeddings and the Depth/Fill conditions are random tensors of their real shapes
(no T5-XXL build, no VAE encodes): the memory of a forward does not depend on their values.

One process, one task (insertion, regional_t2i, sim2video, sim2video_ar), one card size. On
CUDA the card is emulated on the big one with ``torch.cuda.set_per_process_memory_fraction(
card / total)``, set before anything is allocated (the planner's ``cuda_free_bytes`` and the
model cache's budget both honour it). Two jobs then run one after the other through
``get_task(task).run(TaskContext(...))`` -- the real model cache, planner, placement, encoders
and decode -- the second with a new prompt (so its text encoders load beside what the first
job left in the cache). One row is printed per job as soon as it ends, with ``OOM`` (a CUDA
out-of-memory) or the error in place of the status when it fails; the process goes on.

Full-size random weights, no downloads: the jobs run with the ``tiny`` registry preset, so the
tokenizers and the files the registry resolves exist (built on first use under
``$POE_DATA_DIR``; a temporary directory when unset), and inside this process only

* ``poe_backend.runtime.cache._from_pretrained`` (the one place components load) builds each
  module from its role's FULL-SIZE config (:func:`full_modules`: the families' declared
  ``full_configs`` plus the encoders and VAEs below) with its parameters on the meta device
  and its buffers computed for real, then allocates every parameter directly on the target
  device in the requested dtype (bf16; fp32 where the runtimes ask, the video VAEs; fp32
  modules kept as ``from_pretrained`` keeps them) and fills it in place (N(0, 0.02²) on CUDA;
  on the CPU -- streamed models -- a repeated random pattern: CPU random fills run at
  ~0.25 GB/s); image processors come at their published sizes (:func:`full_processors`);
  tokenizers stay tiny (their ids are in range of the full vocabularies);
* ``runtime.planner.installed_config`` (its and ``installed_size``'s caches cleared) gives the
  full configs, so the planner plans with the full sizes;
* ``runtime.cache.parameter_count`` (and ``weight_bytes``, its fallback, also in
  ``models.lookup``) give the full models' counts and bf16 bytes, so eviction by need makes
  room for full-size loads.

Every diffusion transformer the cache builds gets forward hooks that count and time its
forwards (CUDA-synchronised): ``fwd`` and ``s/fwd`` (CFG passes count one each; a streamed
model's block transfers are included).

Sampler settings are small (:data:`SAMPLER`: 3 levels, 1 Langevin step, 2 particles, the
exponential transport: 3 evaluations per expert) at the tasks' default resolutions; the video
tasks run fewer frames (:func:`job_settings` says how many; the header line repeats it).

Without CUDA, or with ``--tiny``: the same flow with the tiny models on the CPU, one thread,
under an explicit device budget of ``4 · card`` MiB standing for ``card`` GiB
(``MODEL_CACHE.set_budget("cpu", ...)``, and the planner given the same budget through
``planner.device_budget``, which is None off CUDA), so the CPU run exercises the same code.
``--shallow``: the full-size path on the CPU with 1-2 layers per stack (:data:`SHALLOW`) at
the tiny sizes, budget ``card`` GiB: checks the full-size wiring (configs, processors, token
ids, the patched loader) without a GPU. Neither is a GPU measurement, and the rows say so.

Columns: the placements applied (role tail = placement), the decode (``full``/``tiled``,
``+free`` when the transformers are freed first), the plan's estimated peak VRAM / host /
pinned host (manifest ``placement.plan``; ``-`` when an explicit offload or no budget
decided), the job's measured ``max_memory_allocated`` (manifest ``memory.peak_device_bytes``),
the model cache's ``peak_bytes`` on the device during the job, pinned host bytes at the job's
end (manifest ``memory.pinned_host_bytes``: the cache's registered buffers plus torch's pinned
allocator; then the allocator's ``allocated_bytes.current`` alone), the process RSS at the
job's end and its high-water during the job (VmRSS / VmHWM, reset before each job), the job's
wall seconds, the part of them spent building random weights (standing in for loading from
disk), the sampler's seconds and NFE from the manifest, the transformer forwards and their
mean seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

GiB, MiB = 2**30, 2**20
TASKS = ("insertion", "regional_t2i", "sim2video", "sim2video_ar")
PROMPTS = ("a red ball on a wooden table", "a blue ceramic vase with flowers, evening light")
#: CPU mode: MiB of device budget per GiB of the card (the planner's activation and decode
#: estimates use the full models' widths, ~6-40 MB at the tiny sizes, so 1 MiB per GiB would
#: refuse jobs a real card of that size runs).
TINY_MIB_PER_GIB = 4

# ---------------------------------------------------------------------------------------
# Full-size components (written from the published config.json files; the transformers and
# Qwen2.5-VL-7B are the planner's own, runtime.planner.full_configs(), as the families declare them)

CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                   projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6, is_encoder_decoder=False)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
                relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6, is_encoder_decoder=False)
CLIP_H_VISION = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, image_size=224, patch_size=14,
                     projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
LLAMA_HUNYUAN = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=128320,
                     max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0, pad_token_id=0, bos_token_id=1, eos_token_id=1)
SIGLIP_SO400M = dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304, image_size=384, patch_size=14)


def full_modules() -> dict[str, dict[str, Any]]:
    """role -> the full-size config of its loader class (the registry's loader)."""
    from benchmarks.bench_image import FLUX_VAE
    from poe_backend.runtime.planner import full_configs

    declared = full_configs()
    table = {role: dict(config) for role, (_, config) in declared.items()}
    table.update({
        "flux.vae": FLUX_VAE,
        "flux.text_encoder": CLIP_L_TEXT,
        "flux.text_encoder_2": T5_XXL,
        "wan.vae": {},  # AutoencoderKLWan's defaults are Wan2.1's VAE
        "wan.text_encoder": UMT5_XXL,
        "wan.image_encoder": CLIP_H_VISION,
        "framepack.transformer.f1": dict(declared["framepack.transformer"][1]),  # same architecture as the inverted one
        "framepack.vae": {},  # AutoencoderKLHunyuanVideo's defaults are HunyuanVideo's VAE
        "framepack.text_encoder": LLAMA_HUNYUAN,
        "framepack.text_encoder_2": CLIP_L_TEXT,
        "framepack.image_encoder": SIGLIP_SO400M,
    })
    return table


#: ``--shallow``: per role, what to cut so the full-width models run on a CPU (1-2 layers per
#: stack; widths, vocabularies, VAEs and processors stay full size).
SHALLOW: dict[str, dict[str, Any]] = {
    **{role: dict(num_layers=1, num_single_layers=1) for role in ("flux.transformer.dev", "flux.transformer.depth", "flux.transformer.fill")},
    "wan.transformer.vace": dict(num_layers=1, vace_layers=[0]),
    "wan.transformer.i2v": dict(num_layers=1),
    **{role: dict(num_layers=1, num_single_layers=1, num_refiner_layers=1) for role in ("framepack.transformer", "framepack.transformer.f1")},
    **{role: dict(num_hidden_layers=1) for role in ("flux.text_encoder", "framepack.text_encoder_2", "wan.image_encoder", "framepack.image_encoder")},
    **{role: dict(num_layers=1) for role in ("flux.text_encoder_2", "wan.text_encoder")},
    "framepack.text_encoder": dict(num_hidden_layers=2),  # the pipeline reads hidden_states[-3]
}


def shallow(role: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with :data:`SHALLOW`'s cuts (Qwen2.5-VL: one text and one vision layer)."""
    if role == "vqa.model":
        return {**config, "text_config": {**config["text_config"], "num_hidden_layers": 1},
                "vision_config": {**config["vision_config"], "depth": 1, "fullatt_block_indexes": [0]}}
    return {**config, **SHALLOW.get(role, {})}


def full_processors() -> dict[str, Any]:
    """role -> a builder of the image processor at its published size (the tiny ones resize
    to 32-56 px, which the full vision encoders' position embeddings would not take)."""
    from transformers import CLIPImageProcessor, Qwen2VLImageProcessorPil, SiglipImageProcessor

    return {
        "wan.image_processor": lambda: CLIPImageProcessor(),  # 224, OpenAI CLIP mean/std (Wan2.1-I2V's)
        "framepack.feature_extractor": lambda: SiglipImageProcessor(size={"height": 384, "width": 384}),  # flux_redux_bfl's
        "vqa.image_processor": lambda: Qwen2VLImageProcessorPil(),  # Qwen2.5-VL's pixel budget (VQAScore shrinks to 448² first)
    }


# ---------------------------------------------------------------------------------------
# Building random full-size modules


class Clock:
    """What the patched loader and the transformer hooks count during one job."""

    def __init__(self) -> None:
        self.build_seconds = 0.0
        self.forwards = 0
        self.forward_seconds = 0.0

    def reset(self) -> None:
        self.__init__()


CLOCK = Clock()


def _synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_forwards(module: torch.nn.Module) -> None:
    """Count and time ``module``'s forwards into :data:`CLOCK` (hooks hold no reference to it)."""
    started: list[float] = []

    def before(mod, args):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started.append(time.perf_counter())

    def after(mod, args, output):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        CLOCK.forward_seconds += time.perf_counter() - started.pop()
        CLOCK.forwards += 1

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def _loader_class(loader: str):
    module_name, class_name = loader.split(":")
    return module_name, getattr(importlib.import_module(module_name), class_name)


def _construct(role: str, loader: str, config: dict[str, Any]) -> torch.nn.Module:
    """``loader``'s class from ``config`` (class defaults, with a note, when the installed
    library rejects it); call inside :func:`_parameters_on_meta`."""
    module_name, cls = _loader_class(loader)

    def build(values: dict[str, Any]) -> torch.nn.Module:
        return cls(cls.config_class(**values)) if module_name == "transformers" else cls(**values)

    try:
        return build(config)
    except Exception as error:  # noqa: BLE001 - an unknown argument on this version: say so, use the defaults
        print(f"   note: {role}: full config rejected by the installed {module_name} ({type(error).__name__}: {str(error)[:80]}); class defaults used", flush=True)
        return build({})


def _parameters_on_meta():
    """Parameters on the meta device, buffers computed for real (rotary tables, position ids):
    accelerate's ``init_empty_weights(include_buffers=False)``."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


@functools.lru_cache(maxsize=None)
def _pattern(dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(MiB, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)


def _fill(tensor: torch.Tensor, name: str, generator: torch.Generator | None) -> None:
    """In place: 1-D norm weights 1, 1-D scale-shift tables 0 (as ``common.random_model``),
    the rest N(0, 0.02²) on CUDA, a repeated random pattern on the CPU."""
    if tensor.dim() == 1 and "norm" in name:
        tensor.fill_(1.0)
    elif tensor.dim() == 1 and name.endswith("scale_shift_table"):
        tensor.zero_()
    elif tensor.device.type == "cuda":
        tensor.normal_(0.0, 0.02, generator=generator)
    else:
        flat, pattern = tensor.view(-1), _pattern(tensor.dtype)
        rows, rest = divmod(flat.numel(), pattern.numel())
        if rows:
            flat[: rows * pattern.numel()].view(rows, -1).copy_(pattern.expand(rows, -1))
        if rest:
            flat[rows * pattern.numel():].copy_(pattern[:rest])


def materialize(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Give every meta parameter of ``model`` storage on ``device`` in ``dtype``, filled by
    :func:`_fill` (tied parameters stay tied), and move the buffers there. Kept in fp32 as
    ``from_pretrained`` keeps them: diffusers' ``_keep_in_fp32_modules`` always,
    transformers' ``_keep_in_fp32_modules_strict`` for fp16/bf16 and its
    ``_keep_in_fp32_modules`` for fp16 only."""
    from diffusers import ModelMixin

    listed = getattr(model, "_keep_in_fp32_modules", None) or ()
    if isinstance(model, ModelMixin):
        keep = set(listed)
    else:
        keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ()) if dtype in (torch.float16, torch.bfloat16) else set()
        keep |= set(listed) if dtype == torch.float16 else set()
    generator = torch.Generator(device=device).manual_seed(0) if torch.device(device).type == "cuda" else None
    done: dict[int, Any] = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, parameter in list(module._parameters.items()):
                if parameter is None:
                    continue
                if id(parameter) not in done:
                    full_name = f"{module_name}.{name}" if module_name else name
                    wanted = torch.float32 if keep & set(full_name.split(".")) else dtype
                    tensor = torch.empty(parameter.shape, dtype=wanted if parameter.is_floating_point() else parameter.dtype, device=device)
                    _fill(tensor, full_name, generator)
                    done[id(parameter)] = torch.nn.Parameter(tensor, requires_grad=False)
                module._parameters[name] = done[id(parameter)]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    if id(buffer) not in done:
                        done[id(buffer)] = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device) if buffer.is_meta else buffer.to(device)
                    module._buffers[name] = done[id(buffer)]
    return model.eval().requires_grad_(False)


def full_config(role: str, path: str) -> dict[str, Any]:
    """The full config of ``role``; Qwen2.5-VL takes its special token ids from the tiny
    tokenizer's model (so the tiny tokenizer's image placeholders are the model's)."""
    config = dict(FULL_MODULES[role])
    if role == "vqa.model":
        tiny = json.loads((Path(path) / "config.json").read_text())
        config.update({key: value for key, value in tiny.items() if key.endswith("_token_id") and not isinstance(value, (dict, list))})
    return config


def build_full(role: str, loader: str, path: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    with _parameters_on_meta():
        model = _construct(role, loader, full_config(role, path))
    return materialize(model, device, dtype)


@functools.lru_cache(maxsize=None)
def full_parameter_count(role: str, loader: str) -> int:
    """Values the full model stores (parameters and persistent buffers, tied ones once)."""
    with torch.device("meta"):
        model = _construct(role, loader, dict(FULL_MODULES[role]))
    return sum({id(tensor): tensor.numel() for tensor in model.state_dict(keep_vars=True).values()}.values())


FULL_MODULES: dict[str, dict[str, Any]] = {}


def install_full_size(cut: bool = False) -> None:
    """Patch the loader, the planner's configs and the size estimates to the full models
    (``cut``: :func:`shallow` ones)."""
    from poe_backend.models import lookup, specs
    from poe_backend.runtime import cache as model_cache
    from poe_backend.runtime import planner as memory_plan

    FULL_MODULES.update({role: shallow(role, config) if cut else config for role, config in full_modules().items()})
    processors = full_processors()
    original_config, original_count, original_bytes = memory_plan.installed_config, model_cache.parameter_count, lookup.weight_bytes

    def loader(role: str) -> str:
        return specs.get_spec(role, "tiny").loader

    @functools.lru_cache(maxsize=64)
    def installed_config(role: str, preset: str) -> dict[str, Any]:
        return dict(FULL_MODULES[role]) if role in FULL_MODULES else original_config(role, preset)

    def parameter_count(role: str, preset: str = "default") -> int | None:
        return full_parameter_count(role, loader(role)) if role in FULL_MODULES else original_count(role, preset)

    def weight_bytes(role: str, preset: str = "default") -> int:
        return 2 * full_parameter_count(role, loader(role)) if role in FULL_MODULES else original_bytes(role, preset)

    memory_plan.installed_config.cache_clear()
    memory_plan.installed_size.cache_clear()
    memory_plan.installed_config = installed_config
    model_cache.parameter_count = parameter_count
    model_cache.weight_bytes = weight_bytes
    lookup.weight_bytes = weight_bytes
    _wrap_loader(lambda role, spec, path, dtype, device: (
        build_full(role, spec.loader, path, dtype, device) if spec.is_module and role in FULL_MODULES
        else processors[role]() if role in processors else None))


def _wrap_loader(replacement) -> None:
    """``runtime.cache._from_pretrained`` -> ``replacement(role, spec, path, dtype, device)``
    (None: the original loader); either way build time goes to :data:`CLOCK` and a
    diffusion transformer gets timed forwards."""
    from poe_backend.runtime import cache as model_cache
    from poe_backend.runtime.placement import device_key

    original = getattr(model_cache._from_pretrained, "__wrapped__", model_cache._from_pretrained)
    roles = roles_by_path()

    def from_pretrained(spec, path, dtype, device):
        role = roles.get(str(Path(path).resolve()))
        started = time.perf_counter()
        component = None if replacement is None or role is None else replacement(role, spec, path, dtype, device_key(device))
        if component is None:
            component = original(spec, path, dtype, device)
        _synchronize(device)
        CLOCK.build_seconds += time.perf_counter() - started
        if role is not None and ".transformer" in role and isinstance(component, torch.nn.Module):
            time_forwards(component)
        return component

    from_pretrained.__wrapped__ = original
    model_cache._from_pretrained = from_pretrained


def roles_by_path() -> dict[str, str]:
    """Resolved directory of every tiny role -> the role (``tiny/<family>/<subfolder>``)."""
    from poe_backend.models import specs

    found = {}
    for presets in specs.families().values():
        for role, spec in presets.get("tiny", {}).items():
            directory = Path(spec.local_dir) if Path(spec.local_dir).is_absolute() else specs.data_dir() / spec.local_dir
            found[str((directory / spec.subfolder if spec.subfolder else directory).resolve())] = role
    return found


# ---------------------------------------------------------------------------------------
# Bundles (written like the add-on writes them) and the jobs


def _write_png(path: Path, array) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_exr(path: Path, depth) -> None:
    import numpy as np
    import OpenEXR

    path.parent.mkdir(parents=True, exist_ok=True)
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Z": depth.astype(np.float32)}) as exr:
        exr.write(str(path))


def image_bundle(root: Path, task: str, size: int, prompt: str):
    """insertion: plate, depth with a near box, its mask and an RGB render; regional_t2i: two
    boxed objects with prompts and one out of view. ``size`` × ``size`` pixels."""
    import numpy as np

    from poe_backend.bundle import SCHEMA, parse_bundle, read_bundle, write_bundle

    root.mkdir(parents=True, exist_ok=True)
    q = size // 4
    data = {"schema": SCHEMA, "task": task, "prompt": prompt, "seed": 7, "width": size, "height": size, "fps": 24, "frames": [1], "passes": {}, "objects": [], "params": {}}
    if task == "insertion":
        rng = np.random.default_rng(0)
        plate = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        depth = np.full((size, size), 5.0, dtype=np.float32)
        depth[: size // 8] = np.inf
        depth[q : 3 * q, q : 3 * q] = 2.0
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[q : 3 * q, q : 3 * q] = 255
        render = plate.copy()
        render[mask > 0] = (200, 30, 30)
        _write_png(root / "plate.png", plate)
        _write_exr(root / "depth" / "0001.exr", depth)
        _write_png(root / "mask" / "ball" / "0001.png", mask)
        _write_png(root / "rgb" / "0001.png", render)
        data["passes"] = {"plate": "plate.png", "depth": "depth/####.exr", "mask.ball": "mask/ball/####.png", "rgb": "rgb/####.png"}
        data["objects"] = [{"name": "ball", "pass_index": 1, "prompt": "a red ball", "bbox_px": [[q, q, 3 * q, 3 * q]]}]
    else:
        data["objects"] = [
            {"name": "dog", "pass_index": 1, "prompt": "a dog", "bbox_px": [[0, 0, 2 * q, size]]},
            {"name": "cat", "pass_index": 2, "prompt": "a cat", "bbox_px": [[2 * q, q, size, 3 * q]]},
            {"name": "bird", "pass_index": 3, "prompt": "a bird", "bbox_px": [None]},
        ]
    write_bundle(parse_bundle(data, root, check_files=True))
    return read_bundle(root)


def video_bundle(root: Path, task: str, frames: int, height: int, width: int):
    """A bright square moving right over a gradient (``rgb``), with its camera-Z depth for
    sim2video (square at 2, floor 4..8, sky +inf)."""
    import numpy as np

    from poe_backend.bundle import SCHEMA, read_bundle

    root.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width]
    side = max(8, height // 4)
    for index in range(frames):
        rgb = np.stack([xs / width, ys / height, np.full(xs.shape, 0.3)], -1)
        x0 = min(width - side, 4 + index * max(1, (width - side) // max(frames, 1)))
        square = (ys >= height // 2 - side // 2) & (ys < height // 2 + side // 2) & (xs >= x0) & (xs < x0 + side)
        rgb[square] = [1.0, 0.9, 0.2]
        _write_png(root / "rgb" / f"{index + 1:04d}.png", (rgb * 255).astype(np.uint8))
        if task == "sim2video":
            depth = 4.0 + 4.0 * (height - ys) / height
            depth[: max(1, height // 8)] = np.inf
            depth[square] = 2.0
            _write_exr(root / "depth" / f"{index + 1:04d}.exr", depth)
    passes = {"rgb": "rgb/####.png", **({"depth": "depth/####.exr"} if task == "sim2video" else {})}
    data = {"schema": SCHEMA, "task": task, "prompt": PROMPTS[0], "seed": 3, "width": width, "height": height, "fps": 16,
            "frames": list(range(1, frames + 1)), "passes": passes, "objects": [], "params": {}}
    (root / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    return read_bundle(root)


#: Sampler settings of every job: small, so a job's time is loading + a few forwards.
SAMPLER = dict(levels=3, langevin_steps=1, particles=2, transport="exponential", save_particles=False)


def job_settings(task: str, full: bool) -> tuple[str, dict[str, Any], Any]:
    """``(description, params for job 1 (job 2 adds the new prompt), bundle writer(root, prompt))``."""
    if task in ("insertion", "regional_t2i"):
        size = 1024 if full else 48
        params = dict(SAMPLER) if full else {**SAMPLER, "max_sequence_length": 16}
        if task == "regional_t2i" and not full:
            params["vqa_max_pixels"] = 56 * 56
        what = f"{size}x{size}" + ("" if full else ", 16 text tokens")
        return what, params, lambda root, prompt: image_bundle(root, task, size, prompt)
    if task == "sim2video":
        frames, height, width = (17, 480, 832) if full else (5, 32, 32)
        params = {**SAMPLER, "i2v_guidance": 1.0, "depth_guidance": 1.0}
        what = f"{width}x{height}x{frames} (frames lowered from 81 for time), CFG off (guidance 1: the CFG passes run one after the other, same peak)"
        return what, params, lambda root, prompt: video_bundle(root, task, frames, height, width)
    window, (height, width) = (9, (480, 832)) if full else (2, (32, 32))
    frames = 1 + 4 * window
    params = {**SAMPLER, "latent_window_size": window, "num_sections": 1}
    what = f"{width}x{height}, 1 section of {window} latent frames = {frames} frames (lowered from 2 sections, 73 frames, for time)"
    return what, params, lambda root, prompt: video_bundle(root, task, frames, height, width)


def run_job(task_name: str, params: dict[str, Any], bundle, out_dir: Path, preset: str, device: str, prompt: str) -> dict[str, Any]:
    from poe_backend.tasks import get_task
    from poe_backend.tasks.base import TaskContext

    task = get_task(task_name)
    if task_name in ("sim2video", "sim2video_ar"):
        params = {**params, "prompt": prompt}
    out_dir.mkdir(parents=True, exist_ok=True)
    result = task.run(TaskContext(bundle=bundle, params=task.Params(**params), out_dir=out_dir, models=preset, device=device))
    result.write(out_dir)
    return result.manifest


# ---------------------------------------------------------------------------------------
# Measuring and printing


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")


def size(value: float | int | None) -> str:
    """Bytes as G/M/K (binary units)."""
    if value is None:
        return "-"
    value = float(value)
    for unit, scale in (("G", GiB), ("M", MiB)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value / 1024:.0f}K"


HEADER = ("task", "card", "job", "status", "placements", "decode", "plan VRAM/host/pinned", "peak VRAM alloc/reserved", "cache peak",
          "pinned (all/torch)", "RSS now/peak", "job s", "build s", "sample s", "NFE", "fwd", "s/fwd")


def row(task: str, card: float, job: int, status: str, manifest: dict[str, Any] | None, measured: dict[str, Any]) -> str:
    manifest = manifest or {}
    placement = manifest.get("placement") or {}
    plan = placement.get("plan") or {}
    memory = manifest.get("memory") or {}
    placements = " ".join(f"{role.split('.')[-1]}={name}" for role, name in (placement.get("placements") or {}).items()) or "-"
    decode = placement.get("decode") or plan.get("decode")
    decode_text = "-" if not decode else ("tiled" if decode.get("tiled") else "full") + ("+free" if decode.get("free_transformers") else "")
    planned = "-" if not plan else f"{plan.get('peak_vram_gib', 0):.2f}G/{plan.get('peak_host_gib', 0):.2f}G/{size(plan.get('pinned_host_bytes'))}"
    stats = manifest.get("sampler_stats") or manifest.get("stats") or {}
    seconds = manifest.get("seconds") or {}
    sample_seconds = seconds.get("sample", seconds.get("sampling"))
    peak_device = memory.get("peak_device_bytes", measured.get("peak_device"))
    cells = (
        task, f"{card:g}G", f"{job}/2", status, placements, decode_text, planned, f"{size(peak_device)}/{size(measured.get('peak_reserved'))}",
        size(measured.get("cache_peak")),
        f"{size(memory.get('pinned_host_bytes'))}/{size(measured.get('torch_pinned'))}", f"{size(measured.get('rss'))}/{size(measured.get('hwm'))}",
        f"{measured['seconds']:.1f}", f"{measured['build']:.1f}", "-" if sample_seconds is None else f"{sample_seconds:.1f}",
        str(stats.get("nfe_per_particle", "-")), str(measured["forwards"]), "-" if not measured["forwards"] else f"{measured['forward_seconds'] / measured['forwards']:.3f}",
    )
    return " | ".join(cells)


def failure(error: BaseException) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "OOM: " + str(error).split("\n")[0][:160]
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


# ---------------------------------------------------------------------------------------
# Checks of one planned evaluation (--check)

CHECKS = ("regional-p32", "conditioned-insertion")
CHECK_PARTICLES = 32
CHECK_HEADER = ("check", "card", "status", "placements", "micro-batch", "batches seen", "activations planned/measured", "peak planned/measured", "s")


def _random_prompt(runtime) -> Any:
    """A prompt embedding of the transformer's text shapes (T5 ``(1, L, joint_attention_dim)``,
    CLIP ``(1, pooled_projection_dim)``), random: no text encoder is built."""
    from poe_backend.families.flux.runtime import PromptEmbedding
    from poe_backend.runtime.planner import installed_config

    config = installed_config("flux.transformer.dev", runtime.preset)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, runtime.space.max_sequence_length, config["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, config["pooled_projection_dim"], generator=generator)
    return PromptEmbedding("random", embeds.to(runtime.device, runtime.dtype), pooled.to(runtime.device, runtime.dtype))


def _spy_batches(transformer: torch.nn.Module, seen: list[int]) -> None:
    transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)


def _regional_p32(runtime, device: str, full: bool, seen: list[int]) -> tuple[Any, Any, int]:
    """``(plan, evaluation callable, bytes held beside the plan)`` of regional_t2i at P = 32."""
    from poe_backend.families.flux import runtime as flux
    from poe_backend.families.vqascore.scorer import VQAScoreReward, VQAScorer
    from poe_backend.sampling import Factor
    from poe_backend.runtime.placement import parameter_bytes

    max_pixels = 448 * 448 if full else 56 * 56
    scorer = VQAScorer("tiny", device=device, max_pixels=max_pixels)  # loaded before planning, as the task does
    plan = runtime.plan(["dev"], particles=CHECK_PARTICLES)
    size = runtime.space.height
    global_map, (region_map,) = flux.regional_weights([[0, 0, size // 2, size]], size, runtime.space.width)
    prompt = _random_prompt(runtime)
    factors = [Factor(runtime.expert("dev", prompt, guidance=3.5, name=name), weights.to(device)) for name, weights in (("global", global_map), ("region", region_map))]
    _spy_batches(factors[0].expert.transformer, seen)
    reward = VQAScoreReward(scorer, lambda x0: runtime.decode_preview(x0, max_pixels), ["a dog on the left", "a cat"])
    product = flux.RegionalProduct(factors, [reward])
    x = torch.randn(CHECK_PARTICLES, *runtime.event_shape, generator=torch.Generator().manual_seed(1)).to(device)
    return plan, lambda: product.twist(product.evaluate(x, 0.5)), parameter_bytes(scorer.model)


def _conditioned_insertion(runtime, device: str, full: bool, seen: list[int]) -> tuple[Any, Any, int]:
    """``(plan, evaluation callable, 0)`` of insertion with Fill conditioned on Depth, one
    micro-batch of the planned B particles."""
    from poe_backend.sampling import Factor, ProductOfExperts
    from poe_backend.sampling.experts import Conditioning

    plan = runtime.plan(["depth", "fill"], particles=CHECK_PARTICLES, conditioned=["fill"])
    prompt, generator = _random_prompt(runtime), torch.Generator().manual_seed(2)
    depth = runtime.expert("depth", prompt, guidance=10.0, condition=torch.randn(1, runtime.num_tokens, 64, generator=generator).to(device))
    fill = runtime.expert("fill", prompt, guidance=30.0, condition=torch.randn(1, runtime.num_tokens, 320, generator=generator).to(device))
    _spy_batches(fill.transformer, seen)
    product = ProductOfExperts([Factor(depth), Factor(fill)], conditioning=[Conditioning(child=1, parents=(0,), weight=0.1)])
    x = torch.randn(plan.micro_batch, *runtime.event_shape, generator=generator).to(device)
    return plan, lambda: product.velocities(x, 0.5), 0


def _run_check(check: str, card: float, cuda: bool, where: str) -> int:
    """One ``--check`` row: full-size random weights at 1024² on CUDA, the tiny preset at 48²
    under the emulated budget on the CPU."""
    from poe_backend.families.flux.runtime import FluxRuntime

    device = "cuda" if cuda else "cpu"
    print(f"gpu_memory: {check}, {where}", flush=True)
    print(f"   {'full-size random weights (bf16)' if cuda else 'tiny preset'}; {'1024x1024' if cuda else '48x48'}, P={CHECK_PARTICLES}; random prompt embeddings and conditions", flush=True)
    if cuda:
        install_full_size()
    else:
        _wrap_loader(None)
        _emulate_budget(card, cut=False)
    print(" | ".join(CHECK_HEADER), flush=True)
    started, seen, status, plan, measured, held = time.perf_counter(), [], "ok", None, {}, 0
    try:
        size = 1024 if cuda else 48
        runtime = FluxRuntime(size, size, preset="tiny", device=device, max_sequence_length=512 if cuda else 16)
        plan, evaluate, held = {"regional-p32": _regional_p32, "conditioned-insertion": _conditioned_insertion}[check](runtime, device, cuda, seen)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            measured["before"] = torch.cuda.memory_allocated()
        evaluate()
        if cuda:
            torch.cuda.synchronize()
            measured["peak"] = torch.cuda.max_memory_allocated()
    except Exception as error:  # noqa: BLE001 - a failed check is a row, not a crash
        status = failure(error)
        traceback.print_exc(limit=-3)
    print(check_row(check, card, status, plan, seen, measured, held, time.perf_counter() - started), flush=True)
    return 0 if status == "ok" else 1


def check_row(check: str, card: float, status: str, plan, seen: list[int], measured: dict[str, int], held: int, seconds: float) -> str:
    """One ``--check`` row: the plan's placements and micro-batch, the batches the transformer
    saw, activations planned (B × one particle's) and measured (peak minus what was
    allocated before), peaks planned (the plan's plus ``held``) and measured."""
    if plan is None:
        return " | ".join((check, f"{card:g}G", status, *["-"] * (len(CHECK_HEADER) - 4), f"{seconds:.1f}"))
    planned_peak = plan.placement.planned.peak_vram_bytes + held if plan.placement.planned is not None else None
    activations = plan.micro_batch * plan.particle_bytes
    measured_activations = measured["peak"] - measured["before"] if "peak" in measured else None
    batches = ",".join(str(count) for count in seen[:12]) + ("..." if len(seen) > 12 else "")
    cells = (
        check, f"{card:g}G", status, " ".join(f"{role.split('.')[-1]}={name}" for role, name in plan.placement.placements.items()),
        f"{plan.micro_batch} of {plan.particles}", batches or "-", f"{size(activations)}/{size(measured_activations)}",
        f"{size(planned_peak)}/{size(measured.get('peak'))}", f"{seconds:.1f}",
    )
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=TASKS)
    what.add_argument("--check", choices=CHECKS, help="one planned evaluation of many particles (issue 21) instead of two task jobs")
    parser.add_argument("--card-gb", type=float, required=True, help="card size in GiB to emulate (CPU: the budget in MiB)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU even when CUDA is available")
    parser.add_argument("--shallow", action="store_true", help="dry run of the full-size path on the CPU: full widths, vocabularies, VAEs and "
                        "processors with 1-2 layers per stack, at the tiny sizes (checks the wiring without a GPU; not a measurement)")
    arguments = parser.parse_args(argv)
    if arguments.check and arguments.shallow:
        parser.error("--shallow runs --task jobs only (a check runs 1024² with 32 particles)")
    _quiet()

    cuda = torch.cuda.is_available() and not arguments.tiny and not arguments.shallow
    card = arguments.card_gb
    if cuda:  # before anything is allocated on the device
        total = torch.cuda.get_device_properties(0).total_memory
        from poe_backend.runtime import planner

        # the CUDA context lives outside the fraction: a real card of that size has it inside
        fraction = min(1.0, (card * GiB - planner.CUDA_CONTEXT_BYTES) / total)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        where = f"emulated {card:g} GiB card: memory fraction {fraction:.3f} of {torch.cuda.get_device_name(0)} ({total / GiB:.1f} GiB)"
        if card * GiB > total:
            where += f" -- the card has less than {card:g} GiB, so this is the whole card"
    elif arguments.shallow:
        torch.set_num_threads(1)
        where = f"NOT a GPU measurement: shallow dry run of the full-size path on the CPU (1 thread), device budget {card:g} GiB"
    else:
        torch.set_num_threads(1)
        where = f"NOT a GPU measurement: tiny models on the CPU (1 thread), device budget {card * TINY_MIB_PER_GIB:g} MiB standing for a {card:g} GiB card"

    scratch = Path(tempfile.mkdtemp(prefix="gpu-memory-"))
    own_data_dir = "POE_DATA_DIR" not in os.environ
    if own_data_dir:
        os.environ["POE_DATA_DIR"] = str(scratch / "data")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if arguments.check:
            return _run_check(arguments.check, card, cuda, where)
        return _run(arguments.task, card, cuda, where, scratch, arguments.shallow)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quiet() -> None:
    """No progress bars from the libraries (they would garble the rows)."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def _emulate_budget(card: float, cut: bool) -> None:
    """Off CUDA: a device budget on the CPU standing for a ``card`` GiB card (``card`` GiB
    with ``cut``, else :data:`TINY_MIB_PER_GIB` MiB per GiB), for the model cache and for the
    planner (``planner.device_budget``, None off CUDA otherwise)."""
    from poe_backend.runtime import planner as memory_plan
    from poe_backend.runtime.cache import MODEL_CACHE

    budget = int(card * (GiB if cut else TINY_MIB_PER_GIB * MiB))
    MODEL_CACHE.set_budget("cpu", budget)

    def device_budget(dev):  # the planner's view of the same budget (1 GiB added back: its fixed reserve)
        return memory_plan.Budget(max(0, budget - MODEL_CACHE.device_bytes("cpu")) + GiB, memory_plan._mem_available())

    memory_plan.device_budget = device_budget


def _run(task: str, card: float, cuda: bool, where: str, scratch: Path, cut: bool = False) -> int:
    from poe_backend.runtime.cache import MODEL_CACHE
    from poe_backend.runtime.placement import device_key

    device = "cuda" if cuda else "cpu"
    what, params, write_bundle = job_settings(task, full=cuda)
    print(f"gpu_memory: {task}, {where}", flush=True)
    models = "full-size random weights (bf16; tiny tokenizers)" if cuda else "SHALLOW full-width random weights (1-2 layers per stack; tiny tokenizers)" if cut else "tiny preset"
    print(f"   {models}; {what}; P={params['particles']}, "
          f"{params['levels']} levels, {params['langevin_steps']} Langevin step, {params['transport']} transport; 2 jobs, the second with a new prompt", flush=True)
    if cuda or cut:
        install_full_size(cut=cut)
    if not cuda:
        if not cut:
            _wrap_loader(None)
        _emulate_budget(card, cut)
    print(" | ".join(HEADER), flush=True)
    failed = False
    for job, prompt in enumerate(PROMPTS, start=1):
        CLOCK.reset()
        MODEL_CACHE.peak_bytes.clear()
        _reset_hwm()
        started = time.perf_counter()
        manifest, status = None, "ok"
        try:
            bundle = write_bundle(scratch / f"bundle-{job}", prompt)
            manifest = run_job(task, params, bundle, scratch / f"out-{job}", "tiny", device, prompt)
        except Exception as error:  # noqa: BLE001 - a failed job is a row, not a crash
            status, failed = failure(error), True
            traceback.print_exc(limit=-3)
        seconds = time.perf_counter() - started
        gc.collect()
        measured = {
            "seconds": seconds, "build": CLOCK.build_seconds, "forwards": CLOCK.forwards, "forward_seconds": CLOCK.forward_seconds,
            "cache_peak": MODEL_CACHE.peak_bytes.get(device_key(device)), "rss": _proc_status("VmRSS"), "hwm": _proc_status("VmHWM"),
            "peak_device": torch.cuda.max_memory_allocated() if cuda else None,
            "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,  # the fraction caps reserved memory
            "torch_pinned": torch.cuda.host_memory_stats().get("allocated_bytes.current", 0) if cuda else None,
        }
        print(row(task, card, job, status, manifest, measured), flush=True)  # no empty_cache between jobs: the server does none
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
