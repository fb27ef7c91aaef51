"""Rectified-flow conversions, written once.

Convention (as FLUX and Wan use): time ``t`` in [0, 1], ``x_t = (1 - t) * x0 + t * eps`` with
``eps ~ N(0, I)``. An expert's velocity is ``v(x, t) = E[eps - x0 | x_t = x]``.

Variance-exploding form used by the weighted samplers: ``y = x / (1 - t)``,
``sigma = t / (1 - t)``, so ``y = x0 + sigma * eps`` and ``score_y = (1 - t) * score_x``.
All functions broadcast over any tensor shape; ``t`` is a python float.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def x0_from_velocity(x: Tensor, t: float, velocity: Tensor) -> Tensor:
    """Predicted clean sample ``x0_hat = x - t * v``."""
    return x - t * velocity


def eps_from_velocity(x: Tensor, t: float, velocity: Tensor) -> Tensor:
    """Predicted noise ``eps_hat = x + (1 - t) * v``."""
    return x + (1.0 - t) * velocity


def score_from_velocity(x: Tensor, t: float, velocity: Tensor) -> Tensor:
    """Score of the noised marginal, ``grad log p_t(x) = -eps_hat / t`` (needs t > 0)."""
    if t <= 0.0:
        raise ValueError("the score is undefined at t = 0 from a velocity")
    return -eps_from_velocity(x, t, velocity) / t


def velocity_from_score(x: Tensor, t: float, score: Tensor) -> Tensor:
    """Inverse of :func:`score_from_velocity`: ``v = -(t * s + x) / (1 - t)`` (needs t < 1)."""
    if t >= 1.0:
        raise ValueError("the velocity is undefined at t = 1 from a score")
    return -(t * score + x) / (1.0 - t)


def x0_from_score(x: Tensor, t: float, score: Tensor) -> Tensor:
    """Tweedie: ``x0_hat = (x + t^2 * s) / (1 - t)`` (needs t < 1)."""
    if t >= 1.0:
        raise ValueError("x0 is undefined at t = 1 from a score")
    return (x + t * t * score) / (1.0 - t)


def sigma_from_t(t: float) -> float:
    """Variance-exploding noise level ``sigma = t / (1 - t)``; ``inf`` at t = 1."""
    return math.inf if t >= 1.0 else t / (1.0 - t)


def t_from_sigma(sigma: float) -> float:
    """Inverse of :func:`sigma_from_t`."""
    return 1.0 if math.isinf(sigma) else sigma / (1.0 + sigma)


def x_from_y(y: Tensor, t: float) -> Tensor:
    """Rectified-flow sample from its variance-exploding form: ``x = (1 - t) * y``."""
    return (1.0 - t) * y


def y_from_x(x: Tensor, t: float) -> Tensor:
    """Variance-exploding form ``y = x / (1 - t)`` (needs t < 1)."""
    return x / (1.0 - t)


def batch_sum(values: Tensor) -> Tensor:
    """Sum over every dimension but the first (particles): ``(P, ...) -> (P,)``."""
    return values.flatten(start_dim=1).sum(dim=1)


def standard_normal_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """``N(0, I)`` noise of ``x``'s shape and dtype, drawn on the generator's device (so a
    seed gives the same numbers on CPU and GPU runs when the generator is on the CPU)."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=generator.device)
    return noise.to(device=x.device, dtype=x.dtype)


def uniform_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """``U(0, 1)`` of ``x``'s shape, like :func:`standard_normal_like`."""
    uniform = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=generator.device)
    return uniform.to(device=x.device, dtype=x.dtype)
