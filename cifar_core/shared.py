"""Results that are the same for every visitor, computed once per process.

A class opening the Evaluate page together must not start one evaluation each: on a
2-core server four identical 20-second evaluations took four minutes, and with ten
visitors none finished before they gave up, so the result was never kept. ``SharedCache``
computes each key at most once at a time (single flight): the first caller starts the
computation in a worker thread of its own, and every caller, the first included, waits
on that one computation and can watch its progress. The computation does not belong to
any visitor's script run, so a visitor who leaves (Streamlit stops their script) does not
cancel it for the others, and the result is kept for the next one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
ProgressFn = Callable[[int, int], None]


@dataclass
class _Flight(Generic[T]):
    """One computation in progress: what it has done so far and, in the end, its outcome."""

    done: threading.Event = field(default_factory=threading.Event)
    progress: tuple[int, int] = (0, 0)
    value: T | None = None
    error: BaseException | None = None


class SharedCache(Generic[T]):
    """The ``size`` most recently used results by key, each computed by one flight at a time."""

    def __init__(self, size: int, worker_setup: Callable[[], object] | None = None) -> None:
        self.size = size
        # Run first in each worker thread: torch's thread count is fixed per thread at its
        # first use (see cifar_core.jobs.use_page_threads), so a worker sets its own.
        self.worker_setup = worker_setup
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._flights: dict[Hashable, _Flight[T]] = {}
        self.computations = 0  # how many computations were started: for tests and benchmarks

    def get(self, key: Hashable) -> T | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: Hashable, value: T) -> None:
        with self._lock:
            self._put_locked(key, value)

    def in_progress(self, key: Hashable) -> tuple[int, int] | None:
        """(done, total) of the computation of ``key`` under way, or None when there is none."""
        with self._lock:
            flight = self._flights.get(key)
            return flight.progress if flight is not None else None

    def get_or_compute(self, key: Hashable, compute: Callable[[ProgressFn], T],
                       on_progress: ProgressFn | None = None, poll: float = 0.25) -> T:
        """The value of ``key``: kept, or the one computation of it under way, or a new one.

        ``compute(progress)`` runs in a worker thread and may report (done, total) through
        ``progress``; ``on_progress`` is called in the caller's thread with the latest
        figures while it waits. An exception of the computation is raised in every waiter.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                self.computations += 1
                threading.Thread(target=self._fly, args=(key, flight, compute), daemon=True,
                                 name=f"shared-cache-{self.computations}").start()
        while not flight.done.wait(poll):
            if on_progress is not None:
                on_progress(*flight.progress)
        if flight.error is not None:
            raise flight.error
        return flight.value  # type: ignore[return-value]

    def _fly(self, key: Hashable, flight: _Flight[T], compute: Callable[[ProgressFn], T]) -> None:
        def progress(done: int, total: int) -> None:
            flight.progress = (done, total)

        try:
            if self.worker_setup is not None:
                self.worker_setup()
            flight.value = compute(progress)
        except BaseException as err:  # handed to every waiter; the next caller tries again
            flight.error = err
        with self._lock:
            if flight.error is None:
                self._put_locked(key, flight.value)  # type: ignore[arg-type]
            self._flights.pop(key, None)
        flight.done.set()

    def _put_locked(self, key: Hashable, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
