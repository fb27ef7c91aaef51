from __future__ import annotations


import pytest
import torch

from poe_backend.families.vqascore import scorer as vqascore
from poe_backend.families.flux.rf_solver import inversion_times, rf_solver
from poe_backend.sampling import GenerativeExpert


@pytest.fixture(scope="module")
def scorer() -> vqascore.VQAScorer:
    return vqascore.VQAScorer("tiny", max_pixels=56 * 56)


def test_vqascore_is_a_probability_per_image(scorer):
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    scores = scorer.score(images, "a red ball")
    assert scores.shape == (3,) and torch.all((scores > 0) & (scores < 1))
    assert torch.equal(scorer.score(images, "a red ball"), scores)  # deterministic
    assert scorer.answer_id == scorer.tokenizer.convert_tokens_to_ids("Yes")


def test_large_images_are_shrunk_to_the_pixel_budget():
    images = torch.rand(1, 3, 200, 300)
    small = vqascore.shrink(images, 100 * 100)
    assert small.shape[-2] * small.shape[-1] <= 100 * 100
    assert vqascore.shrink(images, 10**6) is images


def test_reward_is_tempered_and_exact_at_zero(scorer):
    decoded = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    reward = vqascore.VQAScoreReward(scorer, lambda x0: decoded, ["a dog", "a cat"], strength=2.0)
    x0 = torch.zeros(2, 6, 64)
    exact = 2.0 * (scorer.log_prob_yes(decoded, "a dog") + scorer.log_prob_yes(decoded, "a cat"))
    assert torch.allclose(reward.log_potential(x0, 0.0), exact)
    assert torch.allclose(reward.log_potential(x0, 0.75), 0.25 * exact)
    assert torch.all(reward.log_potential(x0, 1.0) == 0)
    assert set(reward.last_scores) == {"a dog", "a cat"}


class LinearGaussian(GenerativeExpert):
    """Data N(0, s² I): exact rectified-flow velocity ``v = ((t - (1 - t) s²) / ((1 - t)² s² + t²)) x``."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def velocity(self, x, t):
        variance = (1 - t) ** 2 * self.scale**2 + t**2
        return (t - (1 - t) * self.scale**2) / variance * x


def test_rf_solver_inversion_then_editing_reconstructs():
    expert = LinearGaussian(0.5)
    x0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    times = inversion_times(40, t_max=0.999)
    noise, nfe = rf_solver(expert, x0, times)
    back, _ = rf_solver(expert, noise, times[::-1])
    assert nfe == 80
    assert torch.allclose(back, x0, atol=1e-3)
    # the flow maps N(0, s²) to N(0, 1): scale grows by 1/s
    assert noise.norm() / x0.norm() == pytest.approx(1 / 0.5, rel=0.01)


def test_only_the_last_position_goes_through_the_lm_head(scorer):
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    seen = []
    head = scorer.model.lm_head
    handle = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    try:
        scores = scorer.log_prob_yes(images, "a red ball")
    finally:
        handle.remove()
    assert seen == [1]
    # the same value as the last row of all positions' logits
    vision = scorer.image_processor(images=list(vqascore.shrink(images, scorer.max_pixels)), return_tensors="pt", do_rescale=False)
    count = int(vision["image_grid_thw"][0].prod()) // scorer.image_processor.merge_size**2
    text = vqascore.CHAT.format(image=vqascore.IMAGE_TOKEN * count, question=vqascore.QUESTION.format(prompt="a red ball"))
    tokens = scorer.tokenizer([text] * 2, return_tensors="pt")
    with torch.inference_mode():
        logits = scorer.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"]).logits
    assert logits.shape[1] > 1
    assert torch.allclose(torch.log_softmax(logits[:, -1].float(), dim=-1)[:, scorer.answer_id], scores, atol=1e-5)
