"""Annealing levels: decreasing sequences of times ``t_0 = t_max > ... > t_K`` in [0, 1].

Built apart from the samplers (as k-diffusion does). Each returns a python list of floats.
"""

from __future__ import annotations

import math

import numpy as np

from poe_backend.sampling import flow


def linear_levels(num_levels: int, t_max: float = 1.0, t_min: float = 0.0) -> list[float]:
    """``num_levels`` evenly spaced times from ``t_max`` down to ``t_min``."""
    _check(num_levels, t_max, t_min)
    return np.linspace(t_max, t_min, num_levels).tolist()


def log_snr_levels(num_levels: int, t_max: float = 0.98, t_min: float = 0.0, sigma_min: float = 0.01) -> list[float]:
    """Times evenly spaced in ``log sigma`` (``sigma = t / (1 - t)``) from ``t_max`` down to
    ``sigma_min``, then ``t_min`` when it is 0. Consecutive ``sigma`` ratios stay constant,
    which keeps Euler steps of the variance-exploding transport stable for any product.

    The default ``t_max = 0.98`` (σ = 49) is the image and video tasks' first level. Levels
    above it sit where every expert is Gaussian to within the noise, where the Feynman-Kac
    increment carries no information (its spread per level is ``½(Σλ - 1)(1 - r²)·sqrt(2D)``
    nats for a σ ratio ``r`` in ``D`` dimensions), and for three experts the stability
    substeps there cost levels: at 250 NFE the 3-expert 2-D product gets 51 levels from
    0.98 and 43 from 0.999, and scores closer to the two-sample floor from 0.98 (Metropolis
    correctors; the other analytic products within noise; ``benchmarks/sampler_accuracy.py``,
    figures in README.md, The sampling math)."""
    _check(num_levels, t_max, t_min)
    if t_max >= 1.0:
        raise ValueError("t_max must be below 1 for a log-SNR schedule")
    ends_at_zero = t_min == 0.0
    count = num_levels - 1 if ends_at_zero else num_levels
    low = sigma_min if ends_at_zero else flow.sigma_from_t(t_min)
    sigmas = np.geomspace(flow.sigma_from_t(t_max), low, count)
    levels = [flow.t_from_sigma(float(sigma)) for sigma in sigmas]
    return levels + [0.0] if ends_at_zero else levels


def shifted_levels(num_levels: int, shift_mu: float, t_max: float = 1.0, t_min: float = 0.0) -> list[float]:
    """FLUX's exponential time shift of a linear grid: ``e^mu / (e^mu + (1/t - 1))``.

    ``shift_mu`` comes from :func:`flux_shift_mu` (sequence-length dependent)."""
    _check(num_levels, t_max, t_min)
    linear = np.linspace(t_max, t_min, num_levels)
    with np.errstate(divide="ignore"):
        shifted = math.exp(shift_mu) / (math.exp(shift_mu) + (1.0 / linear - 1.0))
    return np.where(linear > 0.0, shifted, 0.0).tolist()


def flux_shift_mu(sequence_length: int, base_length: int = 256, max_length: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """diffusers' ``calculate_shift``: linear in the token count between (256, 0.5) and
    (4096, 1.15)."""
    slope = (max_shift - base_shift) / (max_length - base_length)
    return sequence_length * slope + base_shift - slope * base_length


def _check(num_levels: int, t_max: float, t_min: float) -> None:
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
