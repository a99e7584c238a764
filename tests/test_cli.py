import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, **kw)


def test_help_lists_commands_without_importing_torch():
    probe = ("import sys, contextlib, io\nfrom cnndeploy.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             "    try: main(['--help'])\n    except SystemExit: pass\n"
             "print('torch' in sys.modules, 'train' in out.getvalue(), 'eval' in out.getvalue())")
    assert _run("-c", probe).stdout.split() == ["False", "True", "True"]


def test_python_dash_m_and_usage_errors():
    ok = _run("-m", "cnndeploy", "--version")
    assert ok.returncode == 0 and ok.stdout.startswith("cnndeploy ")
    bad = _run("-m", "cnndeploy", "train", "--model", "vgg", "--dataset", "mnist")
    assert bad.returncode == 2 and "invalid choice: 'vgg'" in bad.stderr
    neg = _run("-m", "cnndeploy", "train", "--model", "lenet5", "--dataset", "mnist", "--epochs", "0")
    assert neg.returncode == 2 and "expected a positive integer" in neg.stderr


def test_reproduce_table1_smoke(mini_mnist, tmp_path):
    """The GPU script runs end to end on CPU with tiny settings and writes both result files."""
    proc = _run("benchmarks/reproduce_table1.py", "--smoke", "--only", "lenet5:mnist",
                "--data-dir", str(mini_mnist), "--out", str(tmp_path), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "table1-smoke-only-lenet5-mnist.json").read_text())
    (run,) = report["runs"]
    assert run["model"] == "lenet5" and run["paper"] == 0.9911 and 0 <= run["test_accuracy"] <= 1
    assert run["epochs"] == 1 and len(run["history"]) == 1
    assert "| lenet5 | mnist |" in (tmp_path / "table1-smoke-only-lenet5-mnist.md").read_text()
