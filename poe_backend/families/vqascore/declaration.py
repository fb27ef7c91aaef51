"""VQAScore's declaration (torch-free; imported by :mod:`poe_backend.models.specs`):
Qwen2.5-VL through plain transformers. ``preview`` uses the 3B model, ``default`` the 7B one.

The image processor and tokenizer are separate roles (``AutoImageProcessor``,
``AutoTokenizer`` from the same repo) rather than one ``AutoProcessor``: the Qwen2.5-VL
processor also builds a video processor that needs torchvision, which VQAScore does not use
and this project does not depend on. :mod:`poe_backend.families.vqascore.scorer` expands the image
placeholder tokens itself (the processor's three-line ``replace_image_token``).
"""

from __future__ import annotations

from poe_backend.models.specs import FamilyFacts, ModelSpec, register_family, tiny_dir

QWEN_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
QWEN_3B = "Qwen/Qwen2.5-VL-3B-Instruct"
_MODEL = "transformers:Qwen2_5_VLForConditionalGeneration"
_IMAGE_PROCESSOR = "transformers:AutoImageProcessor"
_TOKENIZER = "transformers:AutoTokenizer"
_BUILDER = "poe_backend.families.vqascore.tiny:build_tiny"


def _hub(repo: str) -> dict[str, ModelSpec]:
    return {
        "vqa.model": ModelSpec(_MODEL, repo_id=repo),
        "vqa.image_processor": ModelSpec(_IMAGE_PROCESSOR, repo_id=repo, is_module=False),
        "vqa.tokenizer": ModelSpec(_TOKENIZER, repo_id=repo, is_module=False),
    }


#: The roles one VQAScore model uses (the reward and the layout parser).
ROLES = ("vqa.model", "vqa.image_processor", "vqa.tokenizer")

_TEXT_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False,
)
_VISION_7B = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2, in_channels=3, hidden_act="silu",
)
_BF16 = 2

register_family(
    "vqa",
    {
        "default": _hub(QWEN_7B),
        "preview": _hub(QWEN_3B),
        "tiny": {
            "vqa.model": ModelSpec(_MODEL, local_dir=tiny_dir("vqa"), subfolder="model", builder=_BUILDER),
            "vqa.image_processor": ModelSpec(_IMAGE_PROCESSOR, local_dir=tiny_dir("vqa"), subfolder="image_processor", builder=_BUILDER, is_module=False),
            "vqa.tokenizer": ModelSpec(_TOKENIZER, local_dir=tiny_dir("vqa"), subfolder="tokenizer", builder=_BUILDER, is_module=False),
        },
    },
    FamilyFacts(
        estimated_bytes={
            (QWEN_7B, None, True): int(8.29e9 * _BF16),
            (QWEN_3B, None, True): int(3.75e9 * _BF16),
            (QWEN_7B, None, False): 12_000_000,
            (QWEN_3B, None, False): 12_000_000,
        },
        full_configs={"vqa.model": (_MODEL, dict(text_config=_TEXT_7B, vision_config=_VISION_7B))},
    ),
)
