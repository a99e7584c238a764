import pytest

from cnndeploy.bench import environment, measure
from cnndeploy.bench.timing import stats_from_ns


def test_stats_use_nearest_rank_percentiles():
    s = stats_from_ns([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert (s.calls, s.p50_ms, s.p90_ms, s.p99_ms) == (100, 50.0, 90.0, 99.0)
    assert s.mean_ms == pytest.approx(50.5) and s.std_ms == pytest.approx(28.866, abs=1e-3)
    assert s.throughput(32) == pytest.approx(32 / 0.05)
    with pytest.raises(ValueError):
        stats_from_ns([])


def test_measure_warms_up_syncs_every_call_and_respects_budgets():
    calls, syncs = [], []
    stats = measure(lambda: calls.append(1), warmup=7, min_calls=25, min_seconds=0, sync=lambda: syncs.append(1))
    assert stats.calls == 25 and len(calls) == 32
    assert len(syncs) == 26  # once after warm-up, once inside every timed call
    capped = measure(lambda: None, warmup=0, min_calls=1, min_seconds=10, max_calls=50)
    assert capped.calls == 50


def test_environment_names_the_machine():
    env = environment(threads=2)
    assert env["cores"] >= 1 and env["threads"] == 2 and env["cpu"]
    assert env["versions"]["cnndeploy"] and env["versions"]["torch"]
    assert isinstance(env["cpu_flags"], list)
    assert env["gpu"] is None or {"name", "compute_capability"} <= set(env["gpu"])
