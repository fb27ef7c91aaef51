"""Small learned flow-matching experts: an MLP velocity field trained on samples.

The real experts are neural networks whose velocity is learned, imperfect and not the
gradient of anything. These nets reproduce that on data whose exact density is known (e.g.
samples of a Gaussian mixture), so a sampler's error can be told apart from the model's.

Convention of :mod:`poe_backend.sampling.flow`: ``x_t = (1 - t) x0 + t eps``, the net learns
``v(x_t, t) ≈ E[eps - x0 | x_t]`` by regression on ``eps - x0`` (flow matching), float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from poe_backend.sampling import GenerativeExpert

TIME_FREQUENCIES = 8  # sinusoidal features sin/cos(π 2^k t), k < 8, plus t itself


class VelocityNet(nn.Module):
    """``v(x, t, condition)``: an MLP (SiLU) on ``[x, time features, condition]``.

    ``dimension`` D of the data, ``condition_dimension`` C (0: unconditional), ``depth``
    hidden layers of ``width`` units.
    """

    def __init__(self, dimension: int, condition_dimension: int = 0, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.dimension, self.condition_dimension = dimension, condition_dimension
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(TIME_FREQUENCIES, dtype=torch.float32))
        sizes = [dimension + 2 * TIME_FREQUENCIES + 1 + condition_dimension] + [width] * depth
        layers: list[nn.Module] = []
        for size_in, size_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(size_in, size_out), nn.SiLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(sizes[-1], dimension))

    def forward(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        """``x`` ``(N, D)``, ``t`` ``(N,)`` in [0, 1], ``condition`` ``(N, C)`` or None
        (only when C = 0); returns the velocity ``(N, D)``."""
        if (condition is None) != (self.condition_dimension == 0):
            raise ValueError(f"this net takes a condition of {self.condition_dimension} values; got {None if condition is None else tuple(condition.shape)}")
        angles = t[:, None] * self.frequencies
        inputs = [x, t[:, None], torch.sin(angles), torch.cos(angles)] + ([] if condition is None else [condition])
        return self.layers(torch.cat(inputs, dim=1))


def train_velocity(
    net: VelocityNet,
    data: Tensor,
    conditions: Tensor | None = None,
    *,
    steps: int,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Flow matching on ``data`` ``(N, D)`` (with ``conditions`` ``(N, C)`` when the net is
    conditional): each step draws a batch, ``t ~ U(0, 1)``, ``eps ~ N(0, I)``, and regresses
    ``net(x_t, t, c)`` on ``eps - x0`` (mean squared error per coordinate). Adam with a cosine
    decay of the learning rate to zero, float32, seeded. Returns the ``steps`` losses."""
    generator = torch.Generator().manual_seed(seed)
    data = data.float()
    conditions = None if conditions is None else conditions.float()
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    net.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(data.shape[0], (batch_size,), generator=generator)
        x0 = data[batch]
        t = torch.rand(batch_size, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = (1.0 - t[:, None]) * x0 + t[:, None] * eps
        loss = torch.mean((net(x_t, t, None if conditions is None else conditions[batch]) - (eps - x0)) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    net.eval()
    return losses


def cache_name(name: str, recipe: dict) -> str:
    """``<name>-<16 hex digits of the SHA-256 of the JSON recipe>.pt``: a cached net's file
    name, from everything that determines the net (``recipe``: JSON-ready values)."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}-{digest}.pt"


def load_or_train(path: Path, build: Callable[[], VelocityNet], train: Callable[[VelocityNet], None]) -> VelocityNet:
    """The net whose state dict is cached at ``path``; when absent: ``build()``, ``train(net)``
    and save it atomically (a temporary file renamed), so concurrent callers never read half a
    file. Callers name ``path`` by a hash of their configuration, under
    ``poe_backend.models.specs.data_dir() / "learned"``. Returns the net in eval mode."""
    net = build()
    if path.exists():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval()
    train(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(net.state_dict(), temporary)
    os.replace(temporary, path)
    return net.eval()


class LearnedExpert(GenerativeExpert):
    """A :class:`VelocityNet` as a generative expert (score-only: no energy).

    ``condition`` is fixed for every particle ``(C,)`` or per particle ``(P, C)`` (it then
    follows resampling). Particles ``(P, *event_shape)`` with ``prod(event_shape) = D`` of any
    float dtype: the net runs in its own dtype and device, the velocity comes back in the
    particles'.
    """

    def __init__(self, net: VelocityNet, condition: Tensor | None = None) -> None:
        self.net = net.requires_grad_(False)
        self.condition = condition

    def velocity(self, x: Tensor, t: float) -> Tensor:
        parameter = next(self.net.parameters())
        flat = x.reshape(x.shape[0], -1).to(device=parameter.device, dtype=parameter.dtype)
        times = torch.full((x.shape[0],), t, device=parameter.device, dtype=parameter.dtype)
        condition = None
        if self.condition is not None:
            condition = self.condition.to(device=parameter.device, dtype=parameter.dtype)
            condition = condition.expand(x.shape[0], -1) if condition.dim() == 1 else condition
        velocity = self.net(flat, times, condition)
        return velocity.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def reindex(self, indices: Tensor) -> None:
        if self.condition is not None and self.condition.dim() == 2:
            self.condition = self.condition[indices.to(self.condition.device)]
