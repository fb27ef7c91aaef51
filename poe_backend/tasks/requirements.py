"""Which model roles a task loads, for given parameters and preset (torch-free).

The weights manager (``poe-backend models``) asks this module what to check or download
before a job runs, so it must not import the tasks (they import torch and diffusers). The
role groups come from the families' declarations (``poe_backend/families/<family>/declaration.py``);
each rule below mirrors what the task's ``run`` passes to ``lookup.check_available`` and
says why; parameters not given take the tasks' defaults (``method="product"`` etc.).
"""

from __future__ import annotations

from typing import Mapping

from poe_backend.families.flux import declaration as flux
from poe_backend.families.framepack import declaration as framepack
from poe_backend.families.vqascore import declaration as vqascore
from poe_backend.families.wan import declaration as wan

#: insertion ``method`` -> transformer kinds: the product multiplies Depth and Fill; the single
#: expert baselines load one; RF-Solver inverts and edits with FLUX.1 [dev].
INSERTION_TRANSFORMERS = {"product": ["depth", "fill"], "depth": ["depth"], "fill": ["fill"], "rf_solver": ["dev"]}
SIM2VIDEO_MODES = ("product", "i2v", "depth", "vace_combined", "ddim_inversion")


def required_roles(task: str, params: Mapping | None = None, preset: str = "default") -> list[str]:
    """Roles ``task`` loads with ``params`` (missing keys take the task's defaults) under the
    model ``preset``; ``KeyError`` names the known tasks, ``ValueError`` a bad mode."""
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
    kinds = INSERTION_TRANSFORMERS[_choice(params, "method", "product", INSERTION_TRANSFORMERS)]
    return flux.SHARED + [flux.TRANSFORMER_ROLES[kind] for kind in kinds]


def _regional_t2i(params: dict, preset: str) -> list[str]:
    """The global and region experts are all FLUX.1 [dev]. Qwen2.5-VL is needed for the
    VQAScore reward (``vqascore``, on by default) or the layout parser (``layout_parser``;
    it runs only when the bundle has no boxes, which parameters cannot tell, so it counts)."""
    method = _choice(params, "method", "regional", ("regional", "flux"))
    uses_qwen = method == "regional" and (params.get("vqascore", True) or params.get("layout_parser", False))
    return flux.SHARED + [flux.TRANSFORMER_ROLES["dev"]] + (list(vqascore.ROLES) if uses_qwen else [])


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
    return wan.SHARED + ([wan.TRANSFORMER_ROLES["vace"]] if "vace" in kinds else []) + (wan.I2V if "i2v" in kinds else [])


def _sim2video_ar(params: dict, preset: str) -> list[str]:
    return [framepack.TRANSFORMER_ROLES[_choice(params, "sampling_type", "inverted", framepack.TRANSFORMER_ROLES)]] + framepack.SHARED


_RULES = {
    "toy2d": _toy2d,
    "insertion": _insertion,
    "regional_t2i": _regional_t2i,
    "sim2video": _sim2video,
    "sim2video_ar": _sim2video_ar,
}
