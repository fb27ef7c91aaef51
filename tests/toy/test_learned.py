"""The score-only sampler with the tasks' correctors (unadjusted, step scale 0.5) on a small
learned product stays close to the exact product of the mixtures the experts were trained
on (seeded), where the naive summed velocity does not. 100 log-SNR levels from t = 0.999,
as measured for the tolerance; from t = 0.98 the same runs score 1.39 (6 seeds, 1.02-1.74),
and with Metropolis-adjusted correctors (step 1.0) 1.96: the learned fields are not
gradients, so the score-only test adjusts towards the wrong target."""

import pytest
import torch

from poe_backend.sampling import samplers
from poe_backend.sampling.schedules import log_snr_levels
from poe_backend.tasks.images import ImageParams
from benchmarks.miniatures.learned import LearnedCase, Training
from benchmarks.miniatures.metrics import noise_floor, sliced_wasserstein
from poe_backend.toy.run import DEFAULT_LANGEVIN_STEPS, DEFAULT_LEVEL_COUNT
from poe_backend.toy.spec import DTYPE, parse_spec
from tests.toy import products

PARTICLES = 1000
TASK_STEP_SCALE = ImageParams().step_scale
TOLERANCE = 1.5  # SWD / two-sample floor on the learned product (seeds 0-5: 1.18, 1.20, 0.81, 1.08, 1.00, 1.07)
NAIVE_AT_LEAST = 4.0  # the naive summed velocity scores 7-11: the measure tells samplers apart


@pytest.mark.slow
def test_fkc_on_learned_product_matches_the_exact_product(tmp_path):
    case = LearnedCase("test-two-experts-2d", parse_spec(products.two_experts_2d()), Training(width=64, depth=3, steps=2000, batch_size=256, samples=20000))
    experts = case.experts(tmp_path)
    generator = torch.Generator().manual_seed(0)
    exact = case.exact_samples(PARTICLES, generator)
    floor = noise_floor(lambda n: case.exact_samples(n, generator), PARTICLES)
    levels = log_snr_levels(DEFAULT_LEVEL_COUNT, t_max=0.999)

    noise = torch.randn(PARTICLES, 2, generator=generator, dtype=DTYPE)
    result = samplers.sample_fkc(case.product(experts), noise, levels, generator=generator, langevin_steps=DEFAULT_LANGEVIN_STEPS, step_scale=TASK_STEP_SCALE, metropolis=False)
    fkc = sliced_wasserstein(result.equally_weighted(generator), exact) / floor
    assert fkc < TOLERANCE, f"fkc on the learned product: SWD {fkc:.2f}x the floor"

    naive = samplers.sample_summed_velocity(case.product(experts), noise, log_snr_levels(500), generator=generator)
    ratio = sliced_wasserstein(naive.particles, exact) / floor
    assert ratio > NAIVE_AT_LEAST, f"the naive sum scored {ratio:.2f}x the floor: the check cannot tell samplers apart"
