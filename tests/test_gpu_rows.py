"""The CUDA rows' pure parts, on CPU: which rows exist where, the casts, the peaks they are held to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnndeploy.artifacts.files import WEIGHTS, row_label, spec
from cnndeploy.artifacts.variants import Variant
from cnndeploy.bench.peak import cpu_peak, gpu_peak, peak_for, utilisation
from cnndeploy.runtime import runners


def test_torch_fp16_bf16_rows_exist_only_with_cuda(tmp_path, monkeypatch):
    fp32 = Variant(tmp_path / "r", spec(WEIGHTS))
    monkeypatch.setattr(runners, "_cuda", lambda: False)
    assert runners.backend_variants("torch", fp32) == [fp32]          # absent on CPU, not skipped
    monkeypatch.setattr(runners, "_cuda", lambda: True)
    rows = runners.backend_variants("torch", fp32)
    assert [v.precision for v in rows] == ["fp32", "fp16", "bf16"]
    assert all(v.path == tmp_path / "r" / WEIGHTS for v in rows)       # the same weights, cast at load
    assert [v.name for v in rows[1:]] == ["r:fp16", "r:bf16"]
    assert row_label(WEIGHTS, "bf16") == "BF16 compute of FP32"
    assert runners.backend_variants("torch-compile", fp32) == [fp32]  # only eager torch casts


def test_torch_runner_casts_weights_and_inputs_and_returns_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    ref = runners.torch_model_runner(model)(x)
    out = runners.torch_model_runner(model, precision="bf16")(x)   # bf16 convolutions run on CPU too
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.allclose(out, ref, atol=0.1) and not np.array_equal(out, ref)   # computed in bf16, not fp32
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(KeyError):
        runners.torch_model_runner(model, precision="int4")


def test_peaks_per_precision_and_unknown_gpu():
    h200 = gpu_peak("NVIDIA H200")
    assert peak_for(h200, "bf16") == peak_for(h200, "fp16") == pytest.approx(989_400)
    assert peak_for(h200, "fp32") == pytest.approx(67_000)
    assert gpu_peak("NVIDIA H100 80GB HBM3")["bf16_gflops"] == pytest.approx(989_400)
    unknown = gpu_peak("Mystery GPU 9000")
    assert peak_for(unknown, "bf16") is None and "no utilisation" in unknown["basis"]
    assert utilisation(10**9, 1000.0, peak_for(unknown, "fp16")) == (2000.0, None)   # achieved, no share
    # ResNet-18 (CIFAR, ~0.56 GMACs) at 100k images/s on an H200 in bf16: 112 TFLOP/s, ~11% of peak
    gops, share = utilisation(556_000_000, 100_000.0, peak_for(h200, "bf16"))
    assert gops == pytest.approx(111_200) and share == pytest.approx(0.1124, abs=1e-4)
    cpu = cpu_peak(2, "model name\t: X @ 2.00GHz\nflags\t\t: avx2 fma\n")
    assert peak_for(cpu, "bf16") == cpu["fp32_gflops"] == 128.0          # a CPU record has no bf16 peak


def test_nvidia_smi_clocks_and_driver_parsed_from_its_csv(monkeypatch):
    import subprocess

    from cnndeploy.bench import env

    assert env.parse_nvidia_smi("1980 MHz, 3201 MHz, 570.86.15\n1755 MHz, 3201 MHz, 570.86.15\n") == {
        "driver": "570.86.15", "clocks": {"sm_mhz": 1980, "mem_mhz": 3201}}      # GPU 0's line
    assert env.parse_nvidia_smi("[N/A], 3201 MHz, 570.86.15")["clocks"] == {"sm_mhz": None, "mem_mhz": 3201}
    assert env.parse_nvidia_smi("") is None and env.parse_nvidia_smi("NVIDIA-SMI has failed") is None
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="1410 MHz, 2619 MHz, 560.1\n", stderr="")
    monkeypatch.setattr(env.subprocess, "run", fake_run)
    record = {"gpu": {"clocks_start": {"sm_mhz": 1980, "mem_mhz": 3201}, "clocks_end": None}}
    env.record_end_clocks(record)
    assert record["gpu"]["clocks_end"] == {"sm_mhz": 1410, "mem_mhz": 2619} and calls == [env.SMI_QUERY]
    cpu_only = {"gpu": None}
    env.record_end_clocks(cpu_only)
    assert cpu_only == {"gpu": None}

    def missing(cmd, **kw):
        raise FileNotFoundError("nvidia-smi")
    monkeypatch.setattr(env.subprocess, "run", missing)
    assert env.nvidia_smi() is None


def test_input_rotation_exceeds_l2_at_big_batches():
    from cnndeploy.bench.timing import rotation_count

    l2 = 60 * 2**20                                    # H200: 60 MiB (props.L2_cache_size)
    resnet_1024 = 1024 * 3 * 32 * 32 * 4               # 12 MiB a batch
    n = rotation_count(resnet_1024, l2)
    assert n == 8 or n * resnet_1024 > 2 * l2
    assert rotation_count(200 * 2**20, l2) == 2        # one batch above L2 still alternates two buffers
    assert rotation_count(3136, l2) == 8               # batch 1 of LeNet: capped
    assert rotation_count(resnet_1024, None) == 1      # CPU rows (no L2 given): one buffer as before


def test_default_batch_sizes_follow_the_backends(monkeypatch):
    from cnndeploy.bench.harness import default_batch_sizes

    monkeypatch.setattr(runners, "_cuda", lambda: False)
    assert default_batch_sizes(["torch", "ort"]) == [1, 32, 256]
    assert default_batch_sizes(["ort-cuda", "torch"]) == [1, 32, 256]   # torch is on the CPU here
    monkeypatch.setattr(runners, "_cuda", lambda: True)
    assert default_batch_sizes(["ort-cuda", "torch", "torch-compile"]) == [1, 64, 1024]
    assert default_batch_sizes(["ort-cuda", "ort"]) == [1, 32, 256]


def test_gpu_rows_time_rotated_buffers_with_a_sync(monkeypatch):
    """_time_round on a (faked) GPU row: every buffer is used and the device is synchronised."""
    from cnndeploy.bench import harness

    seen, syncs = [], []
    x = np.zeros((4, 1, 2, 2), np.float32)
    bufs = [x, x.copy(), x.copy()]
    job = harness._Loaded(variant=None, backend="ort-cuda", base={}, run=lambda a: seen.append(id(a)), accuracy=0.0,
                          load_seconds=0.0, memory=None, inputs={4: x}, rounds={4: []}, buffers={4: bufs})
    monkeypatch.setattr(harness, "_cuda_sync", lambda backend: lambda: syncs.append(1))
    harness._time_round(job, harness.BenchConfig(min_seconds=0.001, rounds=1))
    assert {id(b) for b in bufs} <= set(seen) and len(syncs) >= len(job.rounds[4][0])


class _FakeDeviceRunner:
    """A runner with the device-resident path, as TorchCudaRunner and OrtCudaRunner have."""

    def __init__(self):
        self.host_calls, self.device_calls = 0, 0

    def __call__(self, x):
        self.host_calls += 1
        return np.zeros((len(x), 3), np.float32)

    def to_device(self, x):
        return ("on-device", x.shape)

    def run_on_device(self, handle):
        assert handle[0] == "on-device"
        self.device_calls += 1

    def row_details(self, b):
        return {"compile_mode": "reduce-overhead", "compile_seconds": 1.5}


def test_device_rows_time_the_model_and_report_copies_separately(monkeypatch, tmp_path):
    from cnndeploy.bench import harness
    from cnndeploy.bench.memory import PeakMemory
    from cnndeploy.bench.report import bench_markdown

    fake = _FakeDeviceRunner()
    x = np.zeros((2, 1, 2, 2), np.float32)
    job = harness._Loaded(variant=Variant(tmp_path / "r", spec(WEIGHTS)), backend="torch-compile",
                          base={"variant": "r:fp32", "run": "r", "file": WEIGHTS, "backend": "torch-compile",
                                "precision": "fp32", "macs": 1000},
                          run=fake, accuracy=0.5, load_seconds=0.1, memory=PeakMemory(), inputs={2: x},
                          rounds={2: []}, buffers={2: [fake.to_device(x)]}, on_device=True)
    monkeypatch.setattr(harness, "_cuda_sync", lambda backend: None)
    cfg = harness.BenchConfig(min_seconds=0.002, rounds=2)
    for _ in range(cfg.rounds):
        harness._time_round(job, cfg)
    assert fake.device_calls >= 4 and fake.host_calls >= 2 and list(job.with_copies) == [2]
    [row] = harness._rows_of(job, {"cpu": {}, "gpu": None})
    assert row.timed == "device-resident I/O" and row.latency_ms_p50_with_copies > 0
    assert row.compile_mode == "reduce-overhead" and row.compile_seconds == 1.5
    from cnndeploy.bench import env

    monkeypatch.setattr(env, "measured_ceiling", lambda threads: None)   # no kernels timed for a record
    md = bench_markdown([row.to_json()], env.environment(1), None)
    assert "p50 ms incl. host copies" in md and "compile s (mode)" in md and "1.5 (reduce-overhead)" in md


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@needs_cuda
def test_torch_cuda_runner_compiles_one_module_per_batch_size():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).cuda().eval()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = runners.torch_model_runner(model, "cuda")(x)
    run = runners.TorchCudaRunner(model, "fp16", runners.COMPILE_MODE_CUDA)
    run(x[:1])
    run.prepare([1, 4])
    assert set(run.compiled) == {1, 4} and all(s > 0 for s in run.compile_seconds.values())
    assert np.allclose(run(x), ref, atol=0.05)
    assert run.row_details(4)["compile_mode"] == "reduce-overhead"


def test_environment_line_names_the_gpu_clocks_and_libraries(monkeypatch):
    from cnndeploy.bench import env
    from cnndeploy.bench.report import environment_line

    monkeypatch.setattr(env, "measured_ceiling", lambda threads: None)
    record = env.environment(1)
    record["gpu"] = {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "570.86.15", "cuda": "13.0",
                     "cudnn": 91000, "clocks_start": {"sm_mhz": 1980, "mem_mhz": 3201}, "clocks_end": None}
    line = environment_line(record)
    assert "CUDA 13.0, cuDNN 91000" in line and "1980/3201 MHz at start, unknown at end" in line


def test_ort_cuda_is_skipped_with_its_reason_without_the_provider(tmp_path):
    from cnndeploy.artifacts.files import ONNX
    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime().get_available_providers():
        pytest.skip("onnxruntime has the CUDA provider here")
    reason = runners.skip_reason("ort-cuda", Variant(tmp_path / "r", spec(ONNX)))
    assert reason == "onnxruntime has no CUDAExecutionProvider"


def test_gpu_int8_rows_are_flagged_where_slower_than_fp16(monkeypatch):
    from cnndeploy.artifacts.records import BenchRow
    from cnndeploy.bench import harness
    from cnndeploy.bench.report import _flag

    def row(precision, backend, ips, spread=0.01):
        return BenchRow(variant=f"r:{precision}", run="r", backend=backend, status="ok", precision=precision,
                        batch_size=64, throughput_ips=ips, spread=spread)
    rows = [row("fp32", "ort-cuda", 1000), row("fp16", "ort-cuda", 3000), row("int8-cpu", "ort-cuda", 1500),
            row("fp16", "ort", 900), row("int8-cpu", "ort", 800), row("int8-trt", "ort-cuda", 2990)]
    harness._flag_slow_compression(rows, {}, 0.02)
    flags = {(r.precision, r.backend): r.slower_than_fp16 for r in rows}
    assert flags[("int8-cpu", "ort-cuda")] is True
    assert flags[("int8-trt", "ort-cuda")] is False          # 0.3% slower: within the 2% floor
    assert flags[("int8-cpu", "ort")] is None                # CPU rows: INT8 kernels exist there
    assert flags[("fp32", "ort-cuda")] is None
    assert "slower than FP16" in _flag(rows[2].to_json()) and "FP16" not in _flag(rows[4].to_json())


def _has_ort_cuda() -> bool:
    from cnndeploy.runtime.onnxruntime_import import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime().get_available_providers()


@pytest.mark.skipif(not _has_ort_cuda(), reason="onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu)")
def test_ort_cuda_runner_binds_io_on_the_device(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    run = runners.OrtCudaRunner(runners.ort_session(path, "CUDAExecutionProvider"), str(path), 3)
    x = np.ones((2, 4), np.float32)
    bound = run.to_device(x)
    run.run_on_device(bound)
    assert np.allclose(bound[0].copy_outputs_to_cpu()[0], x @ w, atol=1e-4)
    assert np.allclose(run(x), x @ w, atol=1e-4)
