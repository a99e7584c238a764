"""Benchmarking: the harness (every variant x backend x batch size), timing, peaks, report and plots."""

from cnndeploy.bench.env import environment
from cnndeploy.bench.timing import LatencyStats, measure

__all__ = ["LatencyStats", "environment", "measure"]
