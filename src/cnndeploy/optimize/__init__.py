"""`cnndeploy optimize`: the fastest deployable file within an accuracy budget, measured on this machine."""

from cnndeploy.optimize.config import OptimizeConfig, parse_duration
from cnndeploy.optimize.search import optimize_run

__all__ = ["OptimizeConfig", "optimize_run", "parse_duration"]
