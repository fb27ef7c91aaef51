"""The simulator as an expert: an isotropic Gaussian around VAE-encoded renders.

The paper's sim-to-video (autoregressive) product multiplies a video model with
``p(x) ∝ exp(-w ‖x - c‖²)`` where ``c`` is the latent of the rendered RGB clip; with
``w = 1 / (2 s²)`` this is ``N(c, s² I)``. Under the rectified-flow path
``x_t = (1 - t) x0 + t eps`` its noised marginal is exact (DESIGN.md section 2):

    p_t = N((1 - t) c, v_t I),   v_t = (1 - t)² s² + t²

so velocity, score and log-density are closed form at every ``t`` in [0, 1]:

    E[x0 | x]  = c + (1 - t) s² / v_t · (x - (1 - t) c)
    E[eps | x] = t / v_t · (x - (1 - t) c)
    v(x, t)    = E[eps - x0 | x] = (t - (1 - t) s²) / v_t · (x - (1 - t) c) - c
    score      = -(x - (1 - t) c) / v_t

Torch only; the renders are encoded by the model family that owns the latent space
(FramePack's VAE for ``sim2video_ar``, see :mod:`poe_backend.families.framepack.experts`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from poe_backend.sampling import flow
from poe_backend.sampling.experts import GenerativeExpert


def std_from_strength(strength: float) -> float:
    """``s`` for the density ``exp(-w ‖x - c‖²)``: ``s = 1 / sqrt(2 w)`` (``w > 0``)."""
    if strength <= 0.0:
        raise ValueError(f"the Gaussian expert's strength w must be positive, got {strength}")
    return 1.0 / math.sqrt(2.0 * strength)


class RenderGaussianExpert(GenerativeExpert):
    """``N(center, std² I)`` in a latent space, with its exact noised marginals.

    ``center`` has the event shape (one particle's latent, e.g. ``(C, F', h, w)``) or the
    full particle shape ``(P, *event)`` with ``per_particle=True`` (then :meth:`reindex`
    follows resampling). ``std`` is in latent
    units (latents here are normalised to roughly unit variance, so ``std`` 0.1–0.5 pins
    the result close to the render, 1+ only nudges it).
    """

    has_energy = True
    passes_per_evaluation = 0  # closed form: no network

    def __init__(self, center: Tensor, std: float, *, per_particle: bool = False) -> None:
        if std <= 0.0:
            raise ValueError(f"std must be positive, got {std}")
        self.center = center
        self.std = float(std)
        self.per_particle = per_particle

    def variance(self, t: float) -> float:
        """``v_t = (1 - t)² s² + t²``, the per-element variance of the noised marginal."""
        return (1.0 - t) ** 2 * self.std**2 + t**2

    def _offset(self, x: Tensor, t: float) -> Tensor:
        return x - (1.0 - t) * self.center.to(device=x.device, dtype=x.dtype)

    def velocity(self, x: Tensor, t: float) -> Tensor:
        offset = self._offset(x, t)
        gain = (t - (1.0 - t) * self.std**2) / self.variance(t)
        return gain * offset - self.center.to(device=x.device, dtype=x.dtype)

    def log_density_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """Normalised ``log N(x; (1-t) c, v_t I)`` ``(P,)`` and its score (shape of x)."""
        variance = self.variance(t)
        offset = self._offset(x, t)
        dimension = offset[0].numel()
        log_density = -0.5 * flow.batch_sum(offset**2) / variance - 0.5 * dimension * math.log(2.0 * math.pi * variance)
        return log_density, -offset / variance

    def reindex(self, indices: Tensor) -> None:
        """Per-particle centres follow a resampling; a shared centre needs nothing."""
        if self.per_particle:
            self.center = self.center[indices.to(self.center.device)]

    def sample(self, num_samples: int, generator: torch.Generator) -> Tensor:
        """Exact samples at t = 0, ``(num_samples, *center.shape)`` (for tests)."""
        shape = (num_samples, *self.center.shape)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)
        return self.center.to(noise.device) + self.std * noise.to(self.center.dtype)
