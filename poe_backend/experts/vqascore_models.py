"""VQAScore roles for the model registry (torch-free): Qwen2.5-VL through plain
transformers. ``preview`` uses the 3B model, ``default`` the 7B one."""

from __future__ import annotations

from poe_backend.experts.registry import ModelSpec, register_family, tiny_dir

QWEN_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
QWEN_3B = "Qwen/Qwen2.5-VL-3B-Instruct"
_MODEL = "transformers:Qwen2_5_VLForConditionalGeneration"
_PROCESSOR = "transformers:AutoProcessor"
_BUILDER = "poe_backend.experts.vqascore_tiny:build_tiny"

register_family(
    "vqa",
    {
        "default": {
            "vqa.model": ModelSpec(_MODEL, repo_id=QWEN_7B),
            "vqa.processor": ModelSpec(_PROCESSOR, repo_id=QWEN_7B, is_module=False),
        },
        "preview": {
            "vqa.model": ModelSpec(_MODEL, repo_id=QWEN_3B),
            "vqa.processor": ModelSpec(_PROCESSOR, repo_id=QWEN_3B, is_module=False),
        },
        "tiny": {
            "vqa.model": ModelSpec(_MODEL, local_dir=tiny_dir("vqa"), subfolder="model", builder=_BUILDER),
            "vqa.processor": ModelSpec(_PROCESSOR, local_dir=tiny_dir("vqa"), subfolder="processor", builder=_BUILDER, is_module=False),
        },
    },
)
