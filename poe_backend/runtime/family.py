"""What every model family's runtime is: the contract a task reads from top to bottom
(task → family runtime → sampler → task) and the parts every family shares.

A family runtime owns, for one job, what a diffusers pipeline owns: its components (through
:data:`~poe_backend.runtime.cache.MODEL_CACHE`), encoded prompts cached across jobs
(:class:`PromptCache`), the plan of its transformers (:meth:`FamilyRuntime.plan`, through
:func:`~poe_backend.runtime.job_plan.plan_transformers`), the placed transformers
(:meth:`FamilyRuntime.planned_transformer`), the particles per expert forward its experts run
(:attr:`FamilyRuntime.micro_batch`: the planner's, or the task's ``max_batch``), freeing them
once before a decode that does not fit beside them (:meth:`FamilyRuntime.free_transformers`)
and the decode. Subclasses add
their conditions and experts: ``families/flux/runtime.py``, ``families/wan/runtime.py``,
``families/framepack/runtime.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Sequence, TypeVar

import torch
from torch import Tensor

from poe_backend.runtime.cache import MODEL_CACHE, default_dtype
from poe_backend.runtime.job_plan import JobPlan, describe
from poe_backend.runtime.planner import Budget
from poe_backend.sampling.experts import GenerativeExpert

Encoded = TypeVar("Encoded")


class PromptCache(Generic[Encoded]):
    """Encoded prompts kept across jobs, keyed by ``(*context, text)`` (context: preset,
    length, dtype... whatever changes the encoding), the least recently used dropped first
    beyond ``size``. A repeated prompt never loads its text encoders again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[Hashable, ...], Encoded] = OrderedDict()

    def get(self, context: tuple[Hashable, ...], texts: list[str], encode: Callable[[list[str]], list[Encoded]]) -> list[Encoded]:
        """The encodings of ``texts`` in order; ``encode`` (texts -> encodings, in order) is
        called once with the texts not cached, or not at all."""
        missing = [text for text in dict.fromkeys(texts) if (*context, text) not in self._entries]
        if missing:
            for text, encoded in zip(missing, encode(missing), strict=True):
                self._entries[(*context, text)] = encoded
        for text in texts:
            self._entries.move_to_end((*context, text))
        encodings = [self._entries[(*context, text)] for text in texts]
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return encodings


class FamilyRuntime:
    """Base of a family's runtime for one job on ``device`` with models of ``preset``.

    ``budget`` is what ``offload="auto"`` plans against: ``"detect"`` reads the device when
    the job plans (None off CUDA, where models stay in host memory). Subclasses implement
    ``roles`` (static: every role a job of theirs loads), ``encode_prompts``, ``plan`` (which
    sets :attr:`job_plan` through :func:`~poe_backend.runtime.job_plan.plan_transformers`
    from the job's ``particles``, the task's ``max_batch`` if any and, where the family has
    conditioned experts, the kinds that are ``conditioned``) and ``decode``."""

    def __init__(self, *, preset: str, device: str, dtype: torch.dtype | None, budget: Budget | None | str) -> None:
        self.preset, self.device = preset, str(device)
        self.dtype = default_dtype(self.device) if dtype is None else dtype
        self.budget = budget
        self.job_plan: JobPlan | None = None
        self._transformers_freed = False

    def encode_prompts(self, texts: list[str]) -> list[Any]:
        raise NotImplementedError

    def plan(self, *, offload: str = "auto", fp8_storage: bool = False, particles: int = 1, max_batch: int | None = None) -> JobPlan:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def planned_transformer(self, role: str) -> torch.nn.Module:
        """The transformer ``role``, loaded once per process and placed as :attr:`job_plan`
        says (``RuntimeError`` before the job planned it)."""
        if self.job_plan is None or role not in self.job_plan.placement.placements:
            raise RuntimeError(f"plan the transformer {role!r} first ({type(self).__name__}.plan)")
        return MODEL_CACHE.place(role, self.preset, self.job_plan.placement.placements[role], self.device, dtype=self.dtype)

    @property
    def micro_batch(self) -> int:
        """Particles per expert forward, as planned (``RuntimeError`` before :meth:`plan`)."""
        if self.job_plan is None:
            raise RuntimeError(f"plan the job first ({type(self).__name__}.plan)")
        return self.job_plan.micro_batch

    def free_transformers(self) -> None:
        """Give back this job's transformers' memory now, once (:meth:`ModelCache.give_back`:
        the job's experts still reference them); the next job loads them afresh."""
        if self.job_plan is not None and not self._transformers_freed:
            for role in self.job_plan.placement.placements:
                MODEL_CACHE.give_back(role, self.preset)
            self._transformers_freed = True

    def describe(self) -> dict[str, Any]:
        """The plan as JSON (``result.json``'s ``placement``)."""
        return describe(self.job_plan, self.device, self.dtype)


class CheckpointedExpert(GenerativeExpert):
    """A transformer expert (``self.transformer``, a diffusers model) whose conditioned
    (aligned) pass runs with the transformer's blocks gradient-checkpointed (diffusers'
    ``enable_gradient_checkpointing``, which acts only while autograd is on, so plain calls
    are unchanged and it stays on): the backward keeps one ``(B, tokens, hidden)`` input per
    block, through both CFG passes where there are two, instead of every block's
    activations (:func:`~poe_backend.runtime.planner.flux_conditioned_bytes`,
    :func:`~poe_backend.runtime.planner.wan_conditioned_bytes`: FLUX 1024² 2.19 GiB per
    particle, not ~20 GiB)."""

    transformer: torch.nn.Module

    def aligned_velocity(self, x: Tensor, t: float, targets: Sequence[Tensor], region: float | Tensor, weight: float) -> Tensor:
        if not self.transformer.is_gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        return super().aligned_velocity(x, t, targets, region, weight)
