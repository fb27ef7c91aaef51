"""The FLUX family's declaration (torch-free; imported by :mod:`poe_backend.models.specs`).

FLUX.1 Depth [dev] and Fill [dev] share FLUX.1 [dev]'s VAE, CLIP-L and T5-XXL (the same
weights ship in all three repos), so only the transformers come from their own repos.
Revisions are left at ``main``; pin one with a JSON preset (see the :mod:`poe_backend.models.specs` docstring).
"""

from __future__ import annotations

from poe_backend.models.specs import Components, FamilyFacts, hub_specs, register_family, tiny_specs

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


#: Text encoders with their tokenizers, in the order ``FluxPipeline`` takes them.
TEXT_ROLES = ("flux.text_encoder", "flux.tokenizer", "flux.text_encoder_2", "flux.tokenizer_2")
#: What every FLUX job loads: FLUX.1 [dev]'s VAE, CLIP-L and T5-XXL with their tokenizers.
SHARED = ["flux.vae", *TEXT_ROLES]
#: Transformer kind -> role.
TRANSFORMER_ROLES = {"dev": "flux.transformer.dev", "depth": "flux.transformer.depth", "fill": "flux.transformer.fill"}

_TRANSFORMER = dict(
    patch_size=1, in_channels=64, out_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
_BF16 = 2  # bytes per bf16 value: FLUX stores bf16
_REPOS = (DEV, DEPTH, FILL)

register_family(
    "flux",
    {"default": hub_specs(_COMPONENTS), "tiny": tiny_specs("flux", _COMPONENTS, "poe_backend.families.flux.tiny:build_tiny")},
    FamilyFacts(
        shared_repos=frozenset(_REPOS),
        gated_repos=frozenset(_REPOS),
        estimated_bytes={
            **{(repo, "transformer", True): int(11.9e9 * _BF16) for repo in _REPOS},
            **{(repo, sub, True): int(count * _BF16) for repo in _REPOS for sub, count in (("vae", 83.8e6), ("text_encoder", 123e6), ("text_encoder_2", 4.76e9))},
            **{(repo, sub, False): size for repo in _REPOS for sub, size in (("tokenizer", 2_200_000), ("tokenizer_2", 3_200_000))},
        },
        full_configs={
            "flux.transformer.dev": ("diffusers:FluxTransformer2DModel", _TRANSFORMER),
            "flux.transformer.depth": ("diffusers:FluxTransformer2DModel", {**_TRANSFORMER, "in_channels": 128}),
            "flux.transformer.fill": ("diffusers:FluxTransformer2DModel", {**_TRANSFORMER, "in_channels": 384}),
        },
    ),
)
