"""The package's layering: every import (module-level or inside a function) points down.

    cli                      the command line
    pipeline | serve         the make-like pipeline, the Gradio demo
    optimize                 the accuracy-budgeted search over variants and backends
    quant | bench            INT8 quantization (it may export first), benchmarks
    export | train           ONNX/TensorRT/Triton export; training, evaluation, pruning
    runtime                  Classifier, runners per backend, the one accuracy loop
    data | models            dataset readers; networks, weights, MAC counts
    artifacts                the run-directory contract: file table, ModelCard, variants, records
    core                     errors, fileio, images, system, devices, the package itself

Groups on one line are independent: neither imports the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cnndeploy"
LAYERS = [  # top first; a layer's groups, each group the top-level modules or packages it holds
    [("cli", "__main__")],
    [("pipeline",), ("serve",)],
    [("optimize",)],
    [("quant",), ("bench",)],
    [("export",), ("train",)],
    [("runtime",)],
    [("data",), ("models",)],
    [("artifacts",)],
    [("", "errors", "fileio", "images", "system", "devices")],   # core; "": cnndeploy/__init__.py
]
GROUP = {name: (level, group[0] or "core") for level, groups in enumerate(LAYERS)
         for group in groups for name in group}
TORCH_FREE = ["runtime", "runtime.classifier", "runtime.topk", "runtime.accuracy", "runtime.evaluate",
              "runtime.runners", "runtime.onnxruntime_import", "runtime.optional", "artifacts", "artifacts.files",
              "artifacts.card", "artifacts.variants", "artifacts.records", "serve.lineup", "serve.tables"]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _group(module: str) -> tuple[int, str]:
    top = module.split(".")[0]
    if top not in GROUP:
        raise AssertionError(f"cnndeploy.{module} is in no layer of tests/test_layers.py: add it")
    return GROUP[top]


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported cnndeploy module without the prefix, inside a function?) for every import."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            for name in names:
                if name == "cnndeploy" or name.startswith("cnndeploy."):
                    found.append((child.lineno, name.removeprefix("cnndeploy").lstrip("."), inner))
            visit(child, inner)
    visit(tree, False)
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module(path)
        level, group = _group(me)
        seen = set()
        for line, target, _ in _imports(path):
            if target.split(".")[0] not in GROUP:   # `from cnndeploy.x import name`: name is no module
                continue
            their_level, their_group = _group(target)
            if their_group != group and their_level <= level and (line, their_group) not in seen:
                seen.add((line, their_group))
                bad.append(f"{path.relative_to(SRC)}:{line} imports cnndeploy.{target} "
                           f"({their_group} is not below {group})")
    return bad


def test_every_import_points_down():
    assert _violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The test itself can fail: an import from a higher layer is reported with file and line."""
    fake = tmp_path / "cnndeploy"
    (fake / "runtime").mkdir(parents=True)
    (fake / "bench").mkdir()
    (fake / "runtime" / "x.py").write_text("def f():\n    from cnndeploy.bench import harness\n")
    (fake / "bench" / "y.py").write_text("from cnndeploy.runtime import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert _violations() == ["cnndeploy/runtime/x.py:2 imports cnndeploy.bench (bench is not below runtime)"]


def test_the_torch_free_modules_import_no_torch_at_module_level():
    probe = "import importlib, sys\n" + "".join(f"importlib.import_module('cnndeploy.{m}')\n" for m in TORCH_FREE) \
        + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'gradio', 'tensorrt')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def onnx_only_run(tmp_path_factory, mini_mnist) -> Path:
    """A run directory holding model.json and model.onnx but no weights: what an app ships."""
    from test_reliability import tiny_run

    from cnndeploy.export import export_onnx

    run = tiny_run(tmp_path_factory.mktemp("onnx-only"))
    export_onnx(run, data_dir=str(mini_mnist))
    (run / "model.safetensors").unlink()
    return run


def test_eval_of_an_onnx_file_imports_no_torch(onnx_only_run, mini_mnist):
    probe = ("import json, sys, contextlib, io\nfrom cnndeploy.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             f"    code = main(['eval', {str(onnx_only_run / 'model.onnx')!r}, '--data-dir', {str(mini_mnist)!r}, "
             "'--json'])\n"
             "print(code, json.loads(out.getvalue())['n'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "2000", "False"]


def test_the_demo_starts_on_onnx_only_variants_without_torch(onnx_only_run, tmp_path):
    pytest.importorskip("gradio")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "digit.png")
    probe = ("import sys\nfrom PIL import Image\nfrom cnndeploy.serve.app import Demo\n"
             "from cnndeploy.serve import tables\nfrom cnndeploy.serve.lineup import classify\n"
             f"demo = Demo([{str(onnx_only_run)!r}], max_file_size=10**6, concurrency=1)\n"
             f"_, answers = classify(demo.groups[0], Image.open({str(tmp_path / 'digit.png')!r}))\n"
             f"rows = tables.model_rows(demo.runs)\n"
             "print(sorted(answers), len(rows), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False" and "'run:fp32@ort']" in out.stdout
