"""The Wan family's tiny preset: every class at minimal size with seeded random weights
(1-layer transformers, 3-channel-base VAE, 1-layer UMT5 with a character-level tokenizer
built in code, 2-layer CLIP vision), written with ``save_pretrained`` so that tests load
them through :class:`poe_backend.families.wan.runtime.WanRuntime` (the model cache), the path
real weights take. Only the tiny preset's specs name this module; production code never
imports it."""

from __future__ import annotations

from pathlib import Path

import torch

from poe_backend.families.wan.experts import LATENT_CHANNELS

def character_tokenizer(model_max_length: int = 512):
    """A character-level fast tokenizer built in code (no download): BPE with no merges over
    printable ASCII, with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2."""
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for character in string.ascii_letters + string.digits + string.punctuation:
        vocabulary.setdefault(character, len(vocabulary))
    tokenizer = Tokenizer(models.BPE(vocabulary, [], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length
    )


TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 8


def _tiny_transformer_config() -> dict:
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, out_channels=LATENT_CHANNELS,
        text_dim=TINY_TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=128,
    )


def build_tiny_wan(directory: Path, seed: int = 0) -> None:
    """Write every tiny Wan component (seeded random weights) under ``directory/<role
    subfolder>``: the tiny preset's builder for the ``wan`` family."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    directory = Path(directory)
    torch.manual_seed(seed)
    AutoencoderKLWan(base_dim=3, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).save_pretrained(directory / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=128, d_model=TINY_TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8)).save_pretrained(directory / "text_encoder")
    character_tokenizer().save_pretrained(directory / "tokenizer")
    WanVACETransformer3DModel(in_channels=LATENT_CHANNELS, vace_layers=[0], vace_in_channels=96, **_tiny_transformer_config()).save_pretrained(directory / "transformer_vace")
    WanTransformer3DModel(in_channels=LATENT_CHANNELS * 2 + 4, image_dim=TINY_IMAGE_DIM, added_kv_proj_dim=16, **_tiny_transformer_config()).save_pretrained(directory / "transformer_i2v")
    vision = CLIPVisionConfig(hidden_size=TINY_IMAGE_DIM, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=32, intermediate_size=16, patch_size=16)
    CLIPVisionModel(vision).save_pretrained(directory / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory / "image_processor")
