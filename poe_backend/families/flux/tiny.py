"""Tiny random FLUX family for the ``tiny`` preset and tests.

Same classes and the same channel layout as the real models (16 latent channels, 8x VAE
downsampling, packed 64 / Depth 128 / Fill 384 input channels), but one transformer layer of
each kind, hidden sizes 16-32, a 4-level VAE of width 8, and tokenizers built offline from a
handmade character vocabulary (CLIP BPE without merges; T5 unigram). Sizes follow diffusers'
``tests/pipelines/flux/test_pipeline_flux_control.py::get_dummy_components``.
Every component is written with ``save_pretrained`` and later read back by the model cache with
``from_pretrained``: the real loading path.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-"
TEXT_HIDDEN = 32
TINY_SEED = 0


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in CHARACTERS:
        vocab[character] = len(vocab)
        vocab[character + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in CHARACTERS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def transformer(in_channels: int):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )


def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(CHARACTERS) * 2 + 2,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            max_position_embeddings=77,
            projection_dim=TEXT_HIDDEN,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(CHARACTERS) + 4, d_model=TEXT_HIDDEN, d_kv=8, d_ff=37, num_layers=1, num_heads=4, relative_attention_num_buckets=8)
    )
    return clip, t5


def build_tiny(directory: Path) -> None:
    """Write every tiny FLUX component under ``directory/<subfolder>`` (subfolders as in
    the flux declaration: vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
    transformer_dev, transformer_depth, transformer_fill). Seeded: the same bytes every time."""
    torch.manual_seed(TINY_SEED)
    clip, t5 = text_encoders()
    components = {
        "vae": vae(),
        "text_encoder": clip,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": t5,
        "tokenizer_2": t5_tokenizer(),
        "transformer_dev": transformer(64),
        "transformer_depth": transformer(128),
        "transformer_fill": transformer(384),
    }
    for name, component in components.items():
        component.save_pretrained(directory / name)
