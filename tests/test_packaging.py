"""Packaging: the torch-free runtime installs and runs with onnxruntime, numpy and pillow alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "embed_onnx.py"
PIP_TIMEOUT = 900  # a cold cache downloads onnxruntime, numpy and setuptools
# What pip prints when the registry cannot be reached; any other pip failure fails the test.
NETWORK_ERRORS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ReadTimeoutError",
                  "Connection refused", "ProxyError", "Max retries exceeded")


def _this_tree_env() -> dict[str, str]:
    """The main venv's environment with this checkout's src/ first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                        os.environ.get("PYTHONPATH")]))}


def _bare_env() -> dict[str, str]:
    """No PYTHONPATH or user site: the bare venv sees only what was installed into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                          timeout=PIP_TIMEOUT, env=_bare_env())
    if proc.returncode:
        out = proc.stdout + proc.stderr
        last = next((line for line in reversed(out.splitlines()) if line.strip()), "(no output)")
        if any(marker in out for marker in NETWORK_ERRORS):
            pytest.skip(f"pip could not reach the package registry: {last.strip()}")
        pytest.fail(f"pip {' '.join(args)} failed (exit {proc.returncode}):\n{out[-4000:]}")


def _source_copy(dst: Path) -> Path:
    """The working tree's build inputs (root files and src/) in dst.

    Building from a copy keeps build/ and *.egg-info out of the checkout, and no stale
    build/lib from an earlier build can leak removed modules into the wheel.
    """
    dst.mkdir()
    for f in REPO.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    shutil.copytree(REPO / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def test_onnxruntime_missing_names_both_extras():
    probe = ("import sys\nsys.modules['onnxruntime'] = None  # import onnxruntime now raises ImportError\n"
             "import cnndeploy.runtime.onnxruntime_import as m\n"
             "from cnndeploy.runtime import Classifier\n"
             "for call in (m.onnxruntime, lambda: Classifier('absent.onnx')):\n"
             "    try:\n        call()\n    except m.OnnxRuntimeMissing as e:\n        print(e)\n"
             "    else:\n        raise SystemExit('no OnnxRuntimeMissing raised')\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_this_tree_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    messages = proc.stdout.strip().splitlines()
    assert len(messages) == 2
    for message in messages:
        assert "cnndeploy[cpu]" in message and "cnndeploy[gpu]" in message, message


def test_embed_example_without_arguments_prints_usage():
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "usage" in proc.stderr.lower() and "embed_onnx.py" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_runtime_installs_and_runs_without_torch(mini_mnist, tmp_path):
    from cnndeploy.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(mini_mnist),
                 "--epochs", "1", "--out", str(run), "--subset", "256", "--no-progress"]) == 0
    assert main(["export", str(run), "--onnx", "--data-dir", str(mini_mnist)]) == 0
    onnx_path = run / "model.onnx"
    assert onnx_path.is_file()
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 13:16] = 255                                   # a "1"
    image = tmp_path / "digit.png"
    Image.fromarray(digit).save(image)

    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                          timeout=300, env=_bare_env())
    assert made.returncode == 0, f"python -m venv failed:\n{made.stdout}{made.stderr}"
    python = venv / "bin" / "python"
    _pip(python, "install", "onnxruntime", "numpy", "pillow")
    # The venv's own setuptools predates pyproject's build requirement: pip fetches one (build isolation).
    _pip(python, "install", "--no-deps", str(_source_copy(tmp_path / "source")))

    def bare(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=tmp_path,
                              env=_bare_env(), timeout=300)

    no_torch = bare("-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, no_torch.stderr

    probe = ("import json, sys, cnndeploy\nfrom cnndeploy.runtime import Classifier\n"
             f"c = Classifier({str(onnx_path)!r})\ntop = c.classify({str(image)!r})\n"
             "print(json.dumps({'top': top, 'file': cnndeploy.__file__}))\n"
             "assert 'torch' not in sys.modules, 'the runtime imported torch'\n")
    proc = bare("-c", probe)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert Path(result["file"]).resolve().is_relative_to(venv.resolve()), result["file"]  # the installed copy
    top = result["top"]
    assert len(top) == 3 and all(label in [str(i) for i in range(10)] for label, _ in top)

    proc = bare(str(EXAMPLE), str(onnx_path), str(image))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == [label for label, _ in top]
    assert abs(float(rows[0][1]) - top[0][1]) < 1e-3
