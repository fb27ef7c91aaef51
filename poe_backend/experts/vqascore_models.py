"""VQAScore roles for the model registry (torch-free): Qwen2.5-VL through plain
transformers. ``preview`` uses the 3B model, ``default`` the 7B one.

The image processor and tokenizer are separate roles (``AutoImageProcessor``,
``AutoTokenizer`` from the same repo) rather than one ``AutoProcessor``: the Qwen2.5-VL
processor also builds a video processor that needs torchvision, which VQAScore does not use
and this project does not depend on. :mod:`poe_backend.experts.vqascore` expands the image
placeholder tokens itself (the processor's three-line ``replace_image_token``).
"""

from __future__ import annotations

from poe_backend.experts.specs import ModelSpec, register_family, tiny_dir

QWEN_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
QWEN_3B = "Qwen/Qwen2.5-VL-3B-Instruct"
_MODEL = "transformers:Qwen2_5_VLForConditionalGeneration"
_IMAGE_PROCESSOR = "transformers:AutoImageProcessor"
_TOKENIZER = "transformers:AutoTokenizer"
_BUILDER = "poe_backend.experts.vqascore_tiny:build_tiny"


def _hub(repo: str) -> dict[str, ModelSpec]:
    return {
        "vqa.model": ModelSpec(_MODEL, repo_id=repo),
        "vqa.image_processor": ModelSpec(_IMAGE_PROCESSOR, repo_id=repo, is_module=False),
        "vqa.tokenizer": ModelSpec(_TOKENIZER, repo_id=repo, is_module=False),
    }


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
)
