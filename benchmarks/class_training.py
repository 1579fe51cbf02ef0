"""A class presses Start at once: N students each queue a run of the `class` preset.

    python benchmarks/class_training.py --students 10 --data-dir /tmp/cifar10 --out class-10.json
    CIFAR_RAY_ADDRESS=127.0.0.1:6390 python benchmarks/class_training.py --students 10 ...

Submits N runs at the same instant through the app's own job registry (in this process, as
the Streamlit server does; with CIFAR_RAY_ADDRESS set the jobs are Ray tasks on that
cluster), each from its own visitor with a name, and waits until all have ended. Meanwhile
``--viewers`` simulated visitors keep opening the Train page and the Leaderboard with
Streamlit's AppTest in this process, every view timed on the server side by the app's
timing log (CIFAR_TIMING_LOG), as in benchmarks/load.py.

Printed: time until every run has ended, each student's wait (submitted to started) and
run time, test accuracies, runs lost or refused, and the server-side p50/p95/max of the
page views made while the runs trained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def visitors(n: int) -> list:
    from streamlit.testing.v1 import AppTest

    sessions = [AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300) for _ in range(n)]
    for at in sessions:
        at.run()
    return sessions


def view_pages(sessions: list, done: threading.Event, pause: float) -> None:
    """The visitors walk Train and Leaderboard until ``done``; their time is in the timing log."""
    pages = ["app_pages/train.py", "app_pages/leaderboard.py"]
    turn = 0
    while not done.is_set():
        for at in sessions:
            at.switch_page(pages[turn % 2])
            at.run()
        turn += 1
        done.wait(pause)


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 3),
            "p95": round(float(np.percentile(values, 95)), 3), "max": round(max(values), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--viewers", type=int, default=3, help="simulated visitors opening pages meanwhile")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between a visitor's views")
    parser.add_argument("--images", type=int, help="training images per run (default: the preset's 24,000); "
                        "fewer make a shorter check of the same path on a busy machine")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="class-bench-"))
    timing = work / "timing.jsonl"
    os.environ.update({"CIFAR10_DIR": args.data_dir, "CIFAR_RUNS_DIR": str(work / "runs"),
                       "CIFAR_TIMING_LOG": str(timing), "CIFAR_MAX_QUEUED": str(max(60, args.students))})
    from cifar_core.config import get_preset
    from cifar_core.data import load_cifar10
    from cifar_core.jobs import JobLimitError, get_registry

    data = load_cifar10(args.data_dir, download=False)
    preset = get_preset("class")
    registry = get_registry()
    where = os.environ.get("CIFAR_RAY_ADDRESS") or "this process"
    load = os.getloadavg()[0]
    print(f"{args.students} students, `class` preset, {registry.max_jobs} at once "
          f"({registry.torch_threads} thread(s) each) in {where}")

    sessions = visitors(args.viewers)  # first page loads (and the app's data cache) before the class starts
    page_runs_from = started = time.time()
    ids, refused = [], 0
    for k in range(args.students):
        try:
            ids.append(registry.submit(preset.model, preset.train, data, preset="class",
                                       subset_size=args.images or preset.train_images,
                                       owner=f"Student {k + 1}",
                                       visitor=f"student-{k + 1}"))
        except JobLimitError:
            refused += 1
    done = threading.Event()
    waiter = threading.Thread(target=lambda: ([registry.wait(i) for i in ids], done.set()),
                              daemon=True)
    waiter.start()
    view_pages(sessions, done, args.pause)  # Streamlit's AppTest wants the main thread
    snaps = [registry.snapshot(job_id) for job_id in ids]
    total = max(s.ended for s in snaps) - started if snaps else 0.0

    records = [json.loads(line) for line in timing.read_text().splitlines()] if timing.exists() else []
    during = [r for r in records if page_runs_from <= r["t"] <= started + total]
    pages = percentiles([r["seconds"] for r in during])
    finished = [s for s in snaps if s.status == "finished"]
    waits = [s.started - s.submitted for s in snaps if s.started]
    runs = [s.ended - s.started for s in snaps if s.started and s.ended]
    tests = [s.metrics.test_acc for s in finished if s.metrics and s.metrics.test_acc is not None]
    result = {
        "students": args.students, "images": args.images or preset.train_images, "where": where,
        "slots": registry.max_jobs,
        "threads_per_run": registry.torch_threads, "all_done_s": round(total, 1),
        "load_average_before": round(load, 1), "load_average_after": round(os.getloadavg()[0], 1),
        "finished": len(finished), "lost": len(snaps) - len(finished), "refused": refused,
        "wait_s": [round(w, 1) for w in waits], "run_s": [round(r, 1) for r in runs],
        "test_acc": [round(a, 4) for a in tests],
        "test_acc_min": min(tests) if tests else None,
        "server_page_s": pages,
        "server_page_by_page": {name: percentiles([r["seconds"] for r in during if r.get("page") == name])
                                for name in sorted({r.get("page") for r in during})},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if not result["lost"] and not refused else 1


if __name__ == "__main__":
    sys.exit(main())
