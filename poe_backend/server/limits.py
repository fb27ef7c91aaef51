"""What one job may plan on this server, checked at submit: a job over a limit is refused
with a 422 (``job_too_large``) that names the parameter most responsible, the planned cost
and the server option that raises the limit, instead of running for days.

The cost is the task's own (:meth:`poe_backend.tasks.base.Task.planned_cost`, a
:class:`~poe_backend.tasks.base.JobCost`), computed from the bundle and the validated
parameters alone: no model is loaded, no device touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Callable

from poe_backend.bundle import Bundle, BundleError
from poe_backend.server.errors import InputError

if TYPE_CHECKING:  # torch-free at import, so `poe-backend serve` reads the defaults for its options without torch
    from poe_backend.tasks.base import JobCost, Task, TaskParams


@dataclass(frozen=True)
class JobLimits:
    """Server options (``poe-backend serve --max-forwards ...``); defaults a single user
    does not hit by accident: each clears every task's default and heaviest quality
    setting by a wide margin (the planned costs they are set against are README.md's
    table under Running the backend; ``tests/server/test_job_limits.py`` checks that
    every one of those settings passes a quarter of every limit).

    * ``max_forwards``: network forwards. Every forward has a floor cost whatever the size
      (the weights are read once per forward; streamed over PCIe when offloaded), so the
      default is hours of work (an insertion of 256 particles, 500 levels and 50 Langevin
      steps plans 50,804 and is refused).
    * ``max_token_forwards`` (:attr:`JobCost.work`): forwards × particles × latent tokens,
      the FLOP-proportional measure; the default is about a day of FLUX by FLOP count.
    * ``max_pixels`` per image or frame: the largest the image tasks accept (``max_side`` ≤
      4096; videos stop at 1280), so by default every size the parameters allow passes (the
      memory planner refuses at run what a GPU cannot hold); a server that serves smaller
      sizes only lowers it.
    * ``max_total_pixels``: every frame of every particle, decoded and written (2³⁰ is
      12.9 GB as float32 RGB on the host)."""

    max_forwards: int = 20_000
    max_token_forwards: int = 1_000_000_000
    max_pixels: int = 4096 * 4096
    max_total_pixels: int = 2**30


@dataclass(frozen=True)
class Limit:
    """One :class:`JobLimits` field: what it bounds (``what``, read from a cost by
    ``measure``) and the ``poe-backend serve`` option that sets it."""

    name: str
    option: str
    what: str
    measure: Callable[[JobCost], int]


LIMITS = (
    Limit("max_forwards", "--max-forwards", "network forwards", attrgetter("forwards")),
    Limit("max_token_forwards", "--max-token-forwards", "token-forwards", attrgetter("work")),
    Limit("max_pixels", "--max-pixels", "pixels per image or frame", attrgetter("pixels")),
    Limit("max_total_pixels", "--max-total-pixels", "pixels over every particle and frame", attrgetter("total_pixels")),
)


def check_job_cost(task: Task, bundle: Bundle, params: TaskParams, limits: JobLimits) -> JobCost:
    """The planned cost of ``task`` on ``bundle`` with ``params`` (validated), or
    :class:`InputError`: ``job_too_large`` (422) for the limit the job exceeds by the widest
    factor, naming the parameter most responsible (:func:`most_responsible`);
    ``invalid_bundle`` where the run would refuse the bundle (a size above its cap, too few
    frames)."""
    cost = planned_cost(task, bundle, params)
    over = [(limit.measure(cost) / getattr(limits, limit.name), limit) for limit in LIMITS if limit.measure(cost) > getattr(limits, limit.name)]
    if not over:
        return cost
    _, limit = max(over, key=lambda item: item[0])
    raise too_large(task, bundle, params, cost, limit, getattr(limits, limit.name))


def planned_cost(task: Task, bundle: Bundle, params: TaskParams) -> JobCost:
    """:meth:`Task.planned_cost`, its :class:`BundleError` as an ``invalid_bundle``
    :class:`InputError` naming the same field."""
    try:
        return task.planned_cost(bundle, params)
    except BundleError as error:
        raise InputError(error.field, error.message, code="invalid_bundle") from None


def too_large(task: Task, bundle: Bundle, params: TaskParams, cost: JobCost, limit: Limit, allowed: int) -> InputError:
    """The 422 for ``cost`` over ``limit`` (``allowed`` on this server): the planned cost,
    the limit, its option and what the most responsible parameter would change."""
    field, reduced = most_responsible(task, bundle, params, limit.measure, limit.measure(cost))
    message = (f"this job plans {cost.describe()}; its {limit.measure(cost):,} {limit.what} are above this server's limit of {allowed:,} "
               f"(`poe-backend serve {limit.option}` raises it)")
    if reduced is not None:
        message += f"; params.{field} adds the most: at its default ({getattr(without(params, field).effective(), field)!r}) the job would plan {reduced:,}"
    else:
        message += "; ask for fewer particles, levels or langevin_steps, or a smaller size"
    return InputError("params" if reduced is None else f"params.{field}", message, code="job_too_large", status=422)


def most_responsible(task: Task, bundle: Bundle, params: TaskParams, measure: Callable[[JobCost], int], current: int) -> tuple[str, int | None]:
    """The parameter the caller (or the bundle) set whose removal lowers ``measure`` (now
    ``current``) the most, and the measure without it; ``("params", None)`` when no single
    one lowers it (the bundle itself is that large: a regional job's many boxed objects)."""
    best: tuple[str, int | None] = ("params", None)
    for name in sorted(params.model_fields_set):
        try:
            reduced = measure(task.planned_cost(bundle, without(params, name)))
        except ValueError:  # ValidationError (the others need it: toy2d's sampler names an expert of its spec), BundleError
            continue
        if reduced < current and (best[1] is None or reduced < best[1]):
            best = (name, reduced)
    return best


def without(params: TaskParams, name: str) -> TaskParams:
    """``params`` as if ``name`` had not been given (its default, or the preset's value);
    ValidationError where the other parameters need it."""
    return type(params).model_validate(params.model_dump(include=params.model_fields_set - {name}))
