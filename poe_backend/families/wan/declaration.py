"""The Wan2.1 family's declaration (torch-free; imported by :mod:`poe_backend.models.specs`).

Every Wan2.1 repo ships the same VAE and UMT5-XXL, so the shared roles (``wan.vae``,
``wan.text_encoder``, ``wan.tokenizer``) come from the VACE repo of the preset and are
loaded once for both experts. There is no Wan2.1 I2V at 1.3B: the ``preview`` preset runs
both sim-to-video experts on VACE-1.3B (shared mode, see :mod:`poe_backend.families.wan.experts`).
Wan2.1-Fun Control (``alibaba-pai/Wan2.1-Fun-14B-Control``) has no diffusers class and is
not registered (see :data:`poe_backend.families.wan.experts.UNSUPPORTED_MODELS`).

Inputs as the checkpoints were trained: Wan2.1 generates 16 fps video (Wan-Video/Wan2.1
``wan/configs/shared_config.py``: ``sample_fps = 16``, ``frame_num = 81``, i.e. 5 s;
diffusers' Wan I2V and VACE examples export at ``fps=16``), so :data:`NATIVE_FPS` is what
the video tasks sample the simulation at; :data:`NEGATIVE_PROMPT` is the negative prompt
those examples pass.
"""

from __future__ import annotations

from poe_backend.models.specs import Components, FamilyFacts, hub_specs, register_family, tiny_specs

I2V_480P = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
I2V_720P = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"
VACE_14B = "Wan-AI/Wan2.1-VACE-14B-diffusers"
VACE_1_3B = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"

#: Frames per second Wan2.1 was trained at (and its 81-frame clips last 5 s at).
NATIVE_FPS = 16.0
#: The negative prompt of diffusers' Wan examples, the same text for ``WanImageToVideoPipeline``
#: and ``WanVACEPipeline`` (``EXAMPLE_DOC_STRING`` of ``diffusers/pipelines/wan/pipeline_wan_i2v.py``
#: and ``pipeline_wan_vace.py``, diffusers 0.42; ``docs/source/en/api/pipelines/wan.md``): the
#: English of the Wan2.1 repository's default ``sample_neg_prompt`` (``shared_config.py``).
NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall gray, worst quality, "
    "low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people in the background, walking backwards"
)

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


#: What every sim2video mode loads: the VAE, UMT5-XXL and its tokenizer.
SHARED = ["wan.vae", "wan.tokenizer", "wan.text_encoder"]
#: The I2V-14B transformer with its CLIP ViT-H image encoder (first-frame conditioning).
I2V = ["wan.transformer.i2v", "wan.image_encoder", "wan.image_processor"]
#: Transformer kind -> role.
TRANSFORMER_ROLES = {"vace": "wan.transformer.vace", "i2v": "wan.transformer.i2v"}

_14B = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
_1_3B = {**_14B, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}
_BF16, _FP32 = 2, 4  # transformers and UMT5 stored bf16, the VAE fp32 (assumed)
_REPOS = (VACE_14B, VACE_1_3B, I2V_480P, I2V_720P)

register_family(
    "wan",
    {
        "default": hub_specs(_DEFAULT),
        "preview": hub_specs(_PREVIEW),
        "tiny": tiny_specs("wan", _DEFAULT, "poe_backend.families.wan.tiny:build_tiny_wan"),
    },
    FamilyFacts(
        native_fps=NATIVE_FPS,
        shared_repos=frozenset(_REPOS),
        estimated_bytes={
            (VACE_14B, "transformer", True): int(17.3e9 * _BF16),  # 14B + 8 VACE blocks
            (VACE_1_3B, "transformer", True): int(2.0e9 * _BF16),  # 1.3B + 15 VACE blocks
            (I2V_480P, "transformer", True): int(16.4e9 * _BF16),
            (I2V_720P, "transformer", True): int(16.4e9 * _BF16),
            **{(repo, "vae", True): int(127e6 * _FP32) for repo in _REPOS},
            **{(repo, "text_encoder", True): int(5.68e9 * _BF16) for repo in _REPOS},
            **{(repo, "tokenizer", False): 21_000_000 for repo in _REPOS},
            **{(repo, "image_encoder", True): int(632e6 * _BF16) for repo in (I2V_480P, I2V_720P)},
            **{(repo, "image_processor", False): 1_000 for repo in (I2V_480P, I2V_720P)},
        },
        full_configs={
            "wan.transformer.vace": ("diffusers:WanVACETransformer3DModel", {**_14B, "vace_layers": list(range(0, 40, 5)), "vace_in_channels": 96}),
            "wan.transformer.i2v": ("diffusers:WanTransformer3DModel", {**_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}),
            # the preview's VACE-1.3B has its own name here (its role is wan.transformer.vace under the preview preset)
            "wan.transformer.vace.preview": ("diffusers:WanVACETransformer3DModel", {**_1_3B, "vace_layers": list(range(0, 30, 2)), "vace_in_channels": 96}),
        },
    ),
)
