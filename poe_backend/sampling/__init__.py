"""Sampling from products of experts; imports torch only (no model code)."""

from poe_backend.sampling.autoregressive import AutoregressiveResult, sample_autoregressive
from poe_backend.sampling.experts import Evaluation, Factor, GenerativeExpert, ProductOfExperts, Reward
from poe_backend.sampling.run import Progress, SampleResult, SamplingCancelled
from poe_backend.sampling.samplers import (
    sample_ais,
    sample_annealed_langevin,
    sample_fkc,
    sample_summed_velocity,
)

__all__ = [
    "AutoregressiveResult",
    "Evaluation",
    "Factor",
    "GenerativeExpert",
    "ProductOfExperts",
    "Progress",
    "Reward",
    "SampleResult",
    "SamplingCancelled",
    "sample_ais",
    "sample_annealed_langevin",
    "sample_autoregressive",
    "sample_fkc",
    "sample_summed_velocity",
]
