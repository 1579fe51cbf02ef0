"""SharedCache: results the same for every visitor, computed once, with concurrent callers
waiting on the computation under way instead of starting their own."""

from __future__ import annotations

import threading
import time

import pytest

from cifar_core.shared import SharedCache


def test_concurrent_callers_share_one_computation() -> None:
    cache: SharedCache[int] = SharedCache(size=4)
    calls = []
    release = threading.Event()

    def compute(progress) -> int:
        calls.append(1)
        progress(1, 2)
        release.wait(5)
        return 42

    seen: list[tuple[int, int]] = []
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        cache.get_or_compute("k", compute, on_progress=lambda d, t: seen.append((d, t)), poll=0.01)))
        for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert cache.in_progress("k") == (1, 2)
    release.set()
    for t in threads:
        t.join(5)
    assert results == [42] * 8
    assert len(calls) == 1 and cache.computations == 1
    assert (1, 2) in seen  # waiters watched the one computation's progress
    assert cache.get_or_compute("k", compute) == 42 and len(calls) == 1  # kept
    assert cache.in_progress("k") is None


def test_a_caller_that_gives_up_does_not_cancel_the_computation() -> None:
    # A visitor who leaves: Streamlit raises in their thread while they wait (here: from the
    # progress callback). The computation runs on and is kept for the next visitor.
    cache: SharedCache[str] = SharedCache(size=2)
    release = threading.Event()

    class Left(Exception):
        pass

    def leave(done: int, total: int) -> None:
        raise Left

    def compute(progress) -> str:
        release.wait(5)
        return "done"

    with pytest.raises(Left):
        cache.get_or_compute("k", compute, on_progress=leave, poll=0.01)
    release.set()
    assert cache.get_or_compute("k", lambda p: "again") == "done"
    assert cache.computations == 1


def test_a_failure_reaches_every_waiter_and_the_next_caller_tries_again() -> None:
    cache: SharedCache[int] = SharedCache(size=2)

    def broken(progress) -> int:
        raise ValueError("weights do not fit")

    with pytest.raises(ValueError, match="do not fit"):
        cache.get_or_compute("k", broken)
    assert cache.get_or_compute("k", lambda p: 7) == 7
    assert cache.computations == 2


def test_keeps_the_most_recently_used_and_runs_the_worker_setup() -> None:
    setups = []
    cache: SharedCache[int] = SharedCache(
        size=2, worker_setup=lambda: setups.append(threading.current_thread().name))
    for key in ("x", "y"):
        cache.get_or_compute(key, lambda p, key=key: ord(key))
    assert cache.get("x") == ord("x")  # x is now the most recent
    cache.put("z", 0)
    assert cache.get("y") is None and cache.get("x") == ord("x") and cache.get("z") == 0
    assert len(setups) == 2 and all(name.startswith("shared-cache-") for name in setups)
