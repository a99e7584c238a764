"""CPU training benchmarks, written to results/ and BENCHMARKS.md by hand.

    python benchmarks/cpu_train.py lenet      # default `cnndeploy train` of LeNet-5 on MNIST, wall time
    python benchmarks/cpu_train.py resnet20   # ResNet-20 on CIFAR-10 (JPEG) within a CPU-minute budget
    python benchmarks/cpu_train.py loader     # ResNet-18 images/s: our device-resident loop vs DataLoader
    python benchmarks/cpu_train.py precision  # train-step images/s: --precision fp32 (CPU default) vs bf16

Each prints one JSON object (also saved under results/) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def bench_lenet(data_dir: str) -> dict:
    """`cnndeploy train --model lenet5 --dataset mnist` with default settings, cold and warm cache."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CNNDEPLOY_CACHE": str(Path(tmp) / "cache")}
        for label in ("cold cache", "warm cache"):
            out = Path(tmp) / label.replace(" ", "-")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cnndeploy", "-q", "train", "--model", "lenet5",
                            "--dataset", "mnist", "--data-dir", data_dir, "--out", str(out), "--no-progress"],
                           check=True, env=env, cwd=REPO)
            wall = time.perf_counter() - t0
            metrics = json.loads((out / "metrics.json").read_text())
            results.append({"run": label, "wall_seconds": round(wall, 1),
                            "test_accuracy": metrics["test_accuracy"], "epochs": metrics["epochs"]})
    return {"benchmark": "lenet5 mnist default settings", "runs": results}


def _calibrate_epoch_seconds(ds, batch: int, steps: int = 15) -> float:
    """Seconds for one epoch of resnet20 training, from a few timed steps (fwd+bwd+step+data)."""
    import torch

    from cnndeploy.data.device import DeviceSplit, augment_for
    from cnndeploy.models import create_model

    model = create_model("resnet20", 10, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    split = DeviceSplit(ds.train_x[: batch * (steps + 3)], ds.train_y[: batch * (steps + 3)],
                        mean=ds.mean, std=ds.std, device=torch.device("cpu"))
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    times = []
    for x, y in split.batches(batch, generator=gen, augment=augment_for("cifar10"), drop_last=True):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times[3:])[len(times[3:]) // 2]
    return per_step * len(ds.train_y) / batch


def bench_resnet20(data_dir: str, budget_minutes: float) -> dict:
    from cnndeploy.data import load_dataset
    from cnndeploy.train.fit import TrainConfig, train

    ds = load_dataset("cifar10", data_dir=data_dir)
    recipe_batch = 256
    epoch_s = _calibrate_epoch_seconds(ds, recipe_batch)
    # Eval of 10k images costs about a third of a training epoch's forward+backward; keep 8% slack.
    epochs = max(1, int(budget_minutes * 60 * 0.92 / (epoch_s * 1.12)))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = train(TrainConfig(model="resnet20", dataset="cifar10", out=str(Path(tmp) / "r20"),
                                    epochs=epochs, batch_size=recipe_batch, device="cpu", data_dir=data_dir),
                        progress=False)
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(tmp) / "r20" / "log.jsonl").read_text().splitlines()]
    train_s = sum(r["train_seconds"] for r in log)
    compute_s = sum(r["compute_seconds"] for r in log)
    eval_s = sum(r["eval_seconds"] for r in log)
    return {"benchmark": "resnet20 cifar10-jpeg CPU budget", "budget_minutes": budget_minutes,
            "calibrated_epoch_seconds": round(epoch_s, 1), "epochs": epochs,
            "test_accuracy": metrics["test_accuracy"], "wall_seconds": round(wall, 1),
            "epochs_per_second": round(epochs / wall, 5),
            "train_images_per_second": metrics["train_images_per_second"],
            "share_outside_fwd_bwd_in_training": round((train_s - compute_s) / train_s, 4),
            "share_eval_of_wall": round(eval_s / wall, 4),
            "accuracy_per_epoch": [r["test_accuracy"] for r in log]}


def bench_loader(data_dir: str, steps: int, batch: int, warmup: int = 2) -> dict:
    """Side by side, interleaved: our resident-tensor batches vs a per-sample DataLoader pipeline."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from cnndeploy.data import load_dataset
    from cnndeploy.data.device import DeviceSplit, augment_for
    from cnndeploy.models import create_model

    ds = load_dataset("cifar10", data_dir=data_dir)
    mean = torch.tensor(ds.mean).view(3, 1, 1)
    std = torch.tensor(ds.std).view(3, 1, 1)

    class PerSample(Dataset):  # what a torchvision-style pipeline does, without torchvision
        def __len__(self):
            return len(ds.train_y)

        def __getitem__(self, i):
            x = torch.from_numpy(ds.train_x[i])
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = x[:, dy:dy + 32, dx:dx + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(2)
            return (x.float() / 255 - mean) / std, int(ds.train_y[i])

    def trainer():
        torch.manual_seed(0)  # the same initial weights for every pipeline
        model = create_model("resnet18", 10, 3, 32, 32)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return step

    split = DeviceSplit(ds.train_x, ds.train_y, mean=ds.mean, std=ds.std, device=torch.device("cpu"))
    # A DataLoader worker process would steal cores from the other pipeline's steps in this
    # interleaved scheme, so the baseline is the in-process loader on the same two cores.
    pipelines = {
        "ours": iter(split.batches(batch, generator=torch.Generator().manual_seed(0),
                                   augment=augment_for("cifar10"), drop_last=True)),
        "dataloader": iter(DataLoader(PerSample(), batch_size=batch, shuffle=True, num_workers=0,
                                      drop_last=True)),
    }
    steps_fn = {name: trainer() for name in pipelines}
    data_s: dict[str, list[float]] = {name: [] for name in pipelines}
    step_s: dict[str, list[float]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for i in range(warmup + steps):  # step-level interleaving: drift hits both pipelines alike
        for name in names[i % 2:] + names[:i % 2]:
            t0 = time.perf_counter()
            x, y = next(pipelines[name])
            t1 = time.perf_counter()
            steps_fn[name](x, y)
            t2 = time.perf_counter()
            if i >= warmup:
                data_s[name].append(t1 - t0)
                step_s[name].append(t2 - t1)
    ips = {n: round(steps * batch / (sum(data_s[n]) + sum(step_s[n])), 2) for n in names}
    return {"benchmark": "resnet18 cifar10 CPU training throughput, ours vs DataLoader",
            "batch_size": batch, "steps": steps, "warmup_steps": warmup, "images_per_second": ips,
            "ratio_ours_over_dataloader": round(ips["ours"] / ips["dataloader"], 4),
            "data_ms_per_batch_median": {n: round(1000 * statistics.median(v), 2) for n, v in data_s.items()},
            "step_ms_per_batch_median": {n: round(1000 * statistics.median(v), 1) for n, v in step_s.items()},
            "dataloader": "torch DataLoader (num_workers=0, shuffle) over a per-sample Dataset doing "
                          "crop+flip+normalise in __getitem__; same model, init, optimizer, batch size"}


def bench_precision(steps: int, batch: int, rounds: int = 3) -> dict:
    """Training steps per second of `train --precision` fp32 (NCHW) vs bf16 (autocast, NHWC) on CPU.

    Synthetic batches (the loop is compute-bound here, see `loader`); the configurations are
    interleaved round by round so that a noisy neighbour hits all of them alike.
    """
    import torch

    from cnndeploy.devices import cpu_has_bf16
    from cnndeploy.models import create_model
    from cnndeploy.train.loop import autocast_for

    cpu = torch.device("cpu")
    setups = {}
    for name, shape in (("resnet18", (3, 32, 32)), ("resnet20", (3, 32, 32)), ("lenet5", (1, 28, 28))):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = create_model(name, 10, *shape)
            x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
            if precision == "bf16":  # what fit.py does for bf16
                model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            setups[(name, precision)] = (model, opt, x, y)

    def step(model, opt, x, y, precision):
        with autocast_for(cpu, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds: dict[tuple, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for (name, precision), (model, opt, x, y) in setups.items():
            n = steps if name != "resnet18" else max(2, steps // 5)
            step(model, opt, x, y, precision)  # warm-up (oneDNN primitive creation)
            t0 = time.perf_counter()
            for _ in range(n):
                step(model, opt, x, y, precision)
            seconds[(name, precision)].append((time.perf_counter() - t0) / n)
    rows = {}
    for name in dict.fromkeys(k[0] for k in setups):
        ips = {p: batch / statistics.median(seconds[(name, p)]) for p in ("fp32", "bf16")}
        rows[name] = {"fp32_images_per_s": round(ips["fp32"], 1), "bf16_images_per_s": round(ips["bf16"], 1),
                      "bf16_speedup": round(ips["bf16"] / ips["fp32"], 2)}
    return {"batch_size": batch, "rounds": rounds, "cpu_has_bf16": cpu_has_bf16(), "train_step": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=("lenet", "resnet20", "loader", "precision"))
    ap.add_argument("--data-dir", default=os.environ.get("CNNDEPLOY_DATA", str(REPO.parent / "shared/datasets")))
    ap.add_argument("--budget-minutes", type=float, default=15.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args()
    if args.which == "lenet":
        result = bench_lenet(args.data_dir)
    elif args.which == "resnet20":
        result = bench_resnet20(args.data_dir, args.budget_minutes)
    elif args.which == "precision":
        result = bench_precision(args.steps, args.batch_size)
    else:
        result = bench_loader(args.data_dir, args.steps, args.batch_size)
    result = {**result, "machine": machine(), "command": " ".join(["python", *sys.argv])}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"cpu-{args.which}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
