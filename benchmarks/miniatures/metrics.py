"""Distances between sample sets, for checking samplers against exact samples."""

from __future__ import annotations

from typing import Callable

import numpy as np
import ot
import torch

NUM_PROJECTIONS = 500


def sliced_wasserstein(samples: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (POT, 500 random directions) between ``(N, D)`` sets."""
    return float(ot.sliced_wasserstein_distance(_array(samples), _array(reference), n_projections=NUM_PROJECTIONS, seed=seed))


def noise_floor(draw: Callable[[int], torch.Tensor], num_samples: int, repeats: int = 8, seed: int = 0) -> float:
    """The mean distance between two independent exact sample sets of ``num_samples`` each
    (``draw(n)`` returns exact samples), over ``repeats`` pairs: what a perfect sampler
    scores on average."""
    return float(np.mean([sliced_wasserstein(draw(num_samples), draw(num_samples), seed=seed) for _ in range(repeats)]))


def bootstrap_standard_error(statistic: Callable[[np.ndarray], float], count: int, resamples: int = 2000, seed: int = 0) -> float:
    """Standard deviation of ``statistic(indices)`` over ``resamples`` draws of ``count``
    run indices with replacement (``indices``: ``(count,)`` int64): the standard error of a
    statistic of ``count`` independent runs. A statistic of two methods' scores on the same
    runs (a paired difference) gets the paired error this way."""
    rng = np.random.default_rng(seed)
    return float(np.std([statistic(rng.integers(0, count, count)) for _ in range(resamples)], ddof=1))


def _array(samples: torch.Tensor | np.ndarray) -> np.ndarray:
    return samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
