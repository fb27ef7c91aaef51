"""The cluster benchmark's discrete-event model (benchmarks/cluster_model.py) against cases
whose answers are known by hand."""

from __future__ import annotations

import collections
import math
import random

import pytest

from benchmarks.cluster_model import (
    POLICIES,
    Cluster,
    Head,
    JobKind,
    Policy,
    Study,
    Submission,
    Window,
    Workload,
    main,
    poisson_shots,
    saturation_gpus,
    simulate,
)

FREE_HEAD = Head(dispatch_s=0.0, status_cpu_s=0.0, poll_s=0.5, transfer_mib_s=math.inf)
FIFO = Policy(affinity=False, bundle_cache=False)
AFFINITY = Policy(affinity=True, bundle_cache=False, lookahead=8)
FLUX = JobKind("insertion", "flux", run_s=60.0, bundle_mib=(5.0, 5.0), output_mib=0.0)
WAN = JobKind("sim2video", "wan", run_s=60.0, bundle_mib=(5.0, 5.0), output_mib=0.0)


def jobs(kinds: list[JobKind], time_s: float = 0.0, bundle_mib: float = 5.0) -> list[Submission]:
    """One job of each of ``kinds`` at ``time_s``, each with its own bundle."""
    return [Submission(time_s, kind, index, bundle_mib) for index, kind in enumerate(kinds)]


@pytest.mark.parametrize("policy", [FIFO, AFFINITY])
def test_identical_jobs_without_overheads_run_at_gpus_over_job_time(policy):
    metrics = simulate(jobs([FLUX] * 40), Cluster(gpus=4, gpus_per_node=8, model_load_s=0.0), FREE_HEAD, policy, Window(0.0, 600.0))
    assert metrics.jobs_per_hour == pytest.approx(4 / 60 * 3600, rel=1e-12)
    assert metrics.gpu_utilisation == pytest.approx(1.0, rel=1e-12)
    assert metrics.mean_wait_s == pytest.approx(270.0)  # 10 rounds of 60 s: (0 + 60 + ... + 540) / 10
    assert metrics.head_cpu == 0.0 and metrics.head_network == 0.0


def test_fifo_reloads_every_job_of_a_paired_mix_and_affinity_keeps_models():
    """Two workers, jobs in pairs of one family (FLUX, FLUX, Wan, Wan, ...), 60 s loads: under
    FIFO both workers switch family at every job, so each job costs 120 s."""
    submissions = jobs([FLUX, FLUX, WAN, WAN] * 5)
    cluster, window = Cluster(gpus=2, gpus_per_node=2, model_load_s=60.0), Window(0.0, 600.0)
    fifo, affinity = (simulate(submissions, cluster, FREE_HEAD, policy, window) for policy in (FIFO, AFFINITY))
    assert fifo.jobs_per_hour == pytest.approx(2 / 120 * 3600)
    assert fifo.load_share == pytest.approx(0.5)
    assert affinity.jobs_per_hour > 1.5 * fifo.jobs_per_hour
    assert affinity.load_share < fifo.load_share / 2


@pytest.mark.parametrize("seed", range(6))
def test_affinity_is_never_slower_than_fifo_on_a_two_family_backlog(seed):
    rng = random.Random(seed)
    submissions = jobs([rng.choice([FLUX, WAN]) for _ in range(60)])
    cluster = Cluster(gpus=3, gpus_per_node=8, model_load_s=60.0)
    for end_s in (600.0, 1200.0, 1800.0):
        fifo, affinity = (simulate(submissions, cluster, FREE_HEAD, policy, Window(0.0, end_s)) for policy in (FIFO, AFFINITY))
        assert affinity.jobs_per_hour >= fifo.jobs_per_hour
        assert affinity.load_share <= fifo.load_share


def test_the_oldest_job_is_passed_over_at_most_lookahead_times():
    """One worker holding FLUX, then a Wan job and a stream of FLUX jobs behind it: with a
    look-ahead of 3 the Wan job runs after exactly 3 FLUX jobs passed it."""
    cluster = Cluster(gpus=1, gpus_per_node=1, model_load_s=60.0)
    submissions = jobs([FLUX]) + [Submission(1.0, WAN, 1, 5.0)] + [Submission(2.0, FLUX, 2 + index, 5.0) for index in range(10)]
    policy = Policy(affinity=True, bundle_cache=False, lookahead=3)
    # the first FLUX job: load 60 + run 60; then 3 FLUX jobs (60 s each); then the Wan job
    before_wan = simulate(submissions, cluster, FREE_HEAD, policy, Window(0.0, 300.0 + 60.0 + 60.0 - 1.0))
    with_wan = simulate(submissions, cluster, FREE_HEAD, policy, Window(0.0, 300.0 + 60.0 + 60.0))
    assert with_wan.jobs_per_hour * (420.0 / 3600) == pytest.approx(5)
    assert before_wan.jobs_per_hour * (419.0 / 3600) == pytest.approx(4)


def test_head_saturates_when_dispatch_cost_times_arrival_rate_reaches_one():
    """Two 10 s jobs a second on plenty of GPUs: a dispatch of 0.25 s keeps up (half the
    head's core); one of 1 s keeps the head busy and lets one job a second through."""
    short = JobKind("insertion", "flux", run_s=10.0, bundle_mib=(5.0, 5.0), output_mib=0.0)
    submissions = [Submission(index * 0.5, short, index, 5.0) for index in range(400)]
    cluster, window = Cluster(gpus=100, gpus_per_node=8, model_load_s=0.0), Window(100.0, 200.0)
    keeps_up, saturated = (
        simulate(submissions, cluster, Head(dispatch_s, 0.0, 0.5, math.inf), FIFO, window) for dispatch_s in (0.25, 1.0)
    )
    assert keeps_up.head_cpu == pytest.approx(0.5, rel=0.02)
    assert keeps_up.jobs_per_hour == pytest.approx(7200, rel=0.02)
    assert keeps_up.mean_wait_s == pytest.approx(0.25)
    assert saturated.head_cpu == pytest.approx(1.0, rel=0.02)
    assert saturated.jobs_per_hour == pytest.approx(3600, rel=0.02)
    # job k arrives at k / 2 s and starts at k + 1 s: those arriving in the window (k = 200..399)
    # start after it, so each counts its wait until the window's end
    assert saturated.mean_wait_s == pytest.approx(200 - 0.5 * 299.5)


def test_status_polls_take_the_head_first_and_slow_a_dispatch():
    """One active job polled every 0.5 s at 150 ms an answer: polls take 30 % of the core,
    so a 0.7 s dispatch takes 1 s, and the head's demand is 0.3 + 0.7 over the first 1 s."""
    head = Head(dispatch_s=0.7, status_cpu_s=0.15, poll_s=0.5, transfer_mib_s=math.inf)
    metrics = simulate(jobs([FLUX]), Cluster(gpus=1, gpus_per_node=1, model_load_s=0.0), head, FIFO, Window(0.0, 1.0))
    assert metrics.mean_wait_s == pytest.approx(1.0)
    assert metrics.head_polls == pytest.approx(0.3)
    assert metrics.head_cpu == pytest.approx(1.0)


@pytest.mark.parametrize(("gpus_per_node", "sends", "mean_wait_s"), [(4, 1, 1.0), (1, 4, 2.5)])
def test_the_bundle_cache_sends_a_shot_once_per_node(gpus_per_node, sends, mean_wait_s):
    """Four seeds of one 100 MiB bundle on 4 GPUs through a 100 MiB/s head: on one node the
    cache sends it once (every seed starts at 1 s); on four nodes, four times in turn."""
    head = Head(dispatch_s=0.0, status_cpu_s=0.0, poll_s=0.5, transfer_mib_s=100.0)
    submissions = [Submission(0.0, FLUX, 0, 100.0)] * 4
    cluster, window = Cluster(gpus=4, gpus_per_node=gpus_per_node, model_load_s=0.0), Window(0.0, 10.0)
    cached = simulate(submissions, cluster, head, Policy(affinity=False, bundle_cache=True), window)
    uncached = simulate(submissions, cluster, head, FIFO, window)
    assert cached.head_network == pytest.approx(sends * 100 / (100 * 10))
    assert cached.cache_hits == pytest.approx(1 - sends / 4)
    assert cached.mean_wait_s == pytest.approx(mean_wait_s)
    assert uncached.head_network == pytest.approx(0.4) and uncached.mean_wait_s == pytest.approx(2.5)


def test_saturation_is_interpolated_between_sizes_and_extrapolated_past_them():
    assert saturation_gpus([(10, 0.2), (100, 1.0)]) == pytest.approx(10 + 90 * 0.6 / 0.8)
    assert saturation_gpus([(10, 0.1), (20, 0.2)]) == pytest.approx(80)


def test_poisson_shots_offer_the_load_and_share_a_bundle_per_shot():
    workload = Workload(FLUX, WAN, video_share=0.5, seeds=4, load=0.9)
    submissions = poisson_shots(workload, gpus=50, seconds=36_000.0, seed=0)
    assert submissions == poisson_shots(workload, gpus=50, seconds=36_000.0, seed=0)
    offered = sum(submission.kind.run_s for submission in submissions) / (50 * 36_000.0)
    assert offered == pytest.approx(0.9, rel=0.05)
    assert set(collections.Counter(submission.bundle for submission in submissions).values()) == {4}


def test_a_study_runs_every_policy_at_both_loads_and_prints_its_tables(capsys):
    main(["--gpus", "10", "20", "--gpu-hours", "20", "--warmup-h", "0.5"])
    printed = capsys.readouterr().out
    assert "| 20 |" in printed and "the head reaches 80 % of its CPU at" in printed
    study = Study(Workload(FLUX, WAN, 0.3, 4, 0.9), FREE_HEAD, 0.9, 1.25, (10,), 8, 60.0, 8, warmup_s=0.0, gpu_hours=10.0, seed=0)
    assert study.window(10) == Window(0.0, 3600.0)
    assert set(study.run()) == {(load, 10, name) for load in (0.9, 1.25) for name in POLICIES}
    main(["--gpus", "10", "20", "--gpu-hours", "20", "--warmup-h", "0.5"])
    assert capsys.readouterr().out == printed  # deterministic
