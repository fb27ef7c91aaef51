"""A cancel takes effect within one unit of work, not at the next sampler step: between two
micro-batches of an expert evaluation (the first step of a many-particle job can take
minutes), between two model loads (the cache keeps what loaded, whole), and so through the
real server, where the next job on the same backend runs as usual."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest
import torch

from poe_backend.families.flux.declaration import TEXT_ROLES
from poe_backend.models import lookup, specs
from poe_backend.runtime.cache import ModelCache
from poe_backend.sampling import SamplingCancelled, sample_ais
from poe_backend.sampling.run import stop_scope
from poe_backend.sampling.schedules import log_snr_levels
from poe_backend.toy.spec import parse_spec
from tests.server.conftest import QUICK, wait_for, write_bundle


def ring_spec(components: int) -> dict:
    """A toy2d spec: one 2-D mixture of ``components`` equal Gaussians on a circle of radius 3."""
    means = [[3.0 * math.cos(2 * math.pi * k / components), 3.0 * math.sin(2 * math.pi * k / components)] for k in range(components)]
    return {"experts": [{"type": "gmm", "weights": [1.0 / components] * components, "means": means, "covs": [[[0.2, 0.0], [0.0, 0.2]]] * components}]}


#: A toy2d job whose first sampler step is long: 100 000 particles of a 400-component
#: mixture, about 10 s per step on a 2-core machine (before micro-batching: in one batch, so
#: a cancel waited for the whole step; now about 40 micro-batches of ~0.15 s).
SLOW_FIRST_STEP = {"spec": ring_spec(400), "particles": 100_000, "levels": 4, "langevin_steps": 1}


def flag_set_after(reads: int) -> tuple[list[int], Callable[[], bool]]:
    """A cancel flag that turns on at its ``reads + 1``-th read; returns the read log and it."""
    log: list[int] = []

    def flag() -> bool:
        log.append(1)
        return len(log) > reads

    return log, flag


def test_a_cancel_lands_between_two_micro_batches_of_the_first_evaluation():
    """The flag turns on after the first micro-batch of the sampler's very first evaluation:
    the run stops there, before any step (no progress report), reading the flag once per
    micro-batch; outside the scope the same evaluation runs whole and matches the mixture's
    unbatched math."""
    product = parse_spec(ring_spec(400)).product()
    expert = product.factors[0].expert
    assert expert.max_batch == 2621  # 2^21 values per (P, K, D) intermediate
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2 * expert.max_batch, 2, generator=generator, dtype=torch.float64)
    reads, flag = flag_set_after(1)
    steps = []
    with stop_scope(flag), pytest.raises(SamplingCancelled):
        sample_ais(product, noise, log_snr_levels(4), generator=generator, callback=steps.append)
    assert steps == [] and len(reads) == 2
    log_density, score = expert.log_density_and_score(noise, 0.5)
    exact_log_density, exact_score = expert.mixture.noised(0.5).log_density_and_score(noise)
    assert torch.allclose(log_density, exact_log_density) and torch.allclose(score, exact_score)


@pytest.fixture(scope="module")
def own_data_dir(tmp_path_factory: pytest.TempPathFactory):
    """A data directory of this module's own, where the tiny FLUX family is built."""
    with specs.temporary_env(POE_DATA_DIR=str(tmp_path_factory.mktemp("poe-data")), HF_HUB_OFFLINE="1"):
        yield


def test_a_cancel_while_loading_keeps_what_loaded_whole_and_the_next_load_works(own_data_dir):
    """Cancelled once the first of FLUX's four text components has loaded: that one stays
    cached (and is the instance the next load returns), the others were never begun, and
    the next load outside the scope loads the rest."""
    cache = ModelCache()
    first = str(lookup.resolve(TEXT_ROLES[0], "tiny"))  # builds the tiny family once
    with stop_scope(lambda: bool(cache.loaded_models())), pytest.raises(SamplingCancelled):
        cache.load_encoders(TEXT_ROLES, "tiny", device="cpu", dtype=torch.float32)
    assert cache.loaded_models() == [first]
    kept = cache.load(TEXT_ROLES[0], "tiny", dtype=torch.float32)
    components, device = cache.load_encoders(TEXT_ROLES, "tiny", device="cpu", dtype=torch.float32)
    assert components[0] is kept and device == "cpu"
    assert cache.loaded_models() == sorted(str(lookup.resolve(role, "tiny")) for role in TEXT_ROLES)


def run_quick_job(client: httpx.Client, bundle: Path) -> str:
    """Run a small toy2d job to its end; returns its final state."""
    job = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
    return wait_for(client, job["id"], {"done", "failed", "cancelled"})["state"]


def test_the_server_cancels_a_job_inside_its_first_step_within_seconds(backend):
    """After a small job (the job process has imported the task), a slow one is cancelled
    about 0.5 s in, inside its first sampler step (~10 s): it ends "cancelled" within 3 s of
    the cancel (before this change: at the end of that step, 12-18 s), with no step
    reached, and the next job on the same backend is done."""
    client = backend.client()
    bundle = write_bundle(backend.data_dir / "b-first-step")
    assert run_quick_job(client, bundle) == "done"
    job = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": SLOW_FIRST_STEP}).json()
    wait_for(client, job["id"], {"running"})
    time.sleep(0.5)
    asked = time.monotonic()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    final = wait_for(client, job["id"], {"cancelled", "failed", "done"}, timeout=60)
    waited = time.monotonic() - asked
    assert final["state"] == "cancelled" and final["error"]["code"] == "cancelled", final
    assert final["progress"] is None and waited < 3.0, (waited, final["progress"])
    assert run_quick_job(client, bundle) == "done"

