"""The paper's toy discriminative expert: reward 1 inside a disc (ball), 0 outside."""

from __future__ import annotations

import torch
from torch import Tensor

from poe_backend.sampling.experts import Reward


class DiscReward(Reward):
    """``r(x) = 1[‖x - center‖ <= radius]``.

    Twist at level t > 0 (see :class:`~poe_backend.sampling.experts.Reward`):
    ``log sigmoid((radius - ‖x0_hat - center‖) / (softness · radius · t))`` — nearly flat
    early, the exact indicator at t = 0, finite everywhere before.
    """

    def __init__(self, center: Tensor, radius: float, softness: float = 1.0) -> None:
        self.center = center
        self.radius = radius
        self.softness = softness

    def contains(self, x: Tensor) -> Tensor:
        """Boolean mask ``(P,)``."""
        return torch.linalg.vector_norm(x - self.center, dim=-1) <= self.radius

    def log_potential(self, x0: Tensor, t: float) -> Tensor:
        distance = torch.linalg.vector_norm(x0 - self.center.to(x0), dim=-1)
        if t <= 0.0:
            return torch.where(distance <= self.radius, 0.0, -torch.inf).to(x0)
        return torch.nn.functional.logsigmoid((self.radius - distance) / (self.softness * self.radius * t))
