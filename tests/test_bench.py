import dataclasses

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
    # Kernels beating the VM's reported clock are recorded beside the peak, never raise it.
    boosted = cpu_peak(2, zen4, measured_gflops=230.0)
    assert boosted["fp32_gflops"] == nominal["fp32_gflops"] and boosted["measured_ceiling_gflops"] == 230.0
    assert "3.59" not in boosted["basis"] and "2.60 GHz" in boosted["basis"]
    assert cpu_peak(2, zen4, measured_gflops=100.0)["fp32_gflops"] == nominal["fp32_gflops"]
    intel = "vendor_id : GenuineIntel\ncpu family : 6\ncpu MHz : 2000.0\nflags : avx2 fma avx512f\n"
    assert cpu_peak(1, intel)["fp32_gflops"] == 2.0 * 64 and cpu_peak(1, intel)["int8_gops"] == 2 * 128.0
    assert cpu_peak(1, "flags : sse2\n")["fp32_gflops"] is None          # no clock: no made-up peak
    h200 = gpu_peak("NVIDIA H200")
    assert peak_for(h200, "int8-trt") == 1978.9e3 and peak_for(h200, "fp16") == 989.4e3
    assert gpu_peak("Mystery GPU")["fp32_gflops"] is None
    assert utilisation(1_000_000, 1000.0, 4.0) == (2.0, 0.5) and utilisation(None, 10.0, 1.0) == (None, None)


ZEN4 = ("vendor_id : AuthenticAMD\ncpu family : 25\nmodel name : AMD EPYC\ncpu MHz : {mhz}\nsiblings : {sib}\n"
        "cpu cores : {cores}\nflags : fpu avx2 fma avx512f avx512_vnni\n")


def test_cpu_peak_is_fixed_per_machine_and_states_its_basis():
    from cnndeploy.bench.peak import cpu_peak

    # The clock the VM reports wobbles in its last digits between boots; the peak must not.
    a = cpu_peak(2, ZEN4.format(mhz="2596.142", sib=2, cores=2))
    b = cpu_peak(2, ZEN4.format(mhz="2600.004", sib=2, cores=2))
    assert a["fp32_gflops"] == b["fp32_gflops"] == 166.4 and a["basis"] == b["basis"]
    assert (a["cores"], a["clock_ghz"], a["flops_per_cycle"]) == (2, 2.6, 32)
    for part in ("nominal", "2 cores", "2.60 GHz", "/proc/cpuinfo 'cpu MHz'", "32 FP32 FLOP/cycle",
                 "Zen 4", "256-bit", "INT8 4x"):
        assert part in a["basis"], part
    # SMT siblings share one core's FMA pipes: 4 threads on 2 cores count as 2 cores.
    smt = cpu_peak(4, ZEN4.format(mhz="2600", sib=4, cores=2), logical_cpus=4)
    assert smt["cores"] == 2 and smt["fp32_gflops"] == 166.4 and "4 threads share" in smt["basis"]
    assert cpu_peak(1, ZEN4.format(mhz="2600", sib=2, cores=2))["fp32_gflops"] == 83.2


def test_fp32_flops_per_cycle_follow_the_datapath_width():
    from cnndeploy.bench.peak import cpu_peak

    zen5 = ZEN4.format(mhz="3000", sib=1, cores=1).replace("family : 25", "family : 26")
    assert cpu_peak(1, zen5)["flops_per_cycle"] == 64           # Zen 5: 512-bit datapaths
    avx2 = ZEN4.format(mhz="3000", sib=1, cores=1).replace(" avx512f avx512_vnni", "")
    assert cpu_peak(1, avx2)["flops_per_cycle"] == 32 and cpu_peak(1, avx2)["int8_gops"] == 2 * 96.0
    intel = "vendor_id : GenuineIntel\ncpu family : 6\nmodel name : Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\n" \
            "cpu MHz : 3100.0\nflags : avx2 fma avx512f\n"
    rated = cpu_peak(1, intel)                                   # the rated clock, not the moving current one
    assert rated["clock_ghz"] == 2.4 and "model name" in rated["basis"] and rated["fp32_gflops"] == 2.4 * 64


def test_spread_is_the_relative_range_of_repeated_measurements():
    from cnndeploy.bench.timing import sample_ns, spread

    assert spread([100.0, 110.0, 90.0]) == pytest.approx(20 / 110)
    assert spread([13.0, 2812.0, 12.0]) < 1                 # a stalled round cannot make it meaningless
    assert spread([5.0, 5.0]) == 0 and spread([3.0]) is None and spread([]) is None
    assert len(sample_ns(lambda: None, warmup=0, min_calls=4, min_seconds=0)) == 4


def _row(variant, backend, batch, ips, spread, precision="fp32", **kw):
    from cnndeploy.artifacts.records import BenchRow

    return BenchRow(variant=variant, run=variant.split(":")[0], backend=backend, status="ok", file="f",
                    precision=precision, batch_size=batch, throughput_ips=ips, spread=spread, **kw)


def test_slower_flag_allows_for_the_measured_noise():
    from cnndeploy.bench.harness import _flag_slow_compression

    rows = [_row("m:fp32", "ort", 1, 176_737.0, 0.01), _row("m:fp16", "ort", 1, 175_997.0, 0.01, "fp16"),
            _row("m:fp32", "ort", 8, 1000.0, 0.15), _row("m:int8-cpu", "ort", 8, 900.0, 0.03, "int8-cpu"),
            _row("m:int8-cpu", "ort", 1, 100_000.0, 0.05, "int8-cpu"),
            _row("m:fp32", "torch", 1, 5000.0, 0.01), _row("m-p:fp32", "torch", 1, 4000.0, 0.02),
            _row("m-p:fp32", "ort", 1, 200_000.0, 0.01), _row("m-p:int8-cpu", "ort", 1, 150_000.0, None, "int8-cpu")]
    _flag_slow_compression(rows, {"m-p": "m"}, noise_floor=0.02)
    fp16, int8_8, int8_1, pruned_torch, pruned_ort, pruned_int8 = rows[1], rows[3], rows[4], rows[6], rows[7], rows[8]
    assert fp16.slower_than_parent is False and fp16.speed_vs_parent == pytest.approx(0.9958, abs=1e-4)
    assert fp16.flag_tolerance == 0.02                    # 0.4% gap, 1% spreads: the floor applies
    assert int8_8.slower_than_parent is False and int8_8.flag_tolerance == 0.15   # 10% gap inside a 15% spread
    assert int8_1.slower_than_parent is True and int8_1.parent == "m:fp32" and int8_1.parent_backend == "ort"
    assert pruned_torch.slower_than_parent is True and pruned_torch.parent == "m:fp32"   # the unpruned run's
    assert pruned_torch.parent_backend == "torch" and pruned_ort.slower_than_parent is False
    assert pruned_int8.parent == "m-p:fp32" and pruned_int8.slower_than_parent is True
    assert rows[0].parent is None and rows[0].slower_than_parent is None  # a parent is compared with nothing


ENV = {"cpu": "AMD EPYC", "cpu_flags": ["avx2"], "cores": 2, "threads": 1, "gpu": None, "git_commit": "abc",
       "versions": {"torch": "2"}, "peak": {"cpu": {"fp32_gflops": 166.4, "int8_gops": 665.6, "basis": "nominal",
                                                    "measured_ceiling_gflops": 230.0}, "gpu": None}}


def test_bench_markdown_summarises_skips_and_prints_no_placeholder_cells():
    from cnndeploy.artifacts.records import BenchRow
    from cnndeploy.bench.report import bench_markdown

    env = ENV
    rows = [BenchRow(variant="m:-", run="m", backend="tensorrt", status="skipped: no engine file in m (cmd --trt)"),
            BenchRow(variant="m-p:-", run="m-p", backend="tensorrt",
                     status="skipped: no engine file in m-p (cmd --trt)"),
            *[BenchRow(variant=v, run=v.split(":")[0], backend="ort-cuda", file="x.onnx", batch_size=b,
                       status="skipped: onnxruntime has no CUDAExecutionProvider")
              for v in ("m:fp32", "m:int8-cpu", "m-p:fp32") for b in (1, 8)],
            _row("m:fp32", "ort", 1, 1000.0, 0.01, accuracy=0.9, latency_ms_p50=1.0, macs=10**6),
            _row("m:int8-cpu", "ort", 1, 500.0, 0.01, "int8-cpu", accuracy=0.9, latency_ms_p50=2.0,
                 speed_vs_parent=0.5, slower_than_parent=True, parent="m:fp32", parent_backend="ort",
                 flag_tolerance=0.02),
            BenchRow(variant="m:fp16", run="m", backend="ort", file="y.onnx", batch_size=1,
                     status="failed: bad file")]
    config = {"rounds": 3, "min_seconds": 1.0, "noise_floor": 0.02}
    md = bench_markdown(rows, env, config)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 3                                     # header + the two measured rows
    assert "None" not in md and ":-" not in md and "peak MB" not in md   # CPU rows measure no memory
    assert "- tensorrt: no engine file (cmd --trt): m, m-p\n" in md
    assert "- ort-cuda: onnxruntime has no CUDAExecutionProvider (3 variants)\n" in md
    assert "- m:fp16 on ort: bad file" in md
    assert "3 interleaved rounds" in md and "at least 2%" in md and "thresholds used 2.0–2.0%" in md
    assert "| 0.50× | **yes** |" in md
    gpu = [dataclasses.replace(rows[-2], backend="tensorrt", peak_mem_mb=12.0, peak_mem_kind="cuda")]
    assert "peak MB" in bench_markdown(gpu, env, config)       # the GPU allocator's peak is exact
    assert "reached 230 GFLOP/s" in md and "138% of the nominal peak" in md and "not as the yardstick" in md


def _fake_run(folder, name, dataset, accuracy, test_images, parent=None):
    import json

    run = folder / name
    run.mkdir()
    card = {"model": "lenet5", "widths": {"conv": [6, 16], "fc": [120, 84]}, "classes": list("0123456789"),
            "channels": 1, "height": 28, "width": 28, "mean": [0.1], "std": [0.3], "dataset": dataset,
            "dataset_source": "mnist-idx" if dataset == "mnist" else "cifar10-jpeg"}
    (run / "model.json").write_text(json.dumps(card))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy, "test_images": test_images}))
    if parent:
        from cnndeploy.artifacts.records import PruneRecord

        def m(macs, acc):
            return {"macs": macs, "params": macs // 10, "test_accuracy": acc}

        PruneRecord(source_run=str(parent), amount=0.5, method="l2", round_to=8, finetune_epochs=1, finetune_lr=0.01,
                    finetune_precision="fp32", finetune_teacher=None, before=m(1000, 0.99),
                    pruned_before_finetune=m(500, 0.9), after_finetune=m(500, 0.98), macs_reduction=2.0, params_reduction=2.0, widths={}).write(run)
    return run


def test_paper_cell_of_a_subset_run_is_not_a_verdict_and_the_jpeg_note_needs_cifar(tmp_path):
    from cnndeploy.bench.report import _paper_table

    subset = _fake_run(tmp_path, "lenet5-mnist", "mnist", 0.9829, 2000)
    text = _paper_table([subset])
    assert "-0.82, not comparable (subset)" in text and "not beaten" not in text and "beaten" not in text
    assert "not comparable with the paper" in text and "JPEG" not in text
    full = _fake_run(tmp_path, "lenet5-cifar10", "cifar10", 0.60, 10_000)
    text = _paper_table([full])
    assert "(**not beaten**)" in text and "`cifar10-jpeg` is the JPEG" in text


def test_compression_table_compares_with_the_parent_on_the_same_backend_and_flags_every_batch(tmp_path):
    from cnndeploy.bench.report import _compression_table

    root = _fake_run(tmp_path, "m", "mnist", 0.99, 10_000)
    pruned = _fake_run(tmp_path, "m-p", "mnist", 0.98, 10_000, parent=root)

    def ok(variant, backend, file, precision, b, ips, **kw):
        return {"variant": variant, "run": variant.split(":")[0], "backend": backend, "file": file,
                "precision": precision, "batch_size": b, "status": "ok", "accuracy": 0.99, "size_bytes": 10**5,
                "macs": 10**6, "params": 1000, "latency_ms_p50": 1000 * b / ips, "throughput_ips": ips, **kw}

    rows = []
    for b, scale in ((1, 1), (64, 10)):
        rows += [ok("m:fp32", "torch", "model.safetensors", "fp32", b, 1000.0 * scale),
                 ok("m:fp32", "ort", "model.onnx", "fp32", b, 4000.0 * scale),
                 ok("m:int8-cpu", "ort", "model.int8-cpu.onnx", "int8-cpu", b, 2000.0 * scale,
                    speed_vs_parent=0.5, slower_than_parent=True, parent="m:fp32", parent_backend="ort"),
                 ok("m-p:fp32", "ort", "model.onnx", "fp32", b, 3960.0 * scale, speed_vs_parent=0.99,
                    slower_than_parent=False, parent="m:fp32", parent_backend="ort")]
    table = _compression_table(root, rows, {"m": root, "m-p": pruned})
    int8 = next(line for line in table.splitlines() if line.startswith("| INT8 (cpu) | ort |"))
    cells = [c.strip() for c in int8.split("|")]
    # × parent at batch 1 and 64 both flagged; × FP32 eager kept as the second figure
    assert cells[10:14] == ["0.50× ⚠ slower", "0.50× ⚠ slower", "2.00×", "2.00×"]
    pruned_line = next(line for line in table.splitlines() if line.startswith("| pruned 50% FP32 | ort |"))
    assert "0.99× (within noise)" in pruned_line and "⚠" not in pruned_line
    assert "× parent @ 1" in table and "× FP32 eager @ 64" in table
