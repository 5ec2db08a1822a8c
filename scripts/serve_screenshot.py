"""The README's screenshot of the browser app: start `motionstreamer serve` (the embedded model, its
defaults), open the page in headless Chromium, type a few prompts as a visitor would, and save a PNG.

    python scripts/serve_screenshot.py [--out docs/serve_page.png] [--seconds 10]

Take it on a quiet machine: the overlay shows the measured latency and frame rate."""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPTS = ["a person walks forward", "a person waves with the right hand", "a person turns to the left"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/serve_page.png")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the stream plays before the shot")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "motionstreamer", "serve", "--port", str(port),
                               "--log-level", "warning"])
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(url + "/?seed=3")
            page.wait_for_function("document.getElementById('status').textContent.includes('connected')"
                                   " || document.getElementById('model').textContent !== 'connecting…'")
            per_prompt = args.seconds / len(PROMPTS)
            for text in PROMPTS:
                page.fill("#prompt", text)
                page.press("#prompt", "Enter")
                page.wait_for_timeout(per_prompt * 1000)
            page.screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
