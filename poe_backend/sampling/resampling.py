"""Importance weights in log space: normalisation, effective sample size, resampling.

Every resampler has the blackjax signature ``(generator, log_weights, num_samples) ->
indices``; weights stay in log space and are normalised with logsumexp.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalized_log_weights(log_weights: Tensor) -> Tensor:
    """``log w_i - logsumexp(log w)``; all ``-inf`` is an error (every particle died)."""
    total = torch.logsumexp(log_weights, dim=0)
    if not torch.isfinite(total):
        raise FloatingPointError("all particles have zero weight (reward zero everywhere?)")
    return log_weights - total


def effective_sample_size(log_weights: Tensor) -> float:
    """Kish ESS ``1 / Σ w_i^2`` of normalised weights, in [1, P]."""
    log_w = normalized_log_weights(log_weights)
    return float(torch.exp(-torch.logsumexp(2.0 * log_w, dim=0)))


def systematic(generator: torch.Generator, log_weights: Tensor, num_samples: int) -> Tensor:
    """Systematic resampling: one uniform offset, ``num_samples`` evenly spaced points on the
    weights' CDF. Unbiased: each index ``i`` is drawn ``num_samples · w_i`` times on average.
    Returns int64 indices of shape ``(num_samples,)``."""
    weights = torch.exp(normalized_log_weights(log_weights.double()))
    cumulative = torch.cumsum(weights, dim=0)
    cumulative[-1] = 1.0
    offset = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device)
    points = (offset + torch.arange(num_samples, dtype=torch.float64, device=cumulative.device)) / num_samples
    return torch.searchsorted(cumulative.to(points.device), points).clamp_(max=weights.numel() - 1).to(log_weights.device)


def chosen_particle(log_weights: Tensor, seed: int) -> int:
    """The one particle a run hands to the user: drawn with probability ``w_i`` by a
    generator seeded with ``seed`` (a job's result is fixed by its seed). Not the largest
    weight: after resampling that is the particle with the largest last increment, with
    learned scores an outlier (``benchmarks/learned_experts.py --part task``: on far-modes
    at P = 4 the largest weight lands far from the exact product where the drawn particle
    is near the floor, and drawing was never clearly worse in any case; figures in
    README.md, The sampling math)."""
    generator = torch.Generator().manual_seed(seed)
    return int(multinomial(generator, log_weights.detach().cpu(), 1)[0])


def multinomial(generator: torch.Generator, log_weights: Tensor, num_samples: int) -> Tensor:
    """Independent draws with probabilities ``w_i``."""
    weights = torch.exp(normalized_log_weights(log_weights.double()))
    return torch.multinomial(weights, num_samples, replacement=True, generator=generator).to(log_weights.device)
