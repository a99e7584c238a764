"""Every variant of the served run directories, loaded once, answering the same image side by side.

A *member* is one variant file on one backend (`lenet5-mnist:int8-cpu@ort`). Members are
grouped by what they take and predict (dataset, input shape, classes), so an MNIST model never
answers a CIFAR-10 picture in the page. Gradio-free: the app and the tests both use it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from cnndeploy.artifacts.files import PRECISION_ORDER
from cnndeploy.artifacts.records import source_run
from cnndeploy.artifacts.variants import Variant, discover
from cnndeploy.errors import CnnDeployError
from cnndeploy.runtime import topk
from cnndeploy.runtime.classifier import Classifier
from cnndeploy.runtime.onnxruntime_import import onnxruntime
from cnndeploy.runtime.runners import BACKENDS, backend_variants, make_runner, skip_reason
from cnndeploy.serve import inputs

log = logging.getLogger(__name__)
TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


class ServeError(CnnDeployError):
    """The demo cannot start with these run directories (the CLI prints it as one line)."""


@dataclass
class Member:
    run: str
    precision: str
    backend: str
    path: Path
    preprocess: Callable[[Image.Image], np.ndarray]   # picture -> normalised float32 CHW
    logits: Callable[[np.ndarray], np.ndarray]        # NCHW batch -> logits
    classes: list[str]
    reference: str | None = None   # name of the FP32 member this one is compared with

    @property
    def name(self) -> str:
        return f"{self.run}:{self.precision}@{self.backend}"


@dataclass
class Group:
    """Runs that share a dataset, an input shape and classes: one panel of the Classify tab."""
    dataset: str
    meta: dict[str, Any]          # the runtime metadata of the first ONNX file (mean, std, size...)
    members: list[Member] = field(default_factory=list)

    @property
    def title(self) -> str:
        return TITLES.get(self.dataset, Path(self.dataset).name or self.dataset)

    @property
    def digits(self) -> bool:
        """MNIST models get the drawing pad and white-on-black inversion."""
        return self.dataset == "mnist"

    def prepare(self, img: Image.Image, *, drawn: bool = False) -> Image.Image:
        """MNIST: white on black, and a drawing cropped and centred like MNIST's digits."""
        if not self.digits:
            return img
        digit = inputs.as_mnist_digit(img)
        return inputs.centre_digit(digit, (self.meta["width"], self.meta["height"])) if drawn else digit

    def view(self, prepared: Image.Image) -> Image.Image:
        """What the models saw, at their own resolution, enlarged for the page."""
        chw = self.members[0].preprocess(prepared)
        return inputs.model_view(chw, self.meta["mean"], self.meta["std"])


def default_threads(concurrency: int) -> int:
    """Intra-op threads per model: the cores shared by the requests served at once.

    More threads than cores/concurrency only makes concurrent requests fight for the cores.
    """
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


def _onnx_members(variant: Variant, classes: list[str], threads: int) -> list[Member]:
    providers = {"ort": ["CPUExecutionProvider"]}
    if "CUDAExecutionProvider" in onnxruntime().get_available_providers():
        providers["ort-cuda"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    members = []
    for backend, chosen in providers.items():
        clf = Classifier(variant.path, providers=chosen, threads=threads)
        members.append(Member(variant.run.name, variant.precision, backend, variant.path, clf.preprocess,
                              clf.logits, classes))
    return members + _openvino_members(variant, classes, threads)


def _openvino_members(variant: Variant, classes: list[str], threads: int) -> list[Member]:
    """The file on OpenVINO (and its bf16 compute where the CPU has it); none, logged, where absent."""
    reason = skip_reason("openvino", variant)
    if reason:
        log.info("%s not served on openvino: %s", variant.name, reason)
        return []
    members = []
    for v in backend_variants("openvino", variant):
        try:
            clf = Classifier(v.path, backend="openvino", threads=threads,
                             precision="bf16" if v.precision == "bf16" else "fp32")
            clf.runner.prepare([1])  # the demo answers one picture at a time: static batch 1 where faster
        except Exception as e:  # an optional backend failing must not take the onnxruntime members down
            log.warning("%s not served on openvino: %s", v.name, str(e).splitlines()[0][:200])
            continue
        members.append(Member(v.run.name, v.precision, "openvino", v.path, clf.preprocess, clf.logits, classes))
    return members


def _native_member(variant: Variant, base: Classifier, threads: int) -> Member | None:
    """Weights through torch, engines through TensorRT; None (logged) where that backend is absent."""
    backend = "torch" if variant.kind == "weights" else "tensorrt"
    reason = skip_reason(backend, variant)
    if reason:
        log.info("%s not served on %s: %s", variant.name, backend, reason)
        return None
    try:
        runner = make_runner(backend, variant, threads=threads)
    except Exception as e:  # an optional backend failing must not take the ONNX variants down
        log.warning("%s not served on %s: %s", variant.name, backend, str(e).splitlines()[0][:200])
        return None
    return Member(variant.run.name, variant.precision, backend, variant.path, base.preprocess, runner,
                  base.classes)


def _run_members(run_dir: Path, threads: int) -> tuple[dict, list[Member]]:
    variants = discover(run_dir)
    onnx = [v for v in variants if v.kind == "onnx"]
    if not onnx:
        raise ServeError(f"{run_dir} has no ONNX file; the demo serves exported models "
                         f"(run: cnndeploy export {run_dir} --onnx)")
    base = Classifier(onnx[0].path, threads=threads)  # every ONNX file of a run shares this metadata
    members = [m for v in onnx for m in _onnx_members(v, base.classes, threads)]
    members += [m for v in variants if v.kind != "onnx" if (m := _native_member(v, base, threads))]
    return base.meta, sorted(members, key=_order)


def _order(m: Member) -> tuple[int, int]:
    """FP32 first, then the compressed files; ONNX Runtime before the native backends."""
    backends = ("ort", "ort-cuda", *BACKENDS)
    order = PRECISION_ORDER.index(m.precision) if m.precision in PRECISION_ORDER else len(PRECISION_ORDER)
    return order, backends.index(m.backend)


def _group_key(meta: dict) -> tuple:
    return (meta["dataset"], meta["channels"], meta["height"], meta["width"], tuple(meta["classes"]))


def _parents(run_dirs: list[Path]) -> dict[str, str]:
    """Pruned run -> the run it was pruned from (by folder name), from prune.json."""
    return {run.name: parent.name for run in run_dirs if (parent := source_run(run))}


def _reference_for(member: Member, group: Group, parents: dict[str, str]) -> str | None:
    """The FP32 ONNX Runtime member of the run's unpruned parent (or of the run itself)."""
    fp32 = {m.run: m.name for m in group.members if m.precision == "fp32" and m.backend == "ort"}
    ref = fp32.get(parents.get(member.run, ""), fp32.get(member.run))
    return None if ref == member.name else ref


def _warm_up(member: Member) -> None:
    """First call pays for lazy initialisation; a visitor's first request should not."""
    x = member.preprocess(Image.new("RGB", (8, 8)))
    member.logits(x[None])


def load_groups(run_dirs: list[str | os.PathLike], *, threads: int = 1) -> list[Group]:
    """Load every variant of RUN_DIRs on every backend available here, grouped by dataset."""
    runs = [Path(r) for r in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ServeError(f"two run directories share a folder name ({', '.join(names)}); variant names "
                         "come from folder names, so give each run its own")
    groups: dict[tuple, Group] = {}
    for run in runs:
        meta, members = _run_members(run, threads)
        group = groups.setdefault(_group_key(meta), Group(meta["dataset"], meta))
        group.members += members
    parents = _parents(runs)
    for group in groups.values():
        for m in group.members:
            m.reference = _reference_for(m, group, parents)
            _warm_up(m)
    return list(groups.values())


def answer(member: Member, prepared: Image.Image, top_k: int = 3) -> dict[str, Any]:
    """Top-k of one member for one picture; the latency is this very call (preprocess included)."""
    t0 = time.perf_counter_ns()
    logits = member.logits(member.preprocess(prepared)[None])[0]
    pairs = topk.top_k(logits[None], member.classes, top_k)[0]
    labels, probs = [label for label, _ in pairs], [round(p, 6) for _, p in pairs]
    latency = (time.perf_counter_ns() - t0) / 1e6
    return {"run": member.run, "precision": member.precision, "backend": member.backend,
            "labels": labels, "probabilities": probs, "latency_ms": round(latency, 3)}


def classify(group: Group, img: Image.Image, top_k: int = 3, *,
             drawn: bool = False) -> tuple[Image.Image, dict[str, dict]]:
    """(the picture the models saw, {member name: answer}) with agreement against FP32 marked."""
    prepared = group.prepare(img, drawn=drawn)
    answers = {m.name: {**answer(m, prepared, top_k), "dataset": group.dataset} for m in group.members}
    for m in group.members:
        ref = answers.get(m.reference) if m.reference else None
        answers[m.name]["compared_with"] = m.reference
        answers[m.name]["agrees_with_fp32"] = None if ref is None else ref["labels"][0] == answers[m.name]["labels"][0]
    return group.view(prepared), answers
