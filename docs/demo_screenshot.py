"""Screenshot of `cnndeploy serve` for the README (docs/demo.png), taken by headless Chromium.

    python docs/demo_screenshot.py RUN_DIR... [--image PATH] [--out docs/demo.png]

Builds the demo on RUN_DIRs, serves it on a free loopback port, uploads one image in Chromium,
classifies it, and saves the page.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from playwright.sync_api import sync_playwright  # noqa: E402

from cnndeploy.serve.app import EXAMPLES, build_app, launch  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--image", default=str(EXAMPLES / "mnist" / "3_0018.png"))
    ap.add_argument("--out", default=str(REPO / "docs" / "demo.png"))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks = build_app(args.run_dirs)
    url = launch(blocks, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Upload").first.click()
            page.locator("#upload-0 input[type=file]").set_input_files(args.image)
            page.locator("#upload-0 img").first.wait_for()
            page.locator("#classify-0").click()
            page.locator("#predictions-0 tbody tr").first.wait_for()
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        blocks.close()
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
