"""Bounded load test of `cnndeploy serve` on loopback: N concurrent gradio_client clients, M requests.

    python benchmarks/serve_load.py RUN_DIR... [--clients 16] [--requests 200] [--concurrency 4]

Starts `cnndeploy serve RUN_DIR... --host 127.0.0.1 --port <free port>` as a child process,
waits for it, then runs `--clients` threads, each with its own gradio_client, that call the
`classify` endpoint with the MNIST test digits shipped in the package until `--requests` calls
are done or `--deadline` seconds have passed. Then it stops the server it started. Latency is
end-to-end per request as a client sees it (upload + queue + every variant + JSON back).
Writes results/serve-load.json. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from cnndeploy.bench import environment  # noqa: E402
from cnndeploy.bench.timing import stats_from_ns  # noqa: E402
from cnndeploy.serve.app import EXAMPLES  # noqa: E402


def gradio_version() -> str:
    import gradio

    return gradio.__version__


def client_version() -> str:
    import gradio_client

    return gradio_client.__version__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dirs: list[str], port: int, concurrency: int, max_queue: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cnndeploy", "-q", "serve", *run_dirs, "--host", "127.0.0.1", "--port", str(port),
           "--concurrency", str(concurrency), "--max-queue", str(max_queue)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # Output to a file, not a pipe: an unread pipe that fills up would stall the server mid-test.
    with log.open("w") as sink:
        return subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer on {url} within {timeout:.0f} s")


class Load:
    """Shared by the client threads: a bounded ticket counter and the results."""

    def __init__(self, requests: int, deadline: float) -> None:
        self.tickets = itertools.count()
        self.requests, self.deadline = requests, deadline
        self.lock = threading.Lock()
        self.latencies_ns: list[int] = []
        self.model_ms: list[float] = []
        self.errors: list[str] = []

    def next_ticket(self) -> int | None:
        with self.lock:
            n = next(self.tickets)
        return n if n < self.requests and time.monotonic() < self.deadline else None

    def record(self, ns: int, answers: dict | None, error: str | None) -> None:
        with self.lock:
            if error:
                self.errors.append(error)
                return
            self.latencies_ns.append(ns)
            self.model_ms.append(sum(a["latency_ms"] for a in answers.values()))


def client_loop(url: str, load: Load, images: list[Path]) -> None:
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # a client that cannot even connect is a failure of every request it would make
        load.record(0, None, f"connect: {type(e).__name__}: {e}")
        return
    while (n := load.next_ticket()) is not None:
        t0 = time.perf_counter_ns()
        try:
            answers = client.predict(handle_file(str(images[n % len(images)])), api_name="/classify")
            ok = isinstance(answers, dict) and answers and all(a.get("labels") for a in answers.values())
            load.record(time.perf_counter_ns() - t0, answers, None if ok else f"malformed answer: {answers!r:.200}")
        except Exception as e:
            load.record(0, None, f"{type(e).__name__}: {str(e)[:200]}")


def run_load(url: str, clients: int, requests: int, seconds: float) -> tuple[Load, float]:
    images = sorted((EXAMPLES / "mnist").glob("*.png"))
    load = Load(requests, time.monotonic() + seconds)
    threads = [threading.Thread(target=client_loop, args=(url, load, images), daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    return load, time.perf_counter() - t0


def summary(load: Load, wall: float, args: argparse.Namespace) -> dict:
    done = len(load.latencies_ns)
    stats = stats_from_ns(load.latencies_ns) if done else None
    model = sorted(load.model_ms)
    env = environment()
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
            "machine": {k: env.get(k) for k in ("cpu", "cores", "cores_usable", "python", "platform")},
            "versions": {**(env.get("versions") or {}), "gradio": gradio_version(),
                         "gradio_client": client_version()},
            "git_commit": env.get("git_commit"),
            "server": {"runs": [Path(r).name for r in args.run_dirs], "concurrency": args.concurrency,
                       "max_queue": args.max_queue, "host": "127.0.0.1"},
            "clients": args.clients, "requests": args.requests, "completed": done,
            "failures": len(load.errors), "errors": load.errors[:10], "wall_seconds": round(wall, 2),
            "requests_per_second": round(done / wall, 2) if wall else None,
            "latency_ms": None if stats is None else {k: round(v, 1) for k, v in stats.as_dict().items()
                                                      if k != "calls"},
            "model_ms_per_request_p50": round(model[len(model) // 2], 2) if model else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4, help="the server's --concurrency")
    ap.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue")
    ap.add_argument("--deadline", type=float, default=300.0, help="stop sending after this many seconds")
    ap.add_argument("--out", default=str(REPO / "results" / "serve-load.json"))
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = REPO / "results" / "tmp" / "serve-load.server.log"  # ignored by git
    log.parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    server = start_server(args.run_dirs, port, args.concurrency, args.max_queue, log)
    try:
        wait_until_up(url, server, log)
        load, wall = run_load(url, args.clients, args.requests, args.deadline)
    finally:
        server.send_signal(signal.SIGINT)  # the server we started, by its own pid
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    result = {**summary(load, wall, args), "loadavg_1min_before": round(load_before, 2),
              "loadavg_1min_after": round(os.getloadavg()[0], 2)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("completed", "failures", "wall_seconds", "requests_per_second",
                                             "latency_ms", "model_ms_per_request_p50")}, indent=2))
    print(f"-> {args.out}")
    if result["failures"] or result["completed"] < args.requests:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
