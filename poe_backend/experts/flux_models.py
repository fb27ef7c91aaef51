"""FLUX family roles for the model registry (torch-free; imported by the registry).

FLUX.1 Depth [dev] and Fill [dev] share FLUX.1 [dev]'s VAE, CLIP-L and T5-XXL (the same
weights ship in all three repos), so only the transformers come from their own repos.
Revisions are left at ``main``; pin one with a JSON preset (see the registry docstring).
"""

from __future__ import annotations

from poe_backend.experts.specs import Components, hub_specs, register_family, tiny_specs

DEV = "black-forest-labs/FLUX.1-dev"
DEPTH = "black-forest-labs/FLUX.1-Depth-dev"
FILL = "black-forest-labs/FLUX.1-Fill-dev"

#: role -> (loader, repo, subfolder, is_module)
_COMPONENTS: Components = {
    "flux.vae": ("diffusers:AutoencoderKL", DEV, "vae", True),
    "flux.text_encoder": ("transformers:CLIPTextModel", DEV, "text_encoder", True),
    "flux.tokenizer": ("transformers:CLIPTokenizer", DEV, "tokenizer", False),
    "flux.text_encoder_2": ("transformers:T5EncoderModel", DEV, "text_encoder_2", True),
    "flux.tokenizer_2": ("transformers:T5TokenizerFast", DEV, "tokenizer_2", False),
    "flux.transformer.dev": ("diffusers:FluxTransformer2DModel", DEV, "transformer", True),
    "flux.transformer.depth": ("diffusers:FluxTransformer2DModel", DEPTH, "transformer", True),
    "flux.transformer.fill": ("diffusers:FluxTransformer2DModel", FILL, "transformer", True),
}


register_family(
    "flux",
    {"default": hub_specs(_COMPONENTS), "tiny": tiny_specs("flux", _COMPONENTS, "poe_backend.experts.flux_tiny:build_tiny")},
)
