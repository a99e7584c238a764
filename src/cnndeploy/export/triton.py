"""`cnndeploy export RUN_DIR... --triton-repo DIR`: a Triton Inference Server model repository.

One Triton model per deployable file of each run directory (Triton's model repository layout):

    DIR/.cnndeploy-triton-repo           marks the folder as written by us; we write into no other
    DIR/<model>/config.pbtxt             platform/backend, I/O read from the ONNX file, batching, instances
    DIR/<model>/labels.txt               one class name per logit (Triton's classification extension)
    DIR/<model>/1/model.onnx | model.plan

Every config.pbtxt is parsed back with protobuf's text_format against `ModelConfig` from the
tritonclient package (Triton's own schema), and every ONNX model is run once by onnxruntime
with exactly the input names, data types and dims its config declares, before the model's
folder is moved into place: a model folder is complete or absent, never half-written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnndeploy import __version__
from cnndeploy.artifacts import files as layout, lock
from cnndeploy.artifacts.variants import discover
from cnndeploy.errors import CnnDeployError
from cnndeploy.fileio import write_bytes_atomic
from cnndeploy.runtime.classifier import check_external_data

log = logging.getLogger("cnndeploy")

MARKER = ".cnndeploy-triton-repo"
LABELS = "labels.txt"
VERSION = "1"

# ONNX TensorProto element types -> Triton data types (model_config.proto's DataType)
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                  12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
             "plan": ("tensorrt_plan", "tensorrt", "model.plan")}


class TritonError(CnnDeployError):
    """A Triton model repository could not be written or failed its checks."""


@dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (32, 128)
    max_queue_delay_us: int = 100    # how long Triton may hold a request to fill a preferred batch
    instance_kind: str = "cpu"       # onnxruntime models: cpu or gpu (TensorRT plans are always gpu)
    instance_count: int = 1          # per GPU for gpu, in all for cpu


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str           # TYPE_FP32, ...
    dims: tuple[int, ...]    # without the batch axis when the model batches; -1 for a free axis


@dataclass(frozen=True)
class Variant:
    """One deployable file of a run directory and how Triton serves it (named for Triton, not bench)."""

    suffix: str              # appended to the run directory's name to name the Triton model
    file: Path               # copied to <model>/1/
    kind: str                # "onnx" or "plan"
    io_source: Path          # the ONNX file whose graph declares the I/O (the plan's source for engines)
    instance_kind: str | None = None  # forced kind, else the options'


def require_model_config():
    """Triton's ModelConfig protobuf message class, from tritonclient (the `triton` extra)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise TritonError("--triton-repo checks every config.pbtxt against Triton's ModelConfig schema from "
                          "the tritonclient package, which is not installed: pip install 'cnndeploy[triton]' "
                          "(or pip install 'tritonclient[grpc]')") from None
    return model_config_pb2.ModelConfig


# --- what to export ----------------------------------------------------------------------------

def variants(run: Path) -> list[Variant]:
    """Every file of `run` the run-directory table gives a Triton name: FP32, FP16, uint8-input and
    INT8 ONNX files, and TensorRT engines (as plans)."""
    onnx = run / layout.ONNX
    if not onnx.is_file():
        raise TritonError(f"{onnx} not found: export it first with 'cnndeploy export {run} --onnx' "
                          "(or add --onnx to this command)")
    found: list[Variant] = []
    for file in discover(run, classifiers_only=False):
        spec = file.spec
        if spec.triton_suffix is None:
            continue
        if spec.kind == "onnx":
            found.append(Variant(spec.triton_suffix, file.path, "onnx", file.path, spec.triton_instance))
            continue
        source = file.source
        if source is None or not source.is_file():
            raise TritonError(f"{spec.name} needs {spec.source} beside it to declare its inputs and outputs")
        twin = next((v.file.name for v in found if v.suffix == spec.triton_suffix), None)
        if twin:  # same precision for another TensorRT or GPU: the server can load only one of them
            raise TritonError(f"{run} holds two {spec.precision} engines ({twin}, {spec.name}); keep the one "
                              "built for the serving GPU and TensorRT version")
        found.append(Variant(spec.triton_suffix, file.path, "plan", source, spec.triton_instance))
    for engine in sorted(run.glob("*.engine")):
        if layout.engine_spec(engine.name) is None:
            log.warning("%s: not named like an engine of 'cnndeploy export --trt'; left out", engine)
    return found


def model_name(run: Path) -> str:
    """The run directory's name, in the characters Triton and every filesystem accept."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", run.resolve().name).lstrip(".")
    return name or "model"


# --- reading the ONNX file ---------------------------------------------------------------------

def _tensor(value_info, batched: bool) -> Tensor:
    ttype = value_info.type.tensor_type
    if ttype.elem_type not in ONNX_TO_TRITON:
        raise TritonError(f"{value_info.name}: ONNX element type {ttype.elem_type} has no Triton data type")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
    return Tensor(value_info.name, ONNX_TO_TRITON[ttype.elem_type], dims[1:] if batched else dims)


def read_io(path: Path) -> tuple[list[Tensor], list[Tensor], bool, dict[str, str]]:
    """Inputs, outputs, whether axis 0 is a free batch axis on all of them, and the metadata props."""
    import onnx

    check_external_data(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... on a damaged file
        raise TritonError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise TritonError(f"{path} keeps its weights in a separate file; expected them inside the .onnx file")
    init = {t.name for t in model.graph.initializer}
    graph_in = [v for v in model.graph.input if v.name not in init]
    every = graph_in + list(model.graph.output)

    def free_batch(v) -> bool:
        dims = v.type.tensor_type.shape.dim
        return len(dims) > 0 and not dims[0].HasField("dim_value")

    batched = bool(every) and all(free_batch(v) for v in every)
    meta = {p.key: p.value for p in model.metadata_props}
    return ([_tensor(v, batched) for v in graph_in], [_tensor(v, batched) for v in model.graph.output],
            batched, meta)


def class_labels(meta: dict[str, str], where: Path, width: int) -> list[str]:
    """The class names the file carries (metadata_props "classes"), one per logit."""
    import json

    try:
        classes = json.loads(meta["classes"])
    except (KeyError, ValueError):
        raise TritonError(f"{where} carries no 'classes' metadata; expected a file written by "
                          "'cnndeploy export --onnx' or 'cnndeploy quant'") from None
    if not isinstance(classes, list) or len(classes) != width:
        raise TritonError(f"{where}: {len(classes) if isinstance(classes, list) else 'no'} class names "
                          f"for {width} logits; expected one per logit")
    return [" ".join(str(c).split()) or f"class_{i}" for i, c in enumerate(classes)]  # one line each


# --- config.pbtxt ------------------------------------------------------------------------------

def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _input_text(t: Tensor) -> str:
    layout = {3: "FORMAT_NCHW" if t.data_type != "TYPE_UINT8" else "FORMAT_NHWC"}.get(len(t.dims))
    fmt = f"\n    format: {layout}" if layout else ""
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}{fmt}\n    dims: {_dims(t.dims)}\n  }}'


def _output_text(t: Tensor, labels: bool) -> str:
    label = f'\n    label_filename: "{LABELS}"' if labels else ""
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: {_dims(t.dims)}{label}\n  }}'


def config_text(name: str, variant: Variant, inputs: list[Tensor], outputs: list[Tensor], *,
                max_batch_size: int, options: TritonOptions, source: str) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig), commented for a reader."""
    platform, backend, filename = PLATFORMS[variant.kind]
    kind = (variant.instance_kind or options.instance_kind).upper()
    lines = [f"# Written by cnndeploy {__version__} from {source}; re-export to regenerate.",
             f'name: "{name}"', f'platform: "{platform}"', f'backend: "{backend}"',
             f'default_model_filename: "{filename}"', f"max_batch_size: {max_batch_size}",
             "input [\n" + ",\n".join(_input_text(t) for t in inputs) + "\n]",
             # the first output is the logits: its labels make Triton return "score:index:name"
             "output [\n" + ",\n".join(_output_text(t, i == 0) for i, t in enumerate(outputs)) + "\n]"]
    preferred = [b for b in options.preferred_batch_sizes if b <= max_batch_size]
    if max_batch_size > 0:
        lines.append("dynamic_batching {\n"
                     + (f"  preferred_batch_size: {_dims(tuple(preferred))}\n" if preferred else "")
                     + f"  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {options.instance_count}\n    kind: KIND_{kind}\n  }}\n]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    return "\n".join(lines) + "\n"


def parse_config(text: str, where: str):
    """The ModelConfig message of a config.pbtxt; a TritonError naming the problem if it is not one."""
    from google.protobuf import text_format

    model_config = require_model_config()
    try:
        return text_format.Parse(text, model_config())
    except text_format.ParseError as e:
        raise TritonError(f"{where} does not follow Triton's ModelConfig schema: {e}") from None


def check_config(config, name: str, inputs: list[Tensor], outputs: list[Tensor], where: str) -> None:
    """The parsed config says what the ONNX graph has: same name, I/O names, types and dims."""
    from tritonclient.grpc import model_config_pb2 as pb

    def declared(items) -> list[Tensor]:
        return [Tensor(t.name, pb.DataType.Name(t.data_type), tuple(t.dims)) for t in items]

    problems = []
    if config.name != name:
        problems.append(f"name {config.name!r} is not the folder's {name!r}")
    if declared(config.input) != inputs:
        problems.append(f"inputs {declared(config.input)} differ from the ONNX graph's {inputs}")
    if declared(config.output) != outputs:
        problems.append(f"outputs {declared(config.output)} differ from the ONNX graph's {outputs}")
    if problems:
        raise TritonError(f"{where}: " + "; ".join(problems))


def run_as_declared(config, onnx_path: Path, batch: int = 2) -> dict[str, np.ndarray]:
    """Run `onnx_path` in onnxruntime with exactly the inputs `config` declares; check the outputs too.

    A batched config gets `batch` items prepended to its dims, as Triton does.
    """
    from tritonclient.grpc import model_config_pb2 as pb
    from tritonclient.utils import triton_to_np_dtype

    from cnndeploy.runtime.runners import ort_session

    def np_type(data_type: int):
        return np.dtype(triton_to_np_dtype(pb.DataType.Name(data_type).removeprefix("TYPE_")))

    def shape(dims) -> list[int]:
        free = [1 if d < 0 else d for d in dims]
        return [batch, *free] if config.max_batch_size > 0 else free

    rng = np.random.default_rng(0)
    feeds = {}
    for t in config.input:
        dtype = np_type(t.data_type)
        if np.issubdtype(dtype, np.integer):
            feeds[t.name] = rng.integers(0, 256 if dtype == np.uint8 else 2, size=shape(t.dims)).astype(dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape(t.dims)).astype(dtype)
    session = ort_session(onnx_path)
    try:
        got = session.run([t.name for t in config.output], feeds)
    except Exception as e:  # onnxruntime's own exception types for wrong names, types or shapes
        raise TritonError(f"{onnx_path} does not run with the inputs its config.pbtxt declares: {e}") from None
    for t, value in zip(config.output, got):
        want = [batch, *t.dims] if config.max_batch_size > 0 else list(t.dims)
        fits = len(value.shape) == len(want) and all(w < 0 or w == v for w, v in zip(want, value.shape))
        if value.dtype != np_type(t.data_type) or not fits:
            raise TritonError(f"{onnx_path}: output {t.name} is {value.dtype} {list(value.shape)}; "
                              f"config.pbtxt declares {pb.DataType.Name(t.data_type)} {want}")
    return dict(zip([t.name for t in config.output], got))


# --- the repository ----------------------------------------------------------------------------

def _refuse_a_file(repo: Path) -> None:
    if repo.exists() and not repo.is_dir():
        raise TritonError(f"--triton-repo {repo} is a file; expected a folder (new, empty, or written by "
                          "an earlier --triton-repo)")


def prepare_repo(repo: Path) -> None:
    """Accept `repo` if empty (but for the lock file its writer holds) or ours; refuse anything else
    before writing a byte."""
    _refuse_a_file(repo)
    if repo.is_dir() and not (repo / MARKER).is_file() and any(p.name != layout.LOCK for p in repo.iterdir()):
        raise TritonError(f"--triton-repo {repo} is not empty and was not written by cnndeploy (no {MARKER} "
                          "in it); choose a new or empty folder, nothing was written")
    write_bytes_atomic(repo / MARKER, b"Triton model repository written by 'cnndeploy export --triton-repo'.\n"
                                      b"Its model folders are replaced when the same run is exported again.\n")


def _staging_dir(repo: Path, name: str) -> Path:
    """A scratch folder on the repository's filesystem (for an atomic rename), outside it if possible.

    Outside, because a Triton server polling the repository would try to load a folder it finds there.
    """
    for parent in (repo.resolve().parent, repo):
        try:
            return Path(tempfile.mkdtemp(prefix=f".{repo.name}.{name}.", suffix=".tmp", dir=parent))
        except OSError:
            continue
    raise TritonError(f"cannot create a scratch folder beside or inside {repo}; expected a writable folder")


def _install(repo: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Build a model folder in a scratch folder, then rename it into place (replacing an older one)."""
    staging = _staging_dir(repo, name)
    final = repo / name
    try:
        build(staging)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; Triton may run as another user
        if final.exists():
            old = final.with_name(f".{name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except OSError as e:
        raise TritonError(f"cannot write {final}: {e.strerror or e}; nothing was written there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _build_model(folder: Path, name: str, variant: Variant, options: TritonOptions) -> dict[str, Any]:
    """Fill `folder` with config.pbtxt, labels.txt and 1/<file>, each checked; returns a summary."""
    inputs, outputs, batched, meta = read_io(variant.io_source)
    if not outputs:
        raise TritonError(f"{variant.io_source} has no outputs")
    max_batch = options.max_batch_size if batched else 0  # 0: Triton sends requests as they are
    if variant.kind == "plan" and max_batch > layout.ENGINE_MAX_BATCH:
        log.warning("%s: max_batch_size %d -> %d, the largest batch the engine's profile accepts",
                    name, max_batch, layout.ENGINE_MAX_BATCH)
        max_batch = layout.ENGINE_MAX_BATCH
    labels = class_labels(meta, variant.io_source, outputs[0].dims[-1] if outputs[0].dims else -1)
    text = config_text(name, variant, inputs, outputs, max_batch_size=max_batch, options=options,
                       source=f"{variant.file.parent.name}/{variant.file.name}")
    config = parse_config(text, f"{name}/config.pbtxt")
    check_config(config, name, inputs, outputs, f"{name}/config.pbtxt")
    (folder / "config.pbtxt").write_text(text)
    (folder / LABELS).write_text("\n".join(labels) + "\n")
    (folder / VERSION).mkdir()
    target = folder / VERSION / PLATFORMS[variant.kind][2]
    shutil.copyfile(variant.file, target)
    # the plan cannot run here; its I/O is its source ONNX file's, which can
    run_as_declared(config, target if variant.kind == "onnx" else variant.io_source)
    return {"model": name, "file": str(variant.file), "platform": config.platform,
            "max_batch_size": max_batch, "instance_kind": variant.instance_kind or options.instance_kind}


def write_triton_repo(run_dirs: list[str | os.PathLike], repo: str | os.PathLike, *,
                      options: TritonOptions = TritonOptions()) -> list[dict[str, Any]]:
    """Write one Triton model per deployable file of each run directory into `repo`; returns a summary."""
    _check_options(options)
    require_model_config()
    repo = Path(repo)
    planned: dict[str, tuple[Path, Variant]] = {}
    for run in map(Path, run_dirs):
        if not run.is_dir():
            raise TritonError(f"run directory not found: {run} (expected a folder made by 'cnndeploy train')")
        for variant in variants(run):
            name = model_name(run) + variant.suffix
            if name in planned:
                raise TritonError(f"two run directories would both become the Triton model {name!r} "
                                  f"({planned[name][0]} and {run}); rename one of them")
            planned[name] = (run, variant)
    _refuse_a_file(repo)
    with lock.writing(repo, command="cnndeploy export --triton-repo", what="--triton-repo"):
        prepare_repo(repo)
        written = []
        for name, (run, variant) in planned.items():
            summary: dict[str, Any] = {}
            _install(repo, name, lambda folder: summary.update(_build_model(folder, name, variant, options)))
            written.append(summary)
            log.debug("%s: %s -> %s", name, variant.file, repo / name)
        return written


def _check_options(options: TritonOptions) -> None:
    if options.max_batch_size < 1:
        raise TritonError(f"--max-batch-size {options.max_batch_size}: expected at least 1")
    too_big = [b for b in options.preferred_batch_sizes if b > options.max_batch_size]
    if too_big:
        raise TritonError(f"--preferred-batch-sizes {too_big} exceed --max-batch-size {options.max_batch_size}")
    if options.instance_kind not in ("cpu", "gpu"):
        raise TritonError(f"--triton-instances {options.instance_kind!r}: expected cpu or gpu")
    if options.instance_count < 1 or options.max_queue_delay_us < 0:
        raise TritonError("instance count must be at least 1 and the queue delay not negative")
