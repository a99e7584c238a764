"""Benchmarking: timing statistics and the environment record (the harness comes with issue 4)."""

from cnndeploy.bench.env import environment
from cnndeploy.bench.timing import LatencyStats, measure

__all__ = ["LatencyStats", "environment", "measure"]
