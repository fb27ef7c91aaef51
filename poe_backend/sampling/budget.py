"""The exact cost of a sampler run, known before it starts.

Cost is NFE: expert forward passes per particle, summed over experts (each forward is
batched over particles). The Feynman-Kac sampler's Euler transport splits a level gap too
wide for a stable step into substeps (``samplers.transport_steps``), so its cost depends on
the schedule and on ``Σλ``, not on ``len(levels)`` alone: :func:`planned_nfe` counts them.
Its exponential transport takes none.
"""

from __future__ import annotations

from typing import Collection, Sequence

from poe_backend.sampling import samplers
from poe_backend.sampling.experts import BACKWARD_PASSES, ProductOfExperts


def planned_nfe(sampler: str, levels: list[float], *, num_experts: int, langevin_steps: int = 0, total_weight: float | None = None, transport: samplers.Transport = "euler") -> int:
    """Exactly the ``SampleResult.nfe`` a run of ``sampler`` ("fkc", "annealed_langevin",
    "summed_velocity" or "ais") on ``levels`` will report, for ``num_experts`` generative
    experts whose exponents sum to ``total_weight`` (its largest element for map weights;
    default ``num_experts``) and fkc's ``transport`` (only "euler" takes substeps). Rewards
    cost nothing here (they are not expert forwards)."""
    total = float(num_experts if total_weight is None else total_weight)
    gaps = list(zip(levels[:-1], levels[1:]))
    if sampler == "summed_velocity":
        per_expert = len(gaps)
    elif sampler == "ais":
        per_expert = len(levels) * (1 + langevin_steps)
    elif sampler == "annealed_langevin":
        per_expert = 1 + sum(1 + langevin_steps for _, t_next in gaps if t_next > 0.0)
    elif sampler == "fkc":
        per_expert = 1 + sum(len(samplers.transport_steps(total, t, t_next, transport)) + langevin_steps for t, t_next in gaps if t_next > 0.0)
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    return num_experts * per_expert


def transport_substeps(levels: list[float], total_weight: float) -> int:
    """Extra evaluations per expert the Feynman-Kac transport adds to ``levels`` (0 when
    every gap is stable as it is)."""
    return sum(len(samplers.transport_steps(total_weight, t, t_next, "euler")) - 1 for t, t_next in zip(levels[:-1], levels[1:]) if t_next > 0.0)


def planned_forwards(product: ProductOfExperts, planned: int) -> int:
    """Network forward-equivalents of a run of ``planned`` expert evaluations
    (:func:`planned_nfe`) on ``product``: every expert is evaluated equally often, and each
    round costs :meth:`ProductOfExperts.passes_per_round` (true CFG doubles an expert's
    forwards, a conditioning term adds its backward)."""
    return planned // len(product.factors) * product.passes_per_round()


def passes_per_round(expert_passes: Sequence[int], children: Collection[int] = ()) -> int:
    """:meth:`ProductOfExperts.passes_per_round` of a product not built yet: expert ``i``
    costs ``expert_passes[i]`` forwards per evaluation (2 with true CFG, 0 closed-form), and
    ``BACKWARD_PASSES`` more per forward when ``i`` is in ``children`` (a conditioned child)."""
    return sum(passes * (1 + BACKWARD_PASSES * (index in children)) for index, passes in enumerate(expert_passes))


def planned_autoregressive_nfe(sampler: str, levels: list[float], *, num_chunks: int, gibbs_sweeps: int, gibbs_t: float, num_experts: int, langevin_steps: int = 0,
                               total_weight: float | None = None, transport: samplers.Transport = "euler") -> int:
    """Exactly the ``AutoregressiveResult.nfe`` of
    :func:`poe_backend.sampling.autoregressive.sample_autoregressive` over ``num_chunks``
    chunks whose products all have ``num_experts`` experts (exponents summing to
    ``total_weight``): a first pass of ``sampler`` over ``levels`` per chunk and, after chunk
    ``c >= 1``, ``gibbs_sweeps`` sweeps re-drawing chunks ``0..c`` over ``[gibbs_t]`` and
    the levels below it (its rule), each run costing :func:`planned_nfe`."""
    costs = {"num_experts": num_experts, "langevin_steps": langevin_steps, "total_weight": total_weight, "transport": transport}
    sweep_levels = [gibbs_t] + [t for t in levels if t < gibbs_t]
    redraws = gibbs_sweeps * sum(chunk + 1 for chunk in range(1, num_chunks))
    return num_chunks * planned_nfe(sampler, levels, **costs) + redraws * planned_nfe(sampler, sweep_levels, **costs)
