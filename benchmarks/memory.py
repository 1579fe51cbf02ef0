"""Peak memory of the app: `streamlit run streamlit_app.py` with the real data loaded and one job trained.

    python benchmarks/memory.py --data-dir /tmp/cifar10

Starts the server, drives Debian's Chromium (Playwright) to the Train page, trains a
2,000-image, 1-epoch run, opens Evaluate and exports ONNX, printing the server's
resident memory (VmRSS) and its peak so far (VmHWM, from /proc) after each step.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def memory_mb(pid: int) -> str:
    text = Path(f"/proc/{pid}/status").read_text()
    rss, hwm = (int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) // 1024
                for key in ("VmRSS", "VmHWM"))
    return f"RSS {rss:,} MB, peak {hwm:,} MB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str) -> None:
    for _ in range(300):
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server never became healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "CIFAR10_DIR": args.data_dir, "CIFAR_RUNS_DIR": tempfile.mkdtemp()}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    expect.set_options(timeout=300_000)
    try:
        wait_for_health(url)
        print(f"server up:           {memory_mb(server.pid)}", flush=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/train")
            start = page.get_by_role("button", name="Start training")
            expect(start).to_be_visible()
            print(f"data loaded:         {memory_mb(server.pid)}", flush=True)
            for name, value in ((re.compile(r"^Training images"), "2000"), ("Epochs", "1")):
                box = page.get_by_role("spinbutton", name=name, exact=isinstance(name, str))
                box.fill(value)
                box.press("Enter")
            time.sleep(1.5)
            start.click()
            expect(page.get_by_text(re.compile(r"finished after 1 epoch"))).to_be_visible()
            print(f"one job trained:     {memory_mb(server.pid)}", flush=True)
            page.goto(url + "/evaluate")
            page.wait_for_timeout(20_000)
            print(f"evaluate page:       {memory_mb(server.pid)}", flush=True)
            page.goto(url + "/train")
            page.get_by_role("button", name="Export to ONNX").click()
            expect(page.get_by_role("button", name="ONNX model (.onnx)")).to_be_visible()
            print(f"ONNX exported:       {memory_mb(server.pid)}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
