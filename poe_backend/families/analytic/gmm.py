"""Gaussian-mixture experts with exact noised marginals, and exact products of them.

Under ``x_t = (1 - t) x0 + t eps``, a mixture ``Σ_k w_k N(μ_k, Σ_k)`` has the exact marginal
``Σ_k w_k N((1 - t) μ_k, (1 - t)² Σ_k + t² I)``, so velocity, score and log-density are
closed form at every t in [0, 1]. These are the sampler's ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from poe_backend.sampling.experts import GenerativeExpert, particle_batches


@dataclass(frozen=True)
class GaussianMixture:
    """Weights ``(K,)`` summing to 1, means ``(K, D)``, covariances ``(K, D, D)``
    (symmetric positive definite). A *batched* mixture, one per particle, has weights
    ``(P, K)`` and means ``(P, K, D)`` (conditionals given per-particle values); sampling and
    products need an unbatched one."""

    weights: Tensor
    means: Tensor
    covariances: Tensor

    @property
    def dimension(self) -> int:
        return self.means.shape[-1]

    def conditional(self, free: list[int], known: list[int], values: Tensor) -> GaussianMixture:
        """The batched mixture of coordinates ``free`` given coordinates ``known`` equal to
        ``values`` ``(P, len(known))``, marginalising all other coordinates. With ``known``
        empty it is the (unbatched) marginal of ``free``."""
        free_index = torch.tensor(free, device=self.means.device)
        free_covariance = self.covariances[:, free_index][:, :, free_index]
        if not known:
            return GaussianMixture(self.weights, self.means[:, free_index], free_covariance)
        known_index = torch.tensor(known, device=self.means.device)
        known_covariance = self.covariances[:, known_index][:, :, known_index]  # (K, k, k)
        cross = self.covariances[:, free_index][:, :, known_index]  # (K, f, k)
        gain = cross @ torch.linalg.inv(known_covariance)  # (K, f, k)
        known_part = GaussianMixture(self.weights, self.means[:, known_index], known_covariance)
        log_weights, _ = known_part.component_log_densities(values)  # (P, K)
        offsets = values[:, None, :] - self.means[None, :, known_index]  # (P, K, k)
        means = self.means[None, :, free_index] + (gain[None] @ offsets[..., None])[..., 0]
        return GaussianMixture(torch.softmax(log_weights, dim=1), means, free_covariance - gain @ cross.transpose(1, 2))

    def reindexed(self, indices: Tensor | slice) -> GaussianMixture:
        """The mixture of the particles ``indices`` (a resampling's indices, or a
        micro-batch's rows); an unbatched mixture is every particle's."""
        if self.weights.dim() == 1:
            return self
        return GaussianMixture(self.weights[indices], self.means[indices], self.covariances)

    def noised(self, t: float) -> GaussianMixture:
        """The marginal at time t (exact)."""
        scale = 1.0 - t
        identity = torch.eye(self.dimension, dtype=self.means.dtype, device=self.means.device)
        return GaussianMixture(self.weights, scale * self.means, scale**2 * self.covariances + t**2 * identity)

    def component_log_densities(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log w_k + log N(x; μ_k, Σ_k)`` of shape ``(P, K)`` and ``Σ_k^{-1}(x - μ_k)``
        of shape ``(P, K, D)``."""
        cholesky = torch.linalg.cholesky(self.covariances)  # (K, D, D)
        difference = x[:, None, :] - self.means  # (P, K, D); means (K, D) or (P, K, D)
        solved = torch.cholesky_solve(difference.permute(1, 2, 0), cholesky).permute(2, 0, 1)
        log_determinant = 2.0 * torch.log(torch.diagonal(cholesky, dim1=-2, dim2=-1)).sum(-1)
        mahalanobis = (difference * solved).sum(-1)
        log_normal = -0.5 * (mahalanobis + log_determinant + self.dimension * math.log(2.0 * math.pi))
        return torch.log(self.weights) + log_normal, solved

    def log_density_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised ``log p(x)`` ``(P,)`` and ``∇ log p(x)`` ``(P, D)``."""
        log_components, solved = self.component_log_densities(x)
        responsibilities = torch.softmax(log_components, dim=1)
        return torch.logsumexp(log_components, dim=1), -(responsibilities[..., None] * solved).sum(1)

    def sample(self, num_samples: int, generator: torch.Generator) -> Tensor:
        """Exact samples ``(num_samples, D)``."""
        components = torch.multinomial(self.weights.cpu().double(), num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.dimension, generator=generator, dtype=torch.float64).to(self.means)
        cholesky = torch.linalg.cholesky(self.covariances)[components.to(self.means.device)]
        return self.means[components.to(self.means.device)] + (cholesky @ noise[..., None])[..., 0]

    def power(self, exponent: float) -> GaussianMixture:
        """``p^λ`` normalised; exact only for one component (``N(μ, Σ/λ)``)."""
        if exponent == 1.0:
            return self
        if self.weights.numel() != 1:
            raise ValueError("a mixture raised to a power other than 1 is not a mixture; use one component")
        return GaussianMixture(self.weights, self.means, self.covariances / exponent)


def product_of_mixtures(mixtures: list[GaussianMixture]) -> GaussianMixture:
    """The exact normalised product of mixtures (``K_1 · K_2 · ...`` components) via
    ``N(x; μa, Σa) N(x; μb, Σb) = N(μa; μb, Σa + Σb) N(x; μc, Σc)``."""
    result = mixtures[0]
    for other in mixtures[1:]:
        result = _product_of_two(result, other)
    return result


def _product_of_two(a: GaussianMixture, b: GaussianMixture) -> GaussianMixture:
    precision_a, precision_b = torch.linalg.inv(a.covariances), torch.linalg.inv(b.covariances)
    covariances = torch.linalg.inv(precision_a[:, None] + precision_b[None])  # (Ka, Kb, D, D)
    information = (precision_a @ a.means[..., None])[:, None] + (precision_b @ b.means[..., None])[None]
    means = (covariances @ information)[..., 0]
    difference = a.means[:, None] - b.means[None]  # (Ka, Kb, D)
    overlap = torch.distributions.MultivariateNormal(
        torch.zeros_like(difference), covariance_matrix=a.covariances[:, None] + b.covariances[None]
    )
    log_overlap = overlap.log_prob(difference)  # (Ka, Kb): log N(μa_i; μb_j, Σa_i + Σb_j)
    log_weights = torch.log(a.weights)[:, None] + torch.log(b.weights)[None] + log_overlap
    weights = torch.softmax(log_weights.flatten(), dim=0)
    dimension = a.dimension
    return GaussianMixture(weights, means.reshape(-1, dimension), covariances.reshape(-1, dimension, dimension))


#: Values of one ``(P, K, D)`` intermediate of a mixture evaluation in one micro-batch
#: (2^21 float64 values: 16 MiB; an evaluation holds a few at once), so an evaluation's
#: memory is bounded whatever the particles and components (100 000 particles of a
#: 400-component 2-D mixture held 0.6 GiB per intermediate in one batch).
VALUES_PER_BATCH = 2**21


class GaussianMixtureExpert(GenerativeExpert):
    """A mixture as a generative expert with exact velocity, score and energy at every t,
    evaluated in micro-batches of :attr:`max_batch` particles."""

    has_energy = True
    passes_per_evaluation = 0  # closed form: no network

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture

    @property
    def max_batch(self) -> int:
        """Particles per micro-batch: :data:`VALUES_PER_BATCH` over components × dimension,
        at least 1."""
        return max(1, VALUES_PER_BATCH // (self.mixture.weights.shape[-1] * self.mixture.dimension))

    def log_density_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        parts = [self.mixture.reindexed(rows).noised(t).log_density_and_score(x[rows]) for rows in particle_batches(x.shape[0], self.max_batch)]
        return torch.cat([log_density for log_density, _ in parts]), torch.cat([score for _, score in parts])

    def reindex(self, indices: Tensor) -> None:
        self.mixture = self.mixture.reindexed(indices)

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``v = E[eps | x] - E[x0 | x] = -t·s - x0_hat`` with the per-component Tweedie
        posterior means ``μ_k + (1-t) Σ_k C_k^{-1} (x - (1-t) μ_k)``."""
        return torch.cat([self._velocity(x[rows], t, self.mixture.reindexed(rows)) for rows in particle_batches(x.shape[0], self.max_batch)])

    @staticmethod
    def _velocity(x: Tensor, t: float, mixture: GaussianMixture) -> Tensor:
        noised = mixture.noised(t)
        log_components, solved = noised.component_log_densities(x)
        responsibilities = torch.softmax(log_components, dim=1)[..., None]  # (P, K, 1)
        score = -(responsibilities * solved).sum(1)
        component_x0 = mixture.means + (1.0 - t) * (mixture.covariances[None] @ solved[..., None])[..., 0]
        return -t * score - (responsibilities * component_x0).sum(1)
