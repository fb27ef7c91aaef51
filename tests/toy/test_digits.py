"""The digit insertion miniature at the insertion task's settings, P = 4 particles per run.

Measured by benchmarks/digits_insertion.py (200 runs; these tests run 40, seeded).
Unguided, the product (fkc) keeps the known pixels far better than the layout expert alone
(RMSE 0.200 vs 0.387) and draws the object far better than the inpainter alone
(masked-pixel RMSE 0.306 vs 0.576, class accuracy 0.67 vs 0.12); it stays within 0.02 of
the inpainter's known-pixel RMSE (0.183) and of the naive sum's (0.195). The naive sum
draws the masked region closer to the object (0.283) and shows the class a little more
often (0.70): see the benchmark's docstring. With the layout expert guided (scale 1) the
product beats the naive sum on the known pixels (0.218 vs 0.231).
Trains both nets on first use (75-200 s on one thread; cached under the data dir).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from poe_backend.tasks.insertion import InsertionParams
from poe_backend.toy import digits

RUNS = 40
PARTICLES = 4


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    data = digits.load_data()
    return data, digits.train_experts(data)


def scores(setup, methods: tuple[str, ...], case: digits.InsertionCase) -> dict[str, digits.MethodScore]:
    data, experts = setup
    return {method: digits.score_method(method, experts, case, data, particles=PARTICLES, runs=RUNS) for method in methods}


def test_classifier_reads_clean_digits():
    _, accuracy = digits.fit_classifier(digits.load_data())
    assert accuracy > 0.93


@pytest.mark.slow
def test_product_keeps_known_pixels_and_draws_the_object(setup):
    result = scores(setup, digits.METHODS, digits.InsertionCase())
    product, layout_alone, inpainter, naive = (result[m] for m in ("product-fkc", "layout expert alone", "inpainter alone", "naive sum"))
    assert product.known_rmse < 0.6 * layout_alone.known_rmse
    assert product.masked_rmse < 0.7 * inpainter.masked_rmse
    assert product.class_accuracy > inpainter.class_accuracy + 0.35
    assert product.known_rmse < inpainter.known_rmse + 0.03
    assert product.known_rmse < naive.known_rmse + 0.02
    assert product.masked_rmse < naive.masked_rmse + 0.05


@pytest.mark.slow
def test_guided_product_keeps_known_pixels_better_than_the_naive_sum(setup):
    result = scores(setup, ("product-fkc", "naive sum"), dataclasses.replace(digits.InsertionCase(), class_guidance=1.0))
    assert result["product-fkc"].known_rmse < result["naive sum"].known_rmse
    assert result["product-fkc"].class_accuracy > result["naive sum"].class_accuracy - 0.15


@pytest.mark.slow
def test_log_weight_spread_is_recorded_per_level(setup):
    data, experts = setup
    spread = digits.log_weight_spread(experts, digits.InsertionCase(), data, particles=2, runs=2)
    levels = digits.task_levels(InsertionParams())
    assert spread.times == levels[1:]
    assert len(spread.std) == len(spread.ess_fraction) == len(spread.default_ess_fraction) == len(levels) - 1
    assert all(0.5 <= fraction <= 1.0 + 1e-9 for fraction in spread.ess_fraction + spread.default_ess_fraction)
    assert spread.std[-1] > 0.0


@pytest.mark.slow
def test_a_run_on_the_first_levels_repeats_the_full_run_there(setup):
    """What log_weight_spread relies on: the same seed, resampling off, the first k + 1
    levels give the particles the full run has at level k."""
    data, experts = setup
    case, params = digits.InsertionCase(), InsertionParams(particles=4, ess_threshold=0.0)
    (plate,), (object_image,) = case.pairs(data, 1)
    levels, seen = digits.task_levels(params), {}

    def keep(progress):
        seen[progress.level] = progress.particles.clone()

    digits.sample_once("product-fkc", experts, case, plate, object_image, params, 7, callback=keep)
    k = 10
    prefix = digits.sample_once("product-fkc", experts, case, plate, object_image, params, 7, levels[: k + 1])
    torch.testing.assert_close(prefix.particles, seen[k + 1], rtol=0, atol=0)
