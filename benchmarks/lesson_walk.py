"""A class following the lesson: N browser sessions open the default lesson's steps and every
view they link to, at the same time, and the server's timing log says what each view cost.

    python benchmarks/lesson_walk.py --sessions 10 --data-dir /tmp/cifar10 --out lesson-10.json
    python benchmarks/lesson_walk.py --sessions 10 --data-dir /tmp/cifar10 --cold \
        --urls "/evaluate?run=baseline&split=test" "/evaluate?run=fast&split=test" \
               "/evaluate?run=best&split=test"

Starts `streamlit run streamlit_app.py` (real data through CIFAR10_DIR, the bundled models,
an empty runs folder) with CIFAR_TIMING_LOG on, then lowers this process to ``--client-nice``
(19 by default) before starting Chromium, so the browsers take only the CPU the server
leaves. One session first walks every URL alone (what is computed once for everyone is
computed then, and timed apart); then N sessions, each its own browser context, open every
URL in lesson order: ``/lesson?step=N`` for each step, then each of that step's links.
Every URL is a fresh page load, so a new Streamlit session: its server seconds are the sum
of that session's script runs in the timing log. Printed per URL: server seconds (median
and worst over the sessions), server CPU seconds, and browser seconds until the page was
quiet (script done, images loaded).

``--urls`` walks the given views instead of the lesson's; ``--cold`` leaves out the lone
first walk, so the N sessions meet a server that has computed nothing yet (what a class
opening the same view at the start of a lesson meets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from browser_util import CHROMIUM, LAUNCH_ARGS, streamlit_server  # noqa: E402

from cifar_core.lessons import LESSONS_DIR, load_lessons  # noqa: E402

QUIET_JS = """() => document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === 'notRunning'
                  && !document.querySelector('[data-testid="stSpinner"]')
                  && !document.querySelector('[data-testid="stSkeleton"]')
                  && !document.querySelector('[data-testid="stProgress"]')
                  && Array.from(document.images).every(img => img.complete)"""


def lesson_urls() -> list[str]:
    """Every step's URL and, after each, the views it links to, in the order a class meets them."""
    lessons, _ = load_lessons([LESSONS_DIR], pages={p.stem for p in (ROOT / "app_pages").glob("*.py")})
    urls = []
    for number, step in enumerate(lessons[0].steps, start=1):
        urls.append(f"/lesson?step={number}")
        urls += [f"/{link.page}?{urlencode(link.params)}" for link in step.links]
    return urls


async def walk(browser, base: str, urls: list[str], client: int, timeout_s: float) -> list[dict]:
    """One visitor opening every URL in turn, each a fresh load; (url, start, browser seconds)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    views = []
    for url in urls:
        start = time.time()
        try:
            await page.goto(base + url)
            await page.wait_for_function(QUIET_JS)
            error = None
        except Exception as err:  # a view that did not finish is counted, not fatal
            error = type(err).__name__
        views.append({"client": client, "url": url, "start": start,
                      "browser": round(time.time() - start, 3), "error": error})
    await context.close()
    return views


def server_seconds(log: Path, since: float) -> dict[str, dict]:
    """Per session that started after ``since``: its first query (the URL it was opened with),
    page, and summed wall and CPU seconds of its script runs."""
    sessions: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "cpu": 0.0, "runs": 0})
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["t"] < since or not record.get("session"):
            continue
        found = sessions[record["session"]]
        found.setdefault("page", record["page"])
        found.setdefault("query", record.get("query", ""))
        found.setdefault("t", record["t"])
        found["seconds"] += record["seconds"]
        found["cpu"] += record["cpu"]
        found["runs"] += 1
    return sessions


def match(views: list[dict], sessions: dict[str, dict]) -> None:
    """Give each view the server figures of the session its page load opened: the first
    session started after the view began whose query is the view's."""
    taken = set()
    for view in sorted(views, key=lambda v: v["start"]):
        query = view["url"].partition("?")[2]
        for sid, found in sorted(sessions.items(), key=lambda item: item[1]["t"]):
            if sid not in taken and found["t"] >= view["start"] - 0.5 and found["query"] == query:
                taken.add(sid)
                view.update(server=round(found["seconds"], 3), cpu=round(found["cpu"], 3), runs=found["runs"])
                break


def table(views: list[dict], urls: list[str]) -> list[dict]:
    rows = []
    for url in urls:
        mine = [v for v in views if v["url"] == url]
        server = [v["server"] for v in mine if "server" in v]
        row = {"url": url, "views": len(mine), "failed": sum(v["error"] is not None for v in mine)}
        if server:
            row.update(server_p50=float(np.median(server)), server_max=max(server),
                       cpu_p50=float(np.median([v["cpu"] for v in mine if "cpu" in v])))
        row["browser_p50"] = float(np.median([v["browser"] for v in mine]))
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n{'URL':<72} {'server p50':>10} {'max':>6} {'cpu p50':>8} {'browser':>8} failed")
    nan = float("nan")
    for r in rows:
        print(f"{r['url']:<72} {r.get('server_p50', nan):>10.3f} {r.get('server_max', nan):>6.2f} "
              f"{r.get('cpu_p50', nan):>8.3f} {r['browser_p50']:>8.2f} {r['failed']}")


async def run(args: argparse.Namespace, base: str, log: Path) -> dict:
    urls = args.urls or lesson_urls()
    os.nice(args.client_nice)  # the browsers started below inherit it; the server keeps its own
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        since = time.time()
        alone = [] if args.cold else await walk(browser, base, urls, 0, args.timeout)
        match(alone, server_seconds(log, since))
        since = time.time()
        started = time.perf_counter()
        class_views = await asyncio.gather(*(walk(browser, base, urls, k + 1, args.timeout)
                                             for k in range(args.sessions)))
        wall = time.perf_counter() - started
        await browser.close()
    together = [v for views in class_views for v in views]
    match(together, server_seconds(log, since))
    every = [v["server"] for v in together if "server" in v]
    summary = {"sessions": args.sessions, "urls": len(urls), "views": len(together),
               "failed": sum(v["error"] is not None for v in together), "wall_seconds": round(wall, 1),
               "server_p50": float(np.median(every)), "server_p95": float(np.percentile(every, 95)),
               "server_max": max(every), "matched": len(every)}
    if alone:
        print_table("One visitor alone (first views compute what is shared)", table(alone, urls))
    print_table(f"{args.sessions} visitors at once", table(together, urls))
    print(f"\n{json.dumps(summary)}")
    return {"summary": summary, "alone": table(alone, urls) if alone else [],
            "together": table(together, urls), "views": together}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "data"))
    parser.add_argument("--client-nice", type=int, default=19)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one view may take")
    parser.add_argument("--out", type=Path, help="write every view's figures here as JSON")
    parser.add_argument("--urls", nargs="+", help="views to open (path and query) instead of the lesson's")
    parser.add_argument("--cold", action="store_true",
                        help="no lone first walk: the sessions meet a fresh server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "timing.jsonl"
        log.touch()
        with streamlit_server(args.data_dir, Path(tmp) / "runs", Path(tmp) / "server.log",
                              extra_env={"CIFAR_TIMING_LOG": str(log), "CIFAR_AUTO_DOWNLOAD": "0"}) as base:
            result = asyncio.run(run(args, base, log))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
