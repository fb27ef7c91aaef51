"""Tiny random Qwen2.5-VL for the ``tiny`` preset: the config sizes of transformers'
``tests/models/qwen2_5_vl/test_modeling_qwen2_5_vl.py`` (text hidden 32, 4 layers; vision
depth 2, hidden 32, patch 14, merge 2), a byte-level BPE tokenizer built offline from the 256
byte symbols plus merges for "Yes"/"No" and Qwen's special tokens, and the Qwen2-VL image
processor with a small pixel budget. Saved with ``save_pretrained`` for the model cache."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
MERGES = [("Y", "e"), ("Ye", "s"), ("N", "o")]
TINY_SEED = 0


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable unicode table (what byte-level BPE vocabularies use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tokenizer():
    from transformers import Qwen2Tokenizer

    vocab = {symbol: index for index, symbol in enumerate(byte_symbols())}
    for left, right in MERGES:
        vocab[left + right] = len(vocab)
    built = Qwen2Tokenizer(vocab=vocab, merges=list(MERGES), unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    built.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return built


def image_processor():
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)


def model(token_ids: dict[str, int], vocab_size: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
            rope_theta=10000.0,
            tie_word_embeddings=True,
            bos_token_id=token_ids["<|endoftext|>"],
            eos_token_id=token_ids["<|im_end|>"],
            pad_token_id=token_ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1], in_channels=3,
        ),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def build_tiny(directory: Path) -> None:
    """Write ``model``, ``image_processor`` and ``tokenizer`` under ``directory``."""
    torch.manual_seed(TINY_SEED)
    text_tokenizer = tokenizer()
    token_ids = dict(zip(SPECIAL_TOKENS, text_tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)))
    model(token_ids, len(text_tokenizer)).save_pretrained(directory / "model")
    image_processor().save_pretrained(directory / "image_processor")
    text_tokenizer.save_pretrained(directory / "tokenizer")
