"""VQAScore (Lin et al. 2024) as a discriminative expert, from Qwen2.5-VL via transformers.

Score = ``P("Yes" | image, 'Does this figure show "{prompt}"? Please answer Yes or No.')``
from the last-position logits of one forward pass (linzhiqiu/t2v_metrics, v3.1 template;
``logits_to_keep=1``: the LM head runs on the last position only, not on all ~300 positions
times a 152k vocabulary),
with Qwen's default chat framing (system "You are a helpful assistant.", the image first in
the user turn, then the assistant header) -- exactly what ``apply_chat_template`` writes.

Built from separate image-processor and tokenizer roles (see the vqascore declaration): the image
placeholder is expanded here to ``grid_t·grid_h·grid_w / merge²`` ``<|image_pad|>`` tokens, as
the Qwen2.5-VL processor does. Images are first shrunk to at most ``max_pixels`` pixels
(default 448², 256 visual tokens) to bound the cost per particle.

As a reward on the sampler's particles (:class:`VQAScoreReward`) it scores the decoded clean
predictions ``x0_hat``; at level ``t`` the twist is the tempered ``(1 - t)·strength·log P(yes)``
(exact ``strength·log P(yes)`` at t = 0, flat at t = 1 where ``x0_hat`` is meaningless). The
tempering keeps early resampling from trusting blurry predictions.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as functional
from torch import Tensor

from poe_backend.runtime.cache import MODEL_CACHE, default_dtype
from poe_backend.sampling import Reward
from poe_backend.sampling.run import checkpoint

QUESTION = 'Does this figure show "{prompt}"? Please answer Yes or No.'
CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
IMAGE_TOKEN = "<|image_pad|>"
ANSWER = "Yes"


class VQAScorer:
    """Qwen2.5-VL answering the VQAScore question; loaded through the model cache
    (``vqa.model``, ``vqa.image_processor``, ``vqa.tokenizer``)."""

    def __init__(self, preset: str = "default", *, device: str = "cpu", dtype: torch.dtype | None = None, max_pixels: int = 448 * 448, max_batch: int = 4, components: tuple | None = None) -> None:
        """``components`` = ``(model, image_processor, tokenizer)`` injects instances
        (benchmarks with random full-size weights); otherwise they come from the model cache."""
        self.device, self.max_pixels, self.max_batch = device, max_pixels, max_batch
        self.dtype = default_dtype(device) if dtype is None else dtype
        if components is None:
            components = (MODEL_CACHE.load("vqa.model", preset, device=device, dtype=self.dtype), MODEL_CACHE.load("vqa.image_processor", preset), MODEL_CACHE.load("vqa.tokenizer", preset))
        self.model, self.image_processor, self.tokenizer = components
        self.answer_id = self._answer_token_id()
        self.calls = 0

    def _answer_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(ANSWER)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            token_id = self.tokenizer.encode(ANSWER, add_special_tokens=False)[0]
        return int(token_id)

    @torch.inference_mode()
    def log_prob_yes(self, images: Tensor, prompt: str) -> Tensor:
        """``log P("Yes")`` for images ``(B, 3, H, W)`` in [0, 1]; returns ``(B,)`` float32 on
        the CPU, each in (-inf, 0]."""
        self.calls += 1
        return torch.cat([self._score_chunk(chunk, prompt) for chunk in images.split(self.max_batch)])

    def score(self, images: Tensor, prompt: str) -> Tensor:
        """VQAScore ``P("Yes")`` in [0, 1], shape ``(B,)``."""
        return self.log_prob_yes(images, prompt).exp()

    def _score_chunk(self, images: Tensor, prompt: str) -> Tensor:
        checkpoint()
        images = shrink(images.float().clamp(0.0, 1.0), self.max_pixels)
        vision = self.image_processor(images=list(images), return_tensors="pt", do_rescale=False)
        merge = self.image_processor.merge_size**2
        count = int(vision["image_grid_thw"][0].prod()) // merge
        text = CHAT.format(image=IMAGE_TOKEN * count, question=QUESTION.format(prompt=prompt))
        tokens = self.tokenizer([text] * images.shape[0], return_tensors="pt")
        logits = self.model(
            input_ids=tokens.input_ids.to(self.device),
            attention_mask=tokens.attention_mask.to(self.device),
            pixel_values=vision["pixel_values"].to(self.device, self.dtype),
            image_grid_thw=vision["image_grid_thw"].to(self.device),
            logits_to_keep=1,
        ).logits[:, -1].float()
        return torch.log_softmax(logits, dim=-1)[:, self.answer_id].cpu()


def shrink(images: Tensor, max_pixels: int) -> Tensor:
    """Downscale ``(B, 3, H, W)`` (antialiased bilinear) so that ``H·W <= max_pixels``;
    smaller images are returned unchanged."""
    height, width = images.shape[-2:]
    if height * width <= max_pixels:
        return images
    scale = math.sqrt(max_pixels / (height * width))
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    return functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


class VQAScoreReward(Reward):
    """``r(x0) = Π_prompts P("Yes" | decode(x0), prompt)^strength``, tempered by ``(1 - t)``.

    ``decode`` maps particles ``(P, ...)`` in the sampler's x-space to images ``(P, 3, h, w)``
    in [0, 1], called once per twist for all P particles and every prompt (e.g.
    :meth:`FluxRuntime.decode_preview` at the scorer's ``max_pixels``, 448² by default,
    rather than a full-size decode that the scorer would shrink anyway). Several prompts (the global one and each
    region's) multiply. ``last_scores`` keeps the latest ``P("Yes")`` per prompt for reports.
    """

    def __init__(self, scorer: VQAScorer, decode: Callable[[Tensor], Tensor], prompts: list[str], *, strength: float = 1.0) -> None:
        if not prompts:
            raise ValueError("prompts: VQAScore needs at least one prompt")
        self.scorer, self.decode, self.prompts, self.strength = scorer, decode, list(prompts), strength
        self.last_scores: dict[str, list[float]] = {}

    def log_potential(self, x0: Tensor, t: float) -> Tensor:
        images = self.decode(x0)
        total = torch.zeros(x0.shape[0], dtype=torch.float32)
        for prompt in self.prompts:
            log_yes = self.scorer.log_prob_yes(images, prompt)
            self.last_scores[prompt] = log_yes.exp().tolist()
            total = total + log_yes
        return ((1.0 - t) * self.strength * total).to(x0.device, x0.dtype)
