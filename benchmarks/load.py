"""Many visitors at once: N real browser sessions walk every page while one run trains.

    python benchmarks/load.py --sessions 10 --rounds 2 --data-dir /tmp/cifar10 --out load-10.json

Starts `streamlit run streamlit_app.py` on localhost (real data through CIFAR10_DIR, the
bundled models, an empty runs folder) with the server-side timing log switched on
(CIFAR_TIMING_LOG, see app_state.run_page). One extra browser tab starts a training run
on the Train page (the default settings: the baseline preset on all 40,000 training
images) and stays there, watching it, like a teacher's screen. Then N sessions, each
its own browser context in one headless Chromium (Playwright's asyncio client, so 30
fit in one process), walk Dataset, Model, Train, Evaluate, Predict (one photo uploaded,
its prediction waited for) and Experiments, ``--rounds`` times each.

Printed per page:

- browser: seconds from the sidebar click (or the first page load) until the page's main
  content is visible (tests/browser_util.AppPage.content); for "Predict upload", from
  handing the file to the uploader until "Prediction: ..." shows. After each view the
  session waits until the page is quiet (script finished, images loaded) before the next
  click, so every script run completes.
- server: the script time of that view on the server, the sum of the timing log's runs
  of that session that started within the view (the log maps a session to its browser
  through ``?client=K`` in the URL it opened first). Reruns of a fragment on its own (the
  Train page's live view every second, the Experiments page's poll) are printed apart,
  per fragment.
- failed views (timed out, or an exception or error box shown), bytes received by the
  browser per view (websocket frames and /media/ files), and the server's peak resident
  memory (VmHWM from /proc).

The clients share the machine with the server and the training run, so on a small
machine the browser figures include the clients' own CPU; the server-side figures are
what visitors on their own machines would see. With ``--client-nice 10`` the browsers run
at the training thread's lower priority (the server's page scripts keep theirs): the
clients then take only the CPU the server leaves, as visitors on their own machines
would, and the server-side figures come closer still to what such a class sees.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser_util import CHROMIUM, LAUNCH_ARGS, VIEWPORT, AppPage, streamlit_server  # noqa: E402

WALK = ("Dataset", "Model", "Train", "Evaluate", "Predict", "Experiments")
ROWS = ("Dataset", "Model", "Train", "Evaluate", "Predict", "Predict upload", "Experiments")
PREDICTION = re.compile(r"^Prediction: \w+ \(\d+%\)$")
# The status widget shows only after a delay, so the app root's script state is checked too.
QUIET_JS = """() => document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === 'notRunning'
                  && !document.querySelector('[data-testid="stStatusWidget"]')
                  && !document.querySelector('[data-testid="stSpinner"]')
                  && !document.querySelector('[data-testid="stSkeleton"]')
                  && Array.from(document.images).every(img => img.complete)"""
PROBLEMS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


@dataclass
class View:
    client: int
    round: int
    page: str  # a row of ROWS
    start: float  # time.time() of the click
    visible: float | None = None  # seconds to content visible; None when it failed
    quiet: float | None = None  # seconds until the page was quiet again
    error: str | None = None
    ws_bytes: int = 0
    media_bytes: int = 0
    media_files: int = 0
    server: float | None = None  # filled in from the timing log
    server_cpu: float | None = None
    server_runs: int = 0


@dataclass
class Traffic:
    ws_bytes: int = 0
    media_bytes: int = 0
    media_files: int = 0

    def snapshot(self) -> tuple[int, int, int]:
        return self.ws_bytes, self.media_bytes, self.media_files


@dataclass
class Session:
    client: int
    page: object  # playwright Page
    app: AppPage
    traffic: Traffic = field(default_factory=Traffic)


# --- the photo ----------------------------------------------------------------------------

def default_photo(width: int = 3000) -> tuple[str, bytes]:
    """A phone-sized JPEG: scikit-learn's sample photo (a temple in China) enlarged to ``width``."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("china.jpg"))
    image = image.resize((width, round(width * image.height / image.width)), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return "photo.jpg", out.getvalue()


# --- the server process ---------------------------------------------------------------------

def server_pid(url: str) -> int:
    port = str(urlparse(url).port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in b" ".join(args) and port.encode() in args:
            return int(proc.name)
    raise RuntimeError(f"no streamlit process on port {port}")


def proc_status_mb(pid: int, key: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def proc_cpu_seconds(pid: int) -> float:
    return proc_cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid``, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = proc_cpu_seconds_of(task / "stat")
        except (OSError, ValueError, IndexError):
            continue
    return out


def proc_cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemorySampler(threading.Thread):
    """Resident memory of the server every half second; the kernel's peak (VmHWM) at the end."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.done = pid, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                self.samples.append(proc_status_mb(self.pid, "VmRSS"))
            except (OSError, AttributeError):
                return


# --- driving one session -----------------------------------------------------------------------

def watch_traffic(page, traffic: Traffic) -> None:
    def on_websocket(ws) -> None:
        def on_frame(payload: bytes | str) -> None:
            traffic.ws_bytes += len(payload)
        ws.on("framereceived", on_frame)

    async def on_response(response) -> None:
        if "/media/" in response.url and "/static/" not in response.url:  # not the app's fonts
            traffic.media_files += 1
            try:
                traffic.media_bytes += int(response.headers.get("content-length") or 0) \
                    or len(await response.body())
            except Exception:
                pass

    page.on("websocket", on_websocket)
    page.on("response", on_response)


async def wait_ready(s: Session, name: str) -> None:
    page = s.page
    await page.get_by_role("heading", name=name, exact=True).wait_for()
    for other in WALK:  # the previous page's elements are gone
        if other != name:
            await page.get_by_role("heading", name=other, exact=True).wait_for(state="detached")
    for locator in s.app.content(name):
        await locator.first.wait_for()


async def timed(s: Session, views: list[View], rnd: int, row: str, action, ready,
                timeout: float) -> View:
    """Run ``action`` (a click, an upload), time until ``ready`` and until quiet; record a View."""
    view = View(s.client, rnd, row, time.time())
    before = s.traffic.snapshot()
    t0 = time.perf_counter()
    try:
        await action()
        await asyncio.wait_for(ready(), timeout)
        view.visible = time.perf_counter() - t0
        await s.page.wait_for_function(QUIET_JS, timeout=timeout * 1000)
        await s.page.wait_for_timeout(200)  # a rerun that was about to start shows its status
        await s.page.wait_for_function(QUIET_JS, timeout=timeout * 1000)
        view.quiet = time.perf_counter() - t0
        problems = await s.page.locator(PROBLEMS).all_inner_texts()
        if problems:
            view.error = "page shows: " + " | ".join(p[:200] for p in problems)
    except Exception as err:
        view.error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    after = s.traffic.snapshot()
    view.ws_bytes, view.media_bytes, view.media_files = (a - b for a, b in zip(after, before, strict=True))
    if view.error:
        view.visible = None
    views.append(view)
    return view


async def walk(s: Session, url: str, rounds: int, photo: tuple[str, bytes], views: list[View],
               timeout: float, delay: float) -> None:
    await asyncio.sleep(delay)
    page = s.page
    name, raw = photo
    for rnd in range(1, rounds + 1):
        for page_name in WALK:
            if rnd == 1 and page_name == "Dataset":
                action = lambda: page.goto(f"{url}/?client={s.client}")  # noqa: E731
            else:
                link = page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=page_name,
                                                                                exact=True)
                action = link.click
            view = await timed(s, views, rnd, page_name, action,
                               lambda p=page_name: wait_ready(s, p), timeout)
            if view.error and "page shows" not in view.error:
                # Given up on, like a visitor who clicks on: the next sidebar click interrupts the
                # script. Only when there is no sidebar to click, load the app again (same tag).
                nav = page.locator('[data-testid="stSidebarNav"]')
                if not await nav.count():
                    with contextlib.suppress(Exception):
                        await page.goto(f"{url}/?client={s.client}", timeout=timeout * 1000)
                continue
            if page_name == "Predict":
                uploader = page.locator('.st-key-predict-files input[type="file"]')
                answer = page.get_by_text(PREDICTION).first
                files = [{"name": name, "mimeType": "image/jpeg", "buffer": raw}]
                await timed(s, views, rnd, "Predict upload",
                            lambda u=uploader, f=files: u.set_input_files(files=f),
                            lambda a=answer: a.wait_for(), timeout)


async def start_training(browser, url: str, timeout: float) -> tuple[object, object]:
    """A tab that starts a run with the Train page's defaults and stays there watching it."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(timeout * 1000)
    await page.goto(f"{url}/train?client=trainer")
    start = page.locator(".st-key-train-start button").first
    await start.wait_for()
    await start.click()
    await page.locator('[data-testid="stProgress"]', has_text=re.compile(r"epoch \d+/")).first.wait_for()
    return context, page


async def progress_text(page) -> str:
    texts = await page.locator('[data-testid="stProgress"]').all_inner_texts()
    return next((t for t in texts if "epoch" in t), "no live progress shown")


async def run_sessions(url: str, n: int, rounds: int, photo: tuple[str, bytes], timeout: float,
                       seed: int) -> tuple[list[View], dict]:
    views: list[View] = []
    info: dict = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            trainer_context, trainer = await start_training(browser, url, timeout)
            info["training_at_start"] = await progress_text(trainer)
            sessions = []
            for k in range(1, n + 1):
                context = await browser.new_context(viewport=VIEWPORT)
                page = await context.new_page()
                session = Session(k, page, AppPage(page, url, f"session {k}"))
                page.set_default_timeout(timeout * 1000)
                watch_traffic(page, session.traffic)
                sessions.append(session)
            rng = random.Random(seed)
            started = time.time()
            outcomes = await asyncio.gather(*(walk(s, url, rounds, photo, views, timeout, rng.uniform(0, 1))
                                              for s in sessions), return_exceptions=True)
            info["sessions_crashed"] = [f"{type(o).__name__}: {o}"[:300] for o in outcomes
                                        if isinstance(o, BaseException)]
            info["walk_seconds"] = time.time() - started
            info["training_at_end"] = await progress_text(trainer)
            await trainer_context.close()
        finally:
            await browser.close()
    return views, info


# --- the server's side ------------------------------------------------------------------------

def read_timing(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attach_server_times(views: list[View], records: list[dict]) -> dict[str, int]:
    """Sum the timing log's runs of each view's session from the view's start to the next view's.

    A view that failed (the browser gave up) keeps the server time spent on it until the
    session clicked on, which stops the script: a lower bound of what it would have taken.
    Fragment reruns (``fragment_runs``) are left out: they go on while the visitor reads.
    """
    records = [r for r in records if not r.get("fragment")]
    client_of: dict[str, str] = {}
    for r in records:
        client = parse_qs(r.get("query", "")).get("client", [None])[0]
        if client and r["session"] not in client_of:
            client_of[r["session"]] = client
    by_client: dict[str, list[dict]] = {}
    for r in records:
        if r["session"] in client_of:
            by_client.setdefault(client_of[r["session"]], []).append(r)
    per_client: dict[int, list[View]] = {}
    for view in views:
        per_client.setdefault(view.client, []).append(view)
    for mine in per_client.values():
        mine.sort(key=lambda v: v.start)
        for view, following in zip(mine, [*mine[1:], None], strict=True):
            end = following.start if following else float("inf")
            runs = [r for r in by_client.get(str(view.client), [])
                    if view.start - 0.05 <= r["t"] < end - 0.05]
            if runs:
                view.server = sum(r["seconds"] for r in runs)
                view.server_cpu = sum(r["cpu"] for r in runs)
                view.server_runs = len(runs)
    return {"sessions_mapped": sum(c != "trainer" for c in client_of.values())}


def fragment_runs(records: list[dict]) -> dict[str, dict]:
    """Per fragment, its reruns on their own (live views refreshing, clicks inside it): how many,
    and their server wall and CPU seconds."""
    by_label: dict[str, list[dict]] = {}
    for r in records:
        if r.get("fragment"):
            by_label.setdefault(r["page"], []).append(r)
    return {label: {"runs": len(mine), "server": stats([r["seconds"] for r in mine]),
                    "server_cpu": stats([r["cpu"] for r in mine])}
            for label, mine in sorted(by_label.items())}


def print_fragments(fragments: dict[str, dict]) -> None:
    for label, f in fragments.items():
        print(f"fragment {label}: {f['runs']} reruns, server {fmt(f['server'])}, CPU {fmt(f['server_cpu'])}")


def resummarize(path: Path) -> None:
    """Print the table of a saved --out file again, with the server times attributed anew."""
    saved = json.loads(path.read_text())
    views = [View(**{k: v for k, v in view.items() if k not in ("server", "server_cpu", "server_runs")})
             for view in saved["views"]]
    attach_server_times(views, saved["server_runs"])
    print_table(saved["sessions"], summarize(views))
    print_fragments(fragment_runs(saved["server_runs"]))


def profile_summary(folder: Path, top: int = 14) -> dict[str, list[tuple[str, int, float, float]]]:
    """Per page, the functions of this project (and Streamlit's image and chart marshalling) with
    the most cumulative time over all its script runs' cProfile files: (name, calls, cumulative s,
    own s)."""
    import pstats

    keep = ("app_pages/", "cifar_core/", "app_state.py", "streamlit/elements/image", "image_utils",
            "streamlit/elements/plotly_chart", "streamlit/elements/lib/image", "plotly/io/_json",
            "PIL/Image.py", "PIL/JpegImagePlugin", "PIL/PngImagePlugin")
    pages: dict[str, list[Path]] = {}
    for path in folder.glob("*.prof"):
        pages.setdefault(path.name.split("-", 1)[0], []).append(path)
    out = {}
    for page, files in sorted(pages.items()):
        stats = pstats.Stats(*map(str, files)).stats  # type: ignore[attr-defined]
        rows = [(f"{Path(file).name}:{line} {func}", nc, ct, tt)
                for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.items()
                if any(k in file for k in keep) and func != "<module>"]
        rows.sort(key=lambda r: -r[2])
        out[page] = [("script runs", len(files), 0.0, 0.0), *rows[:top]]
    return out


# --- the table ------------------------------------------------------------------------------

def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max()),
            "n": len(values)}


def summarize(views: list[View]) -> dict[str, dict]:
    table = {}
    for row in ROWS:
        mine = [v for v in views if v.page == row]
        table[row] = {
            "views": len(mine), "failed": sum(v.error is not None for v in mine),
            "browser": stats([v.visible for v in mine if v.visible is not None]),
            "server": stats([v.server for v in mine if v.server is not None]),
            "server_cpu": stats([v.server_cpu for v in mine if v.server_cpu is not None]),
            "quiet": stats([v.quiet for v in mine if v.quiet is not None]),
            "kb_per_view": (float(np.mean([(v.ws_bytes + v.media_bytes) / 1024 for v in mine]))
                            if mine else None),
            "media_files_per_view": float(np.mean([v.media_files for v in mine])) if mine else None,
        }
    return table


def fmt(s: dict | None) -> str:
    return "-" if s is None else f"{s['p50']:.2f} / {s['p95']:.2f} / {s['max']:.2f}"


def print_table(n: int, table: dict[str, dict]) -> None:
    print(f"\n{n} session(s): seconds, p50 / p95 / max")
    print(f"{'page':<15} {'views':>5} {'failed':>6}  {'browser':<20} {'server':<20} {'server CPU':<20} "
          f"{'KB/view':>8} {'media':>5}")
    for row, t in table.items():
        kb = "-" if t["kb_per_view"] is None else f"{t['kb_per_view']:.0f}"
        media = "-" if t["media_files_per_view"] is None else f"{t['media_files_per_view']:.1f}"
        print(f"{row:<15} {t['views']:>5} {t['failed']:>6}  {fmt(t['browser']):<20} {fmt(t['server']):<20} "
              f"{fmt(t['server_cpu']):<20} {kb:>8} {media:>5}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10, help="browser sessions at once")
    parser.add_argument("--rounds", type=int, default=2, help="walks through every page per session")
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "data"),
                        help="CIFAR-10 for the server (CIFAR10_DIR)")
    parser.add_argument("--photo", type=Path, help="the picture to upload (default: a 3000-pixel JPEG)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a view counts as failed")
    parser.add_argument("--profile", type=Path,
                        help="also write a cProfile of every script run into this folder "
                             "(CIFAR_TIMING_PROFILE; slows the server)")
    parser.add_argument("--out", type=Path, help="write every view and the summary as JSON here")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="nice value of the browsers (the server keeps its own priority)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-json", type=Path, help="only print the table of an earlier --out file")
    args = parser.parse_args(argv)
    if args.from_json:
        resummarize(args.from_json)
        return 0
    # Stopped from outside: end like Ctrl-C, so the browser and the server are shut down too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    photo = (args.photo.name, args.photo.read_bytes()) if args.photo else default_photo()

    with tempfile.TemporaryDirectory(prefix="cifar-load-") as tmp:
        tmp = Path(tmp)
        timing = tmp / "timing.jsonl"
        env = {"CIFAR_TIMING_LOG": str(timing)}
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            env["CIFAR_TIMING_PROFILE"] = str(args.profile.resolve())
        with streamlit_server(args.data_dir, tmp / "runs", tmp / "server.log", extra_env=env,
                              timeout=180) as url:
            pid = server_pid(url)
            sampler = MemorySampler(pid)
            sampler.start()
            cpu_before = proc_cpu_seconds(pid)
            threads_before = thread_cpu_seconds(pid)
            # The server started at our priority; from here on this process and the browsers
            # it starts run at the lower one.
            os.nice(args.client_nice)
            views, info = asyncio.run(run_sessions(url, args.sessions, args.rounds, photo, args.timeout,
                                                   args.seed))
            info["server_cpu_seconds"] = proc_cpu_seconds(pid) - cpu_before
            # Threads alive at the end: the training job's, the web server's event loop, ...; the
            # script threads have ended, so their CPU is what the total has beyond these.
            after = thread_cpu_seconds(pid)
            busy = sorted((cpu - threads_before.get(tid, 0.0) for tid, cpu in after.items()), reverse=True)
            info["busiest_threads_cpu_seconds"] = [round(x, 1) for x in busy[:4]]
            info["load_average"] = [round(x, 1) for x in os.getloadavg()]
            info["peak_rss_mb"] = proc_status_mb(pid, "VmHWM")
            sampler.done.set()
            info["rss_mb_samples_max"] = max(sampler.samples, default=None)
        records = read_timing(timing)
        info.update(attach_server_times(views, records))
        info["script_runs"] = len(records)
        info["script_outcomes"] = {o: sum(r["outcome"] == o for r in records)
                                   for o in sorted({r["outcome"] for r in records})}
        info["torch_threads_in_script_runs"] = sorted({r.get("threads") for r in records
                                                       if r.get("threads") is not None})
    table = summarize(views)
    fragments = fragment_runs(records)
    print_table(args.sessions, table)
    print_fragments(fragments)
    print(f"\nserver peak RSS {info['peak_rss_mb']:,.0f} MB; server CPU {info['server_cpu_seconds']:.0f} s "
          f"over a {info['walk_seconds']:.0f} s walk; {info['script_runs']} script runs "
          f"{info['script_outcomes']}; sessions matched to the log: "
          f"{info['sessions_mapped']}/{args.sessions}; load average {info['load_average']}; "
          f"browsers at nice {args.client_nice}")
    print(f"CPU seconds of the busiest server threads still alive at the end (training job, event "
          f"loop, ...): {info['busiest_threads_cpu_seconds']}")
    print(f"training: {info['training_at_start']!r} at the start, {info['training_at_end']!r} at the end")
    print(f"photo: {photo[0]}, {len(photo[1]) / 1e6:.1f} MB")
    failed = [v for v in views if v.error]
    for v in failed[:10]:
        print(f"  failed: session {v.client} round {v.round} {v.page}: {v.error}")
    if args.profile:
        profiles = profile_summary(args.profile)
        for page, rows in profiles.items():
            print(f"\nprofile, {page} ({rows[0][1]} script runs): calls, cumulative s, own s")
            for name, calls, cumulative, own in rows[1:]:
                print(f"  {name:<70} {calls:>7} {cumulative:>8.2f} {own:>8.2f}")
        info["profile"] = profiles
    if args.out:
        args.out.write_text(json.dumps({
            "sessions": args.sessions, "rounds": args.rounds, "client_nice": args.client_nice,
            "photo_bytes": len(photo[1]),
            "info": info, "summary": table, "fragments": fragments, "views": [asdict(v) for v in views],
            "server_runs": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
