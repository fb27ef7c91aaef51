"""The FramePack family's declaration (torch-free; imported by :mod:`poe_backend.models.specs`).

FramePack's transformer comes from lllyasviel's repos (weights and config at the repo
root, so no subfolder): ``FramePackI2V_HY`` (inverted anti-drifting sampling) and
``FramePack_F1_I2V_HY_20250503`` (forward, "vanilla"). VAE, Llama text encoder and CLIP-L
come from ``hunyuanvideo-community/HunyuanVideo``; the SigLIP image encoder from
``lllyasviel/flux_redux_bfl`` (MODELS.md "FramePack").

FramePack generates 30 fps video (lllyasviel/FramePack's demo writes its MP4s at 30 fps and
diffusers' ``HunyuanVideoFramepackPipeline`` examples export at ``fps=30``): :data:`NATIVE_FPS`
is what ``sim2video_ar`` samples the simulation at.
"""

from __future__ import annotations

from poe_backend.models.specs import Components, FamilyFacts, hub_specs, register_family, tiny_specs

INVERTED = "lllyasviel/FramePackI2V_HY"
F1 = "lllyasviel/FramePack_F1_I2V_HY_20250503"
HUNYUAN = "hunyuanvideo-community/HunyuanVideo"
REDUX = "lllyasviel/flux_redux_bfl"

#: Frames per second FramePack was trained at.
NATIVE_FPS = 30.0

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

#: Text encoders with their tokenizers, in the order the pipeline takes them.
TEXT_ROLES = ("framepack.text_encoder", "framepack.tokenizer", "framepack.text_encoder_2", "framepack.tokenizer_2")
#: What every FramePack run loads besides the transformer (HunyuanVideo VAE, Llama, CLIP-L,
#: SigLIP); the render-Gaussian expert uses the same VAE.
SHARED = ["framepack.vae", *TEXT_ROLES, "framepack.image_encoder", "framepack.feature_extractor"]
#: ``sampling_type`` -> transformer role (inverted anti-drifting or F1 "vanilla").
TRANSFORMER_ROLES = {"inverted": "framepack.transformer", "vanilla": "framepack.transformer.f1"}

_BF16, _FP32 = 2, 4  # transformers and encoders stored bf16, the VAE fp32 (assumed)

register_family(
    "framepack",
    {"default": hub_specs(_COMPONENTS), "tiny": tiny_specs("framepack", _COMPONENTS, "poe_backend.families.framepack.tiny:build_tiny_framepack")},
    FamilyFacts(
        native_fps=NATIVE_FPS,
        estimated_bytes={
            (INVERTED, None, True): int(12.9e9 * _BF16),
            (F1, None, True): int(12.9e9 * _BF16),
            (HUNYUAN, "vae", True): int(246e6 * _FP32),
            (HUNYUAN, "text_encoder", True): int(7.5e9 * _BF16),
            (HUNYUAN, "text_encoder_2", True): int(123e6 * _BF16),
            (HUNYUAN, "tokenizer", False): 9_100_000,
            (HUNYUAN, "tokenizer_2", False): 2_200_000,
            (REDUX, "image_encoder", True): int(428e6 * _BF16),
            (REDUX, "feature_extractor", False): 1_000,
        },
        full_configs={
            # only what differs from the class defaults (the planner reads the rest from the class)
            "framepack.transformer": ("diffusers:HunyuanVideoFramepackTransformer3DModel", dict(
                in_channels=16, out_channels=16, has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True,
                image_condition_type=None, guidance_embeds=True,
            )),
        },
    ),
)
