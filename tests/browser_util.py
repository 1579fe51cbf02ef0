"""Helpers for the browser tests: a real `streamlit run` server and a Chromium page that drives it.

Kept apart from the tests so the same tour can save the README's screenshots.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update"]
VIEWPORT = {"width": 1280, "height": 900}
PAGES = ("Dataset", "Model", "Train", "Evaluate", "Predict", "Experiments")
TIMEOUT_MS = 90_000  # first loads import torch and read the dataset; the machine may be busy

BATCH_COUNTER = re.compile(r"epoch (\d+)/(\d+) · batch (\d+)/(\d+)")
WHOLE_RUN = re.compile(r"Whole run: (\d+)%")


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"browser tests skipped: {CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "browser tests skipped: python playwright is not installed (pip install playwright)"
    return None


# --- the server -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200 and response.read().strip() == b"ok"
    except OSError:
        return False


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextlib.contextmanager
def streamlit_server(data_dir: Path | str, runs_dir: Path, log: Path,
                     extra_env: dict[str, str] | None = None, timeout: float = 90.0) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on a free port; yields its URL once healthy, kills it after."""
    port = free_port()
    env = {**os.environ, "CIFAR10_DIR": str(data_dir), "CIFAR_RUNS_DIR": str(runs_dir),
           **(extra_env or {})}
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
               "--server.port", str(port), "--server.address", "127.0.0.1",
               "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit not healthy after {timeout:.0f}s:\n{_tail(log)}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- driving a page ---------------------------------------------------------------------------

class AppPage:
    """One browser tab on the app: one Streamlit session, moved between pages by the sidebar."""

    def __init__(self, page, url: str, name: str = "") -> None:
        self.page, self.url, self.name = page, url, name
        page.set_default_timeout(TIMEOUT_MS)
        self.current: str | None = None

    def open(self) -> float:
        """Load the app (the Dataset page); seconds until its content is visible."""
        start = time.perf_counter()
        self.page.goto(self.url)
        self._wait_ready("Dataset")
        self.current = "Dataset"
        return time.perf_counter() - start

    def goto(self, name: str) -> float:
        """Click ``name`` in the sidebar; seconds from the click until that page's content is visible."""
        link = self.page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name, exact=True)
        start = time.perf_counter()
        link.click()
        self._wait_ready(name)
        self.current = name
        return time.perf_counter() - start

    def _wait_ready(self, name: str) -> None:
        page = self.page
        page.get_by_role("heading", name=name, exact=True).wait_for()
        for other in PAGES:  # the previous page's elements are gone
            if other != name:
                page.get_by_role("heading", name=other, exact=True).wait_for(state="detached")
        for locator in self.content(name):
            locator.first.wait_for()

    def content(self, name: str) -> list:
        """Locators that all show once page ``name`` has drawn its main content."""
        page = self.page
        # Elements with a key carry the class st-key-<key> ('.' becomes '-'): unique to their page.
        if name == "Dataset":
            return [page.locator('[data-testid="stMetric"]', has_text="Training images"),
                    page.locator(".st-key-dataset-grid img")]
        if name == "Model":
            return [page.locator('[data-testid="stMetric"]', has_text="Total params"),
                    page.locator('[data-testid="stDataFrame"]')]
        if name == "Train":
            return [page.locator(".st-key-train-start button"),
                    page.get_by_role("heading", name="All runs")]
        if name == "Evaluate":
            return [page.locator('.st-key-evaluate-confusion .main-svg, [data-testid="stAlertContentInfo"]')]
        if name == "Predict":
            return [page.locator('.st-key-predict-files, [data-testid="stAlertContentInfo"]')]
        if name == "Experiments":
            return [page.locator('[class*="st-key-experiments-curves-shipped-"] .main-svg, '
                                 '[data-testid="stAlertContentInfo"]')]
        raise ValueError(name)

    # --- reading --------------------------------------------------------------------------

    def progress_texts(self) -> list[str]:
        return self.page.locator('[data-testid="stProgress"]').all_inner_texts()

    def counter(self) -> tuple[int, int, int, int] | None:
        """(epoch, epochs, batch, batches) of the live view, or None when it shows none."""
        for text in self.progress_texts():
            if match := BATCH_COUNTER.search(text):
                return tuple(int(g) for g in match.groups())  # type: ignore[return-value]
        return None

    def position(self) -> tuple[int, int] | None:
        """(epoch, batch) of the live view, comparable as a tuple."""
        c = self.counter()
        return (c[0], c[2]) if c else None

    def batch_counter(self):
        """The live view's progress bar that counts epochs and batches."""
        return self.page.locator('[data-testid="stProgress"]', has_text=BATCH_COUNTER).first

    def widget_text(self, key: str) -> str:
        """Everything a keyed widget shows, its label and its current value (inputs included)."""
        return self.page.locator(f".st-key-{key.replace('.', '-')}").first.evaluate(
            "e => [e.textContent, ...Array.from(e.querySelectorAll('input'), i => i.value)].join(' ')")

    def metric_value(self, label: str):
        box = self.page.locator('[data-testid="stMetric"]', has_text=label).first
        return box.locator('[data-testid="stMetricValue"]')

    def metric(self, label: str) -> str:
        return self.metric_value(label).inner_text().strip()

    def problems(self, allow_warnings: bool = False) -> list[str]:
        """Texts of exceptions and error boxes (and warnings, unless allowed) on the page."""
        kinds = ['[data-testid="stException"]', '[data-testid="stAlertContentError"]']
        if not allow_warnings:
            kinds.append('[data-testid="stAlertContentWarning"]')
        return [text for kind in kinds for text in self.page.locator(kind).all_inner_texts()]

    def cut_off(self, selector: str = '[data-testid="stMain"] *') -> list[str]:
        """Visible texts among ``selector`` that do not fit their box (shown ending in '…')."""
        return self.page.evaluate(
            """selector => Array.from(document.querySelectorAll(selector)).filter(e =>
                   e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1
                   && getComputedStyle(e).textOverflow === 'ellipsis' && e.textContent.trim())
                   .map(e => e.textContent.trim())""",
            selector)

    def assert_clean(self, allow_warnings: bool = False) -> None:
        """No exception, error (or warning) box, and no number cut off in a metric."""
        found = self.problems(allow_warnings)
        assert not found, f"{self.name} {self.current} page shows: {found}"
        cut = self.cut_off('[data-testid="stMetricValue"], [data-testid="stMetricValue"] *')
        assert not cut, f"{self.name} {self.current} page: metric values cut off: {cut}"
        if labels := self.cut_off():
            print(f"  ({self.name} {self.current} page: texts cut off at this width: {sorted(set(labels))})")

    # --- waiting and pictures ---------------------------------------------------------------

    def wait_quiet(self, timeout: float = 60.0) -> None:
        """Until no script run, spinner or placeholder shows and every image has loaded."""
        self.page.wait_for_function(
            """() => !document.querySelector('[data-testid="stStatusWidget"]')
                  && !document.querySelector('[data-testid="stSpinner"]')
                  && !document.querySelector('[data-testid="stSkeleton"]')
                  && Array.from(document.images).every(img => img.complete)""",
            timeout=timeout * 1000)
        self.page.wait_for_timeout(300)

    def scroll_to(self, locator) -> None:
        locator.first.evaluate("e => e.scrollIntoView({block: 'start'})")
        self.page.wait_for_timeout(300)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """The page as the user sees it; ``full_page`` includes everything below the fold.

        Streamlit scrolls its main area, not the document, so a full-page shot first makes
        the window as tall as that area.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self.wait_quiet()
        if not full_page:
            self.page.screenshot(path=str(path))
            return path
        height = self.page.evaluate(
            "() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight || 0")
        size = self.page.viewport_size or VIEWPORT
        tall = max(size["height"], min(height, 8000))
        self.page.set_viewport_size({"width": size["width"], "height": tall})
        try:
            self.page.wait_for_timeout(500)  # charts re-lay themselves out
            self.page.screenshot(path=str(path), full_page=True)
        finally:
            self.page.set_viewport_size(size)
        return path


def png_bytes(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def shrink_png(path: Path, colours: int = 256) -> int:
    """Rewrite a screenshot as an optimised palette PNG (for files that are committed); new size."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                              dither=Image.Dither.NONE)
    small.save(path, optimize=True)
    return path.stat().st_size
