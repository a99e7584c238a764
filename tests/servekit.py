"""Shared by the demo's tests: small real models trained once per session, and a live server.

Both test_serve_app.py and test_serve_browser.py need the same trained runs; a module-level cache
(this module is imported once per session) trains them once for both.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cnndeploy.serve.app import EXAMPLES

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MAX_FILE_SIZE = 200_000  # small, so an "oversized" test upload stays small too


@dataclass(frozen=True)
class Runs:
    mnist: Path
    always0: Path        # a broken "compressed" copy of mnist that always says 0 (see _always_zero)
    cifar: Path | None   # None where the CIFAR-10 archive is absent

    @property
    def all(self) -> list[Path]:
        return [self.mnist, self.always0] + ([self.cifar] if self.cifar else [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cifar_subset(archive: Path, out: Path, per_class_train: int = 300, per_class_test: int = 50) -> Path:
    """A cifar10-jpeg/ image folder with a class-balanced slice of the real archive (seconds, not 18 s)."""
    root = out / "cifar10-jpeg"
    with tarfile.open(archive) as tf:
        for member in tf:
            parts = member.name.split("/")
            if len(parts) != 3 or not member.isfile():
                continue
            split, cls, name = parts
            limit = per_class_train if split == "train" else per_class_test
            if int(Path(name).stem) < limit:
                dest = root / split / cls / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(member).read())
    return out


def _train_export_quant(*, dataset: str, data_dir: Path, out: Path, epochs: int, batch_size: int) -> Path:
    from cnndeploy.export import export_onnx
    from cnndeploy.quant import QuantConfig, quantize_run
    from cnndeploy.train.fit import TrainConfig, train

    train(TrainConfig(model="lenet5", dataset=dataset, out=str(out), data_dir=str(data_dir), epochs=epochs,
                      batch_size=batch_size, device="cpu"), progress=False)
    export_onnx(out, data_dir=str(data_dir))
    quantize_run(out, QuantConfig(target="cpu", calib_size=128), data_dir=str(data_dir))
    return out


def _always_zero(run: Path, out: Path) -> Path:
    """A copy of `run` whose ONNX file adds +100 to the logit of class "0", recorded as pruned from it.

    It stands in for a compressed variant gone wrong: it disagrees with its FP32 parent on every
    digit but 0, so the page has a disagreement to highlight, deterministically.
    """

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(run / "model.onnx"))
    graph = model.graph
    bias = np.zeros(10, np.float32)
    bias[0] = 100.0
    graph.initializer.append(numpy_helper.from_array(bias, "always_zero_bias"))
    graph.node.append(helper.make_node("Add", [graph.output[0].name, "always_zero_bias"], ["always_zero"]))
    graph.output[0].name = "always_zero"
    out.mkdir()
    onnx.save(model, str(out / "model.onnx"))
    for name in ("model.json", "metrics.json"):
        (out / name).write_bytes((run / name).read_bytes())
    from cnndeploy.artifacts.records import PruneRecord

    measured = {"macs": 436_000, "params": 61_706, "test_accuracy": 0.98}  # not pruned: the same network
    PruneRecord(source_run=str(run), amount=0.5, method="l2", round_to=8, finetune_epochs=1, finetune_lr=0.01,
                finetune_precision="fp32", finetune_teacher=None, before=measured,
                pruned_before_finetune=measured, after_finetune=measured, macs_reduction=1.0, params_reduction=1.0, widths={}).write(out)
    return out


def shared_datasets() -> Path | None:
    """The real datasets ($CNNDEPLOY_DATA, else ../shared/datasets), or None where they are absent."""
    root = Path(os.environ.get("CNNDEPLOY_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
    return root if root.is_dir() else None


@functools.cache
def trained_runs(root: Path, mini_mnist: Path, shared: Path | None) -> Runs:
    """LeNet-5 on the shipped MNIST subset (FP32 + INT8 + a broken copy) and on a CIFAR-10 slice.

    Sized for seconds on 2 cores: MNIST 2 epochs (about 94%), CIFAR-10 3 epochs on 3,000 images
    (about 30%: enough to check labels on the images it gets right).
    """
    mnist = _train_export_quant(dataset="mnist", data_dir=mini_mnist, out=root / "lenet5-mnist", epochs=2,
                                batch_size=128)
    always0 = _always_zero(mnist, root / "lenet5-mnist-always0")
    cifar = None
    archive = shared / "cifar10-jpeg.tar.gz" if shared else None
    if archive and archive.is_file():
        data = _cifar_subset(archive, root / "cifar-data")
        cifar = _train_export_quant(dataset="cifar10", data_dir=data, out=root / "lenet5-cifar10", epochs=3,
                                    batch_size=64)
    return Runs(mnist, always0, cifar)


def mnist_example(digit: int) -> Path:
    """A real MNIST test digit shipped with the package (file name: <label>_<index>.png)."""
    return sorted((EXAMPLES / "mnist").glob(f"{digit}_*.png"))[0]


def cifar_examples() -> list[tuple[Path, str]]:
    return [(p, p.stem.rsplit("_", 1)[0]) for p in sorted((EXAMPLES / "cifar10").glob("*.jpg"))]


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid, tiny PNG whose header declares width×height pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    # One compressed row of zeros is enough: the bomb is the header, never decoded that far.
    body = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """A real CIFAR-10 JPEG cut in half."""
    data = cifar_examples()[0][0].read_bytes()
    return data[: len(data) // 2]


def oversized_png(min_bytes: int) -> bytes:
    """A real, decodable PNG larger than `min_bytes` (random noise does not compress)."""
    import numpy as np

    side = int((min_bytes / 3) ** 0.5) + 64
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert buf.tell() > min_bytes
    return buf.getvalue()


def on_openvino(run: str, *precisions: str) -> set[str]:
    """The members OpenVINO adds where it is installed: every ONNX file, and bf16 of model.onnx on a bf16 CPU."""
    import importlib.util

    from cnndeploy.system import cpu_has_bf16

    if importlib.util.find_spec("openvino") is None:
        return set()
    extra = ("bf16",) if "fp32" in precisions and cpu_has_bf16() else ()
    return {f"{run}:{p}@openvino" for p in (*precisions, *extra)}
