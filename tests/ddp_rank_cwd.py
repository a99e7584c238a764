"""torchrun entry for tests/test_distributed.py: each rank runs `cnndeploy` in its own folder.

Rank r works in ./rank<r>/, so a relative --out shows on disk which ranks wrote (or read) the
run directory: only rank 0 may. Everything else is the real command line.
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(f"rank{os.environ['RANK']}")
    here.mkdir(exist_ok=True)
    os.chdir(here)
    from cnndeploy.cli import main

    raise SystemExit(main(sys.argv[1:]))
