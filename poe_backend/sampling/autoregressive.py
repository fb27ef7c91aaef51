"""Autoregressive annealing over chunks, with Gibbs sweeps (DESIGN.md section 2).

The sample is a sequence of C chunks (video sections, coordinates in the toy). Chunk c is
drawn with a linear-annealing sampler from a product whose experts are conditioned on the
chunks already drawn; afterwards, optional Gibbs sweeps re-noise each chunk j <= c to
``gibbs_t`` and re-sample it from ``gibbs_t`` to 0 conditioned on all the other chunks.
Re-noising uses the product's noise scale, ``x_t = (1 - t) x + (t / sqrt(Σλ)) eps``, which
matches the annealing path's level t at both ends (exactly at t -> 1 and t -> 0; in
between exactly when the experts share their covariance); ``gibbs_t`` near 1 is a fresh
draw from the conditional (an exact Gibbs step), smaller values keep more of the chunk.

A first pass over chunk c is a sequential-Monte-Carlo step over whole sequences: its
weights (which carry the change of the conditional's normaliser with the history) may
resample particles, histories included. A Gibbs sweep must keep the other chunks'
distribution, so it neither resamples nor weights: each particle re-draws its chunk given
its own context (``ess_threshold=0`` for samplers that take it; the paper's sampler still
resamples by rewards).

``make_product(index, chunks)`` builds the product over chunk ``index``'s latent given
``chunks``: the current value ``(P, *chunk_shape)`` of every chunk, ``None`` for chunk
``index`` itself and for chunks not drawn yet. Particles stay aligned across chunks: when a
chunk's sampler resamples, the other chunks follow its ancestors, and each chunk ends with
an equally weighted resampling.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from poe_backend.sampling import flow
from poe_backend.sampling.experts import ProductOfExperts
from poe_backend.sampling.resampling import effective_sample_size, systematic
from poe_backend.sampling.run import Progress, SampleResult
from poe_backend.sampling.samplers import sample_fkc

ProductFactory = Callable[[int, list[Tensor | None]], ProductOfExperts]


@dataclass
class AutoregressiveResult:
    """Equally weighted chunks, each ``(P, *chunk_shape)`` in x-space at t = 0; ``nfe`` is
    the forwards per particle over all chunks and sweeps; ``ess`` one entry per first pass
    (its final ESS before the equal-weight resampling)."""

    chunks: list[Tensor]
    nfe: int
    ess: list[float] = field(default_factory=list)

    def stats(self) -> dict:
        return {"path": "autoregressive annealing", "nfe_per_particle": self.nfe, "chunks": len(self.chunks), "min_ess": min(self.ess)}


def sample_autoregressive(
    make_product: ProductFactory,
    chunk_noise: list[Tensor],
    levels: list[float],
    *,
    generator: torch.Generator,
    sampler: Callable[..., SampleResult] = sample_fkc,
    gibbs_sweeps: int = 0,
    gibbs_t: float = 0.5,
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **sampler_options,
) -> AutoregressiveResult:
    """Draw the chunks in order; after chunk c >= 1, ``gibbs_sweeps`` sweeps over chunks
    0..c. ``chunk_noise[c]`` is standard normal ``(P, *chunk_shape)``; ``levels`` the full
    schedule; a sweep uses ``[gibbs_t] + [t in levels if t < gibbs_t]``. Progress levels
    count across all chunk runs."""
    gibbs_levels = [gibbs_t] + [t for t in levels if t < gibbs_t]
    plan = []
    for c in range(len(chunk_noise)):
        plan.append((c, False))
        if c > 0:
            plan.extend((j, True) for _ in range(gibbs_sweeps) for j in range(c + 1))
    total_levels = sum(len(gibbs_levels if sweep else levels) for _, sweep in plan)
    chunks: list[Tensor | None] = [None] * len(chunk_noise)
    nfe, ess, offset = 0, [], 0
    for index, sweep in plan:
        run_levels = gibbs_levels if sweep else levels
        context = list(chunks)
        context[index] = None
        product = make_product(index, context)
        noise, start = chunk_noise[index], None
        if sweep:
            noise = flow.standard_normal_like(chunks[index], generator)
            scale = torch.sqrt(torch.as_tensor(product.total_weight(), dtype=noise.dtype, device=noise.device))
            start = (1.0 - gibbs_t) * chunks[index] + gibbs_t * noise / scale
        options = {**sampler_options, "ess_threshold": 0.0} if sweep and "ess_threshold" in inspect.signature(sampler).parameters else sampler_options
        result = sampler(
            product,
            noise,
            run_levels,
            generator=generator,
            start=start,
            callback=_shifted(callback, offset, total_levels),
            should_stop=should_stop,
            **options,
        )
        offset += len(run_levels)
        nfe += result.nfe
        if sweep:
            chunks[index] = result.particles
        else:
            ess.append(effective_sample_size(result.log_weights))
            chunks = _align(chunks, index, result, generator)
    return AutoregressiveResult(chunks, nfe, ess)


def _align(chunks: list[Tensor | None], index: int, result: SampleResult, generator: torch.Generator) -> list[Tensor | None]:
    """Put the new chunk in place, make the others follow the sampler's ancestors, then
    resample all of them to equal weights together."""
    chunks = [None if chunk is None else chunk[result.ancestors.to(chunk.device)] for chunk in chunks]
    chunks[index] = result.particles
    final = systematic(generator, result.log_weights, result.log_weights.numel())
    return [None if chunk is None else chunk[final.to(chunk.device)] for chunk in chunks]


def _shifted(callback: Callable[[Progress], None] | None, offset: int, total: int) -> Callable[[Progress], None] | None:
    if callback is None:
        return None
    return lambda progress: callback(replace(progress, level=offset + progress.level, num_levels=total))
