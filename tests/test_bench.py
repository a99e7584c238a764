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


def test_cpu_peak_from_vector_units_clock_and_measured_ceiling():
    from cnndeploy.bench.peak import cpu_peak, gpu_peak, peak_for, utilisation

    zen4 = "vendor_id : AuthenticAMD\ncpu family : 25\ncpu MHz : 2600.0\nflags : fpu avx2 fma avx512f avx512_vnni\n"
    nominal = cpu_peak(2, zen4)
    assert nominal["fp32_gflops"] == 2 * 2.6 * 32 and nominal["int8_gops"] == 4 * nominal["fp32_gflops"]
    boosted = cpu_peak(2, zen4, measured_gflops=230.0)   # kernels beat the VM's base clock
    assert boosted["fp32_gflops"] == 230.0 and "3.59 GHz" in boosted["basis"]
    assert cpu_peak(2, zen4, measured_gflops=100.0)["fp32_gflops"] == nominal["fp32_gflops"]
    intel = "vendor_id : GenuineIntel\ncpu family : 6\ncpu MHz : 2000.0\nflags : avx2 fma avx512f\n"
    assert cpu_peak(1, intel)["fp32_gflops"] == 2.0 * 64 and cpu_peak(1, intel)["int8_gops"] == 2 * 128.0
    assert cpu_peak(1, "flags : sse2\n")["fp32_gflops"] is None          # no clock: no made-up peak
    h200 = gpu_peak("NVIDIA H200")
    assert peak_for(h200, "int8-trt") == 1978.9e3 and peak_for(h200, "fp16") == 989.4e3
    assert gpu_peak("Mystery GPU")["fp32_gflops"] is None
    assert utilisation(1_000_000, 1000.0, 4.0) == (2.0, 0.5) and utilisation(None, 10.0, 1.0) == (None, None)
