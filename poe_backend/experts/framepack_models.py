"""FramePack family roles for the model registry (torch-free; imported by the registry).

FramePack's transformer comes from lllyasviel's repos (weights and config at the repo
root, so no subfolder): ``FramePackI2V_HY`` (inverted anti-drifting sampling) and
``FramePack_F1_I2V_HY_20250503`` (forward, "vanilla"). VAE, Llama text encoder and CLIP-L
come from ``hunyuanvideo-community/HunyuanVideo``; the SigLIP image encoder from
``lllyasviel/flux_redux_bfl`` (MODELS.md "FramePack").
"""

from __future__ import annotations

from poe_backend.experts.specs import Components, hub_specs, register_family, tiny_specs

INVERTED = "lllyasviel/FramePackI2V_HY"
F1 = "lllyasviel/FramePack_F1_I2V_HY_20250503"
HUNYUAN = "hunyuanvideo-community/HunyuanVideo"
REDUX = "lllyasviel/flux_redux_bfl"

#: role -> (loader, repo, subfolder, is_module)
_COMPONENTS: Components = {
    "framepack.transformer": ("diffusers:HunyuanVideoFramepackTransformer3DModel", INVERTED, None, True),
    "framepack.transformer.f1": ("diffusers:HunyuanVideoFramepackTransformer3DModel", F1, None, True),
    "framepack.vae": ("diffusers:AutoencoderKLHunyuanVideo", HUNYUAN, "vae", True),
    "framepack.text_encoder": ("transformers:LlamaModel", HUNYUAN, "text_encoder", True),
    "framepack.tokenizer": ("transformers:AutoTokenizer", HUNYUAN, "tokenizer", False),
    "framepack.text_encoder_2": ("transformers:CLIPTextModel", HUNYUAN, "text_encoder_2", True),
    "framepack.tokenizer_2": ("transformers:AutoTokenizer", HUNYUAN, "tokenizer_2", False),
    "framepack.image_encoder": ("transformers:SiglipVisionModel", REDUX, "image_encoder", True),
    "framepack.feature_extractor": ("transformers:SiglipImageProcessor", REDUX, "feature_extractor", False),
}

register_family(
    "framepack",
    {"default": hub_specs(_COMPONENTS), "tiny": tiny_specs("framepack", _COMPONENTS, "poe_backend.experts.framepack_tiny:build_tiny_framepack")},
)
