"""FramePack's tiny preset: diffusers' own FramePack test configs (4 latent channels,
seeded random weights) for every role, tokenizers built in code; the tiny preset's specs
name this module, production code never imports it."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_framepack(directory: Path, seed: int = 0) -> None:
    """The tiny preset's builder: diffusers' FramePack test configs (seeded random
    weights) for every role, tokenizers built in code."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from poe_backend.families.wan.tiny import character_tokenizer

    directory = Path(directory)
    torch.manual_seed(seed)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4), image_condition_type=None, has_image_proj=True, image_proj_dim=32, has_clean_x_embedder=True,
    )
    transformer.save_pretrained(directory / "transformer")
    transformer.save_pretrained(directory / "transformer_f1")
    blocks = ("HunyuanVideoDownBlock3D",) * 4
    AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=blocks, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4, scaling_factor=0.476986,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    ).save_pretrained(directory / "vae")
    LlamaModel(LlamaConfig(
        hidden_size=16, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )).save_pretrained(directory / "text_encoder")
    character_tokenizer(256).save_pretrained(directory / "tokenizer")
    CLIPTextModel(CLIPTextConfig(
        hidden_size=8, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, projection_dim=32,
    )).save_pretrained(directory / "text_encoder_2")
    character_tokenizer(77).save_pretrained(directory / "tokenizer_2")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=16)).save_pretrained(directory / "image_encoder")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory / "feature_extractor")
