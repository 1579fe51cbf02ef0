"""What each page costs the visitor's browser: CPU seconds per view in one Chromium session.

    python benchmarks/browser_cpu.py --data-dir /tmp/cifar10 [--rounds 2] [--pages Model Evaluate]

Starts `streamlit run streamlit_app.py` (real data, the bundled models, an empty runs
folder), opens the app in one headless Chromium tab and moves through the pages
``--rounds`` times. Per view it prints the wall seconds from the sidebar click until the
page's content shows, the CPU seconds of every Chromium process this script started
(renderer, browser and helpers, from /proc; they include the 0.3 s of quiet the view ends
with), and the renderer main thread's time from the DevTools protocol
(``Performance.getMetrics``): all tasks, and the script, layout and style work within them.

With many visitors on a small machine, the clients' own CPU is what the load benchmark's
browser column mostly measures; this one says which page spends it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser_util import CHROMIUM, LAUNCH_ARGS, PAGES, VIEWPORT, AppPage, streamlit_server  # noqa: E402

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


@dataclass(frozen=True)
class ViewCost:
    page: str
    round: int
    wall: float
    chromium_cpu: float
    main_thread: dict[str, float]  # METRICS, seconds


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def chromium_cpu_seconds() -> float:
    """User and system CPU of the Chromium processes started by this script."""
    total = 0.0
    for pid in descendants(os.getpid()):
        try:
            if "chrom" not in Path(f"/proc/{pid}/comm").read_text():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a helper process that has just ended
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(url: str, pages: list[str], rounds: int) -> list[ViewCost]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        devtools = page.context.new_cdp_session(page)
        devtools.send("Performance.enable")

        def main_thread() -> dict[str, float]:
            values = {m["name"]: m["value"] for m in devtools.send("Performance.getMetrics")["metrics"]}
            return {name: values[name] for name in METRICS}

        app, costs = AppPage(page, url), []

        def view(name: str, rnd: int, go) -> None:
            cpu, before = chromium_cpu_seconds(), main_thread()
            wall = go()
            app.wait_quiet()
            after = main_thread()
            costs.append(ViewCost(name, rnd, wall, chromium_cpu_seconds() - cpu,
                                  {k: after[k] - before[k] for k in METRICS}))

        view("Dataset", 0, app.open)  # the first load of the app itself
        for rnd in range(1, rounds + 1):
            for name in pages:
                view(name, rnd, lambda name=name: app.goto(name))
        browser.close()
    return costs


def print_costs(costs: list[ViewCost]) -> None:
    print(f"{'page':<12} {'round':>5} {'wall':>6} {'Chromium CPU':>13} {'main thread':>12} "
          f"{'script':>7} {'layout':>7} {'style':>6}")
    for c in costs:
        m = c.main_thread
        label = "(app load)" if c.round == 0 else str(c.round)
        print(f"{c.page:<12} {label:>5} {c.wall:>6.2f} {c.chromium_cpu:>13.2f} {m['TaskDuration']:>12.2f} "
              f"{m['ScriptDuration']:>7.2f} {m['LayoutDuration']:>7.2f} {m['RecalcStyleDuration']:>6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "data"),
                        help="CIFAR-10 for the server (CIFAR10_DIR)")
    parser.add_argument("--rounds", type=int, default=2, help="walks through the pages")
    parser.add_argument("--pages", nargs="+", default=[*PAGES[1:], PAGES[0]], choices=PAGES,
                        help="pages to visit in each round, in order (the app opens on Dataset)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, \
            streamlit_server(args.data_dir, Path(tmp) / "runs", Path(tmp) / "server.log") as url:
        costs = measure(url, args.pages, args.rounds)
    print("seconds per view, one session")
    print_costs(costs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
