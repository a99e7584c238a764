"""The README's walkthroughs, run as written from a checkout's root on the shipped MNIST subset.

Each `cnndeploy ...` line of the ```bash blocks of the sections below goes through
`cnndeploy.cli.main` in a folder laid out like a fresh clone (data/ is the repository's),
with no $CNNDEPLOY_DATA, so the README's relative paths and its missing --data-dir flags are
what is tested. `cnndeploy serve` is parsed and its demo built on the same run directories,
not launched.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path

import pytest
import servekit

from cnndeploy import cli
from cnndeploy.artifacts.variants import expand_run_dirs
from cnndeploy.data import load

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# In the order a reader needs them: the Triton example exports the run the Demo section trains.
SECTIONS = ("Compress, export, embed", "Optimize: the fastest file within an accuracy budget", "Demo",
            "Triton Inference Server")
SKIPPED = ("pip install", "docker run")   # installs and a container runtime: not this test's business

pytestmark = pytest.mark.slow


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def bash_commands(markdown: str) -> list[str]:
    """The command lines of the ```bash blocks, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def test_bash_commands_joins_continuations_and_drops_comments():
    text = "```bash\n# note\ncnndeploy a \\\n    --b 1   # why\n```\n```\nnot bash\n```\n"
    assert [shlex.split(c, comments=True) for c in bash_commands(text)] == [["cnndeploy", "a", "--b", "1"]]


def test_readme_walkthroughs_run_as_written(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)   # what a fresh clone has
    (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    text = README.read_text()
    ran, served = [], []
    for title in SECTIONS:
        commands = bash_commands(section(text, title))
        assert commands, f"no ```bash block in '## {title}'"
        for command in commands:
            argv = shlex.split(command, comments=True)
            if command.startswith(SKIPPED):
                continue
            assert argv[0] == "cnndeploy", f"'{command}' in '## {title}': not a cnndeploy command; " \
                                           "say in this test how to check it"
            if argv[1] == "serve":
                served.append(_check_serve(argv[1:]))
                continue
            if "--triton-repo" in argv:
                pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                    reason="tritonclient is not installed: pip install 'cnndeploy[triton]'")
            caplog.clear()
            monkeypatch.setattr(load, "_announced", set())  # each command is a new process in the README
            t = time.perf_counter()
            assert cli.main(argv[1:]) == 0, f"'{command}' in '## {title}' failed:\n{caplog.text}"
            ran.append((command, caplog.text))
            print(f"{time.perf_counter() - t:5.1f} s  {command}")  # where the time goes (pytest -s)
    # lenet5-mnist: weights, FP32 and INT8 ONNX; pruned: weights, ONNX; and OpenVINO's where installed
    openvino = servekit.on_openvino("lenet5-mnist", "fp32", "int8-cpu") | servekit.on_openvino("pruned", "fp32")
    assert served == [5 + len(openvino)]
    triton = [log for command, log in ran if "--triton-repo" in command]
    assert triton and "recorded in model.json" in triton[0]   # the README passes no --data-dir there
    assert (tmp_path / "runs" / "triton-models" / "lenet5-mnist" / "config.pbtxt").is_file()
    # Everything the walkthroughs write lies under runs/, which .gitignore covers.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "runs"]
    assert "/runs/" in (REPO / ".gitignore").read_text().splitlines()


def _check_serve(argv: list[str]) -> int:
    pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'cnndeploy[demo]'")
    from cnndeploy.serve.app import Demo

    args = cli.build_parser().parse_args(argv)
    demo = Demo(expand_run_dirs(args.run_dirs), max_file_size=args.max_file_size, concurrency=args.concurrency)
    return sum(len(g.members) for g in demo.groups)
