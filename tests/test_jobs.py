"""The background job registry: runs finish, stop, queue under a cap, and report consistently."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import wait_for

from cifar_core import jobs
from cifar_core.config import TrainConfig, get_preset
from cifar_core.data import CifarData
from cifar_core.jobs import JobLimitError, JobRegistry, JobSnapshot, default_torch_threads, get_registry

PRESET = get_preset("baseline")
pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def train_cfg(**changes: object) -> TrainConfig:
    return replace(PRESET.train, **{"epochs": 2, **changes})


def test_job_trains_to_finished_and_writes_its_run(data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(PRESET.model, train_cfg(), data, preset="baseline", runs_root=tmp_path)
    snap = registry.wait(job_id, timeout=60)
    assert snap.status == "finished", snap.error
    assert [r.epoch for r in snap.history] == [1, 2]
    assert 1 <= snap.best_epoch <= 2
    assert snap.progress == 1.0 and snap.phase == "done" and snap.eta_run is None
    assert snap.images_per_second and snap.images_per_second > 0
    assert snap.batch == snap.batches == len(data.y_train) // 64
    assert snap.run_dir is not None and snap.run_dir.parent == tmp_path
    metrics = json.loads((snap.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert snap.metrics.test_acc == metrics["test_acc"] and 0 <= metrics["test_acc"] <= 1
    assert snap.ended >= snap.started >= snap.submitted


def test_stop_ends_a_running_job_within_a_batch(data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(PRESET.model, train_cfg(epochs=200, early_stopping=False), data,
                             runs_root=tmp_path)
    wait_for(registry, job_id, lambda s: s.epoch >= 1 and s.batch >= 1)
    assert registry.stop(job_id)
    assert registry.snapshot(job_id).stop_requested
    snap = registry.wait(job_id, timeout=30)
    assert snap.status == "stopped"
    assert 1 <= len(snap.history) < 200
    assert json.loads((snap.run_dir / "metrics.json").read_text())["status"] == "stopped"
    assert not registry.stop(job_id), "a finished job cannot be stopped again"


def test_queued_job_waits_for_a_slot_and_can_be_cancelled(data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    long_cfg = train_cfg(epochs=200, early_stopping=False)
    first = registry.submit(PRESET.model, long_cfg, data, runs_root=tmp_path)
    second = registry.submit(PRESET.model, long_cfg, data, runs_root=tmp_path)
    third = registry.submit(PRESET.model, train_cfg(epochs=1), data, runs_root=tmp_path)
    assert [(s.id, s.status, s.queue_position) for s in registry.active()] == [
        (first, "running", None), (second, "queued", 1), (third, "queued", 2)]

    assert registry.stop(second)  # cancelled before it ever ran
    cancelled = registry.snapshot(second)
    assert cancelled.status == "stopped" and cancelled.run_dir is None and cancelled.started is None
    assert registry.snapshot(third).queue_position == 1

    registry.stop(first)
    assert registry.wait(first, timeout=30).status == "stopped"
    assert registry.wait(third, timeout=60).status == "finished"  # started when the slot freed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        registry.snapshot(j).run_dir.name for j in (first, third))


def test_cap_holds_under_simultaneous_submits(data: CifarData, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    most = 0
    count_lock = threading.Lock()
    real_train_run = jobs.train_run

    def counting_train_run(*args: object, **kwargs: object) -> dict:
        nonlocal running, most
        with count_lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.05)  # widen the window in which an over-cap start would overlap
            return real_train_run(*args, **kwargs)
        finally:
            with count_lock:
                running -= 1

    monkeypatch.setattr(jobs, "train_run", counting_train_run)
    registry = JobRegistry(max_jobs=2, max_queued=10, torch_threads=1)
    barrier = threading.Barrier(6)
    ids: list[str] = []

    def submit() -> None:
        barrier.wait()
        job_id = registry.submit(PRESET.model, train_cfg(epochs=1), data, preset="tiny",
                                 subset_size=64, runs_root=tmp_path)
        ids.append(job_id)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    active_counts = []
    while any(t.is_alive() for t in threads) or registry.active():
        active_counts.append(sum(s.status == "running" for s in registry.active()))
        time.sleep(0.005)
    for t in threads:
        t.join()

    assert len(set(ids)) == 6
    snaps = [registry.wait(i, timeout=60) for i in ids]
    assert [s.status for s in snaps] == ["finished"] * 6, [s.error for s in snaps]
    assert most == 2, "two slots, and both were used"
    assert max(active_counts) <= 2
    assert len({s.run_dir for s in snaps}) == 6, "every job got its own run folder"


def test_full_queue_refuses_with_a_clear_message(data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, max_queued=0, torch_threads=1)
    first = registry.submit(PRESET.model, train_cfg(epochs=200, early_stopping=False), data,
                            runs_root=tmp_path)
    with pytest.raises(JobLimitError, match="queue is full"):
        registry.submit(PRESET.model, train_cfg(), data, runs_root=tmp_path)
    registry.stop(first)
    assert registry.wait(first, timeout=30).status == "stopped"
    second = registry.submit(PRESET.model, train_cfg(epochs=1), data, runs_root=tmp_path)
    assert registry.wait(second, timeout=60).status == "finished"


def test_snapshots_are_consistent_and_frozen(data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(PRESET.model, train_cfg(epochs=4, early_stopping=False), data,
                             runs_root=tmp_path)
    seen: list[JobSnapshot] = []
    while True:
        snap = registry.snapshot(job_id)
        seen.append(snap)
        if not snap.active:
            break
        time.sleep(0.002)
    for s in seen:
        assert 0 <= s.batch <= s.batches
        assert [r.epoch for r in s.history] == list(range(1, len(s.history) + 1))
        if s.status == "running" and s.batch:
            # Mid-epoch the history holds the epochs before; after the last batch it may hold this one.
            assert len(s.history) in (s.epoch - 1, s.epoch)
        assert s.best_epoch <= len(s.history)
        assert 0.0 <= s.progress <= 1.0
    assert any(s.status == "running" and s.history for s in seen), "saw it mid-run"
    early = next(s for s in seen if s.history)
    assert len(early.history) < len(seen[-1].history) == 4, "old snapshots don't change"
    with pytest.raises(dataclasses.FrozenInstanceError):
        early.status = "failed"  # type: ignore[misc]


def test_a_run_that_fails_before_writing_leaves_no_folder(data: CifarData, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(PRESET.model, train_cfg(device="cuda"), data, runs_root=tmp_path / "runs")
    snap = registry.wait(job_id, timeout=30)
    assert snap.status == "failed" and "no CUDA GPU" in snap.error
    assert list((tmp_path / "runs").iterdir()) == []


def test_failure_is_reported_not_raised(data: CifarData, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(PRESET.model, train_cfg(), data, runs_root=not_a_folder)
    snap = registry.wait(job_id, timeout=10)
    assert snap.status == "failed" and "run folder" in snap.error
    ok = registry.submit(PRESET.model, train_cfg(epochs=1), data, runs_root=tmp_path / "runs")
    assert registry.wait(ok, timeout=60).status == "finished", "a failure frees its slot"


def test_thread_and_limit_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFAR_TORCH_THREADS", raising=False)
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 2)
    assert default_torch_threads(1) == 1, "one core left for the web server"
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 16)
    assert default_torch_threads(1) == 15
    assert default_torch_threads(3) == 5
    monkeypatch.setenv("CIFAR_TORCH_THREADS", "4")
    assert default_torch_threads(3) == 4
    monkeypatch.setenv("CIFAR_MAX_JOBS", "3")
    monkeypatch.setenv("CIFAR_MAX_QUEUED", "0")
    registry = JobRegistry()
    assert (registry.max_jobs, registry.max_queued, registry.torch_threads) == (3, 0, 4)
    monkeypatch.setenv("CIFAR_MAX_JOBS", "many")
    monkeypatch.setattr(jobs, "available_memory", lambda: 64 << 30)
    assert JobRegistry().max_jobs == 15, "a bad value falls back to the default: a core each but one"
    assert get_registry() is get_registry()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_training_thread_yields_the_cpu_to_pages(data: CifarData, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A training job runs at a lower priority than the server's other threads."""
    seen: list[int] = []
    real_train_run = jobs.train_run

    def recording_train_run(*args: object, **kwargs: object) -> dict:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_train_run(*args, **kwargs)

    monkeypatch.setattr(jobs, "train_run", recording_train_run)
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(PRESET.model, train_cfg(epochs=1), data, preset="tiny",
                             subset_size=64, runs_root=tmp_path)
    wait_for(registry, job_id, lambda s: s.status == "finished")
    assert seen == [min(19, here + jobs.TRAINING_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here
