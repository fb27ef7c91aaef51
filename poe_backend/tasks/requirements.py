"""Which registry roles a task loads, for given parameters and registry preset (torch-free).

The weights manager (``poe-backend models``) asks this module what to check or download
before a job runs, so it must not import the tasks (they import torch and diffusers). Each
entry below mirrors what the task's ``run`` passes to ``registry.check_available`` and says
why; parameters not given take the tasks' defaults (``method="product"`` etc.).
"""

from __future__ import annotations

from typing import Mapping

#: FLUX.1 [dev]'s VAE, CLIP-L and T5-XXL with their tokenizers: every FLUX task encodes its
#: prompt and decodes its latent with them (Depth and Fill share them, see flux_models).
FLUX_SHARED = ["flux.vae", "flux.text_encoder", "flux.tokenizer", "flux.text_encoder_2", "flux.tokenizer_2"]
#: insertion ``method`` -> transformers: the product multiplies Depth and Fill; the single
#: expert baselines load one; RF-Solver inverts and edits with FLUX.1 [dev].
INSERTION_TRANSFORMERS = {
    "product": ["flux.transformer.depth", "flux.transformer.fill"],
    "depth": ["flux.transformer.depth"],
    "fill": ["flux.transformer.fill"],
    "rf_solver": ["flux.transformer.dev"],
}
#: Qwen2.5-VL: the VQAScore reward and the LLM layout parser both run it.
VQA = ["vqa.model", "vqa.image_processor", "vqa.tokenizer"]
#: Wan2.1's VAE and UMT5-XXL: every sim2video mode encodes a prompt and decodes video.
WAN_SHARED = ["wan.vae", "wan.tokenizer", "wan.text_encoder"]
#: The I2V-14B transformer with its CLIP ViT-H image encoder (first-frame conditioning).
WAN_I2V = ["wan.transformer.i2v", "wan.image_encoder", "wan.image_processor"]
SIM2VIDEO_MODES = ("product", "i2v", "depth", "vace_combined", "ddim_inversion")
#: FramePack ``sampling_type`` -> transformer (inverted anti-drifting or F1 "vanilla").
FRAMEPACK_TRANSFORMERS = {"inverted": "framepack.transformer", "vanilla": "framepack.transformer.f1"}
#: What every FramePack run loads besides the transformer (HunyuanVideo VAE, Llama, CLIP-L,
#: SigLIP); the render-Gaussian expert uses the same VAE, so ``mode`` changes nothing.
FRAMEPACK_SHARED = [
    "framepack.vae",
    "framepack.text_encoder",
    "framepack.tokenizer",
    "framepack.text_encoder_2",
    "framepack.tokenizer_2",
    "framepack.image_encoder",
    "framepack.feature_extractor",
]


def required_roles(task: str, params: Mapping | None = None, preset: str = "default") -> list[str]:
    """Roles ``task`` loads with ``params`` (missing keys take the task's defaults) under the
    registry ``preset``; ``KeyError`` names the known tasks, ``ValueError`` a bad mode."""
    params = dict(params or {})
    if task not in _RULES:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(_RULES)}")
    return _RULES[task](params, preset)


def task_names() -> list[str]:
    """Tasks this module knows, in the order of ``poe_backend.tasks.TASK_CLASSES``."""
    return list(_RULES)


def _choice(params: dict, name: str, default: str, choices: Mapping | tuple) -> str:
    value = params.get(name, default)
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")
    return value


def _toy2d(params: dict, preset: str) -> list[str]:
    return []  # analytic Gaussian-mixture experts: no weights


def _insertion(params: dict, preset: str) -> list[str]:
    return FLUX_SHARED + INSERTION_TRANSFORMERS[_choice(params, "method", "product", INSERTION_TRANSFORMERS)]


def _regional_t2i(params: dict, preset: str) -> list[str]:
    """The global and region experts are all FLUX.1 [dev]. Qwen2.5-VL is needed for the
    VQAScore reward (``vqascore``, on by default) or the layout parser (``layout_parser``;
    it runs only when the bundle has no boxes, which parameters cannot tell, so it counts)."""
    method = _choice(params, "method", "regional", ("regional", "flux"))
    uses_qwen = method == "regional" and (params.get("vqascore", True) or params.get("layout_parser", False))
    return FLUX_SHARED + ["flux.transformer.dev"] + (VQA if uses_qwen else [])


def sim2video_pairing(pairing: str, preset: str) -> str:
    """``pairing="auto"`` is ``shared_vace`` under the ``preview`` preset (no 1.3B I2V
    exists, so VACE serves both experts) and ``i2v_vace`` otherwise."""
    if pairing == "auto":
        return "shared_vace" if preset == "preview" else "i2v_vace"
    return pairing


def sim2video_transformers(mode: str, pairing: str) -> list[str]:
    """The Wan transformers (``"vace"``, ``"i2v"``) a sim2video mode loads with a resolved
    pairing: VACE for a depth control (``product``, ``depth``, ``vace_combined``) and, when
    shared, for the first-frame expert; the I2V model for the first-frame expert
    (``product``, ``i2v``, ``ddim_inversion``) when paired with it."""
    first_frame_expert = mode in ("product", "i2v", "ddim_inversion")
    vace = mode in ("product", "depth", "vace_combined") or (pairing == "shared_vace" and first_frame_expert)
    return (["vace"] if vace else []) + (["i2v"] if pairing == "i2v_vace" and first_frame_expert else [])


def _sim2video(params: dict, preset: str) -> list[str]:
    mode = _choice(params, "mode", "product", SIM2VIDEO_MODES)
    pairing = sim2video_pairing(_choice(params, "pairing", "auto", ("auto", "i2v_vace", "shared_vace")), preset)
    kinds = sim2video_transformers(mode, pairing)
    return WAN_SHARED + (["wan.transformer.vace"] if "vace" in kinds else []) + (WAN_I2V if "i2v" in kinds else [])


def _sim2video_ar(params: dict, preset: str) -> list[str]:
    return [FRAMEPACK_TRANSFORMERS[_choice(params, "sampling_type", "inverted", FRAMEPACK_TRANSFORMERS)]] + FRAMEPACK_SHARED


_RULES = {
    "toy2d": _toy2d,
    "insertion": _insertion,
    "regional_t2i": _regional_t2i,
    "sim2video": _sim2video,
    "sim2video_ar": _sim2video_ar,
}
