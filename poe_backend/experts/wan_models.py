"""Wan2.1 family roles for the model registry (torch-free; imported by the registry).

Every Wan2.1 repo ships the same VAE and UMT5-XXL, so the shared roles (``wan.vae``,
``wan.text_encoder``, ``wan.tokenizer``) come from the VACE repo of the preset and are
loaded once for both experts. There is no Wan2.1 I2V at 1.3B: the ``preview`` preset runs
both sim-to-video experts on VACE-1.3B (shared mode, see :mod:`poe_backend.experts.wan`).
Wan2.1-Fun Control (``alibaba-pai/Wan2.1-Fun-14B-Control``) has no diffusers class and is
not registered (see :data:`poe_backend.experts.wan.UNSUPPORTED_MODELS`).
"""

from __future__ import annotations

from poe_backend.experts.specs import Components, hub_specs, register_family, tiny_specs

I2V_480P = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
I2V_720P = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"
VACE_14B = "Wan-AI/Wan2.1-VACE-14B-diffusers"
VACE_1_3B = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"

#: role -> (loader, repo, subfolder, is_module)
_DEFAULT: Components = {
    "wan.vae": ("diffusers:AutoencoderKLWan", VACE_14B, "vae", True),
    "wan.text_encoder": ("transformers:UMT5EncoderModel", VACE_14B, "text_encoder", True),
    "wan.tokenizer": ("transformers:AutoTokenizer", VACE_14B, "tokenizer", False),
    "wan.transformer.vace": ("diffusers:WanVACETransformer3DModel", VACE_14B, "transformer", True),
    "wan.transformer.i2v": ("diffusers:WanTransformer3DModel", I2V_480P, "transformer", True),
    "wan.image_encoder": ("transformers:CLIPVisionModel", I2V_480P, "image_encoder", True),
    "wan.image_processor": ("transformers:CLIPImageProcessor", I2V_480P, "image_processor", False),
}
_PREVIEW = {role: (loader, VACE_1_3B, subfolder, is_module) for role, (loader, repo, subfolder, is_module) in _DEFAULT.items() if repo == VACE_14B}


register_family(
    "wan",
    {
        "default": hub_specs(_DEFAULT),
        "preview": hub_specs(_PREVIEW),
        "tiny": tiny_specs("wan", _DEFAULT, "poe_backend.experts.wan_tiny:build_tiny_wan"),
    },
)
