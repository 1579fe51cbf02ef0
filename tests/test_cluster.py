"""Jobs as Ray tasks on a local cluster: live progress, stop, the run folder written here, and a
worker lost mid-run leaving a resumable run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import wait_for

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")

from cifar_core.cluster import RayCluster  # noqa: E402  (only where Ray is)
from cifar_core.config import apply_overrides, get_preset  # noqa: E402
from cifar_core.data import CifarData  # noqa: E402
from cifar_core.jobs import JobRegistry  # noqa: E402
from cifar_core.runs import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, load_run  # noqa: E402

# Slow: a Ray cluster starts (seconds) and every run starts a worker process.
pytestmark = pytest.mark.slow

MODEL, TRAIN = apply_overrides(*(lambda p: (p.model, p.train))(get_preset("quick")),
                               {"conv_filters": (8, 16, 16), "epochs": 2, "device": "cpu"})


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    connected = RayCluster.connect("local", num_cpus=2, include_dashboard=False)
    yield connected
    ray.shutdown()


def training_workers() -> list[int]:
    """Processes of this machine running a training task (Ray names them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::train_task"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_job_trains_on_the_cluster_with_live_progress_and_its_folder_here(
        cluster: RayCluster, data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=2, torch_threads=1, cluster=cluster)
    job_id = registry.submit(MODEL, TRAIN, data, preset="quick", subset_size=300, runs_root=tmp_path,
                             owner="Ada")
    seen = []
    snap = wait_for(registry, job_id, lambda s: seen.append((s.epoch, s.batch, len(s.history)))
                    or not s.active, timeout=120)
    assert snap.status == "finished", snap.error
    assert any(batch for _, batch, _ in seen), "batch progress arrived while it trained"
    assert [r.epoch for r in snap.history] == [1, 2] and snap.images_per_second

    run = load_run(snap.run_dir)
    assert run.status == "finished" and run.owner == "Ada" and run.subset == 300
    assert [r.epoch for r in run.history] == [1, 2]
    assert run.metrics.test_acc == snap.metrics.test_acc is not None
    assert (run.path / WEIGHTS_FILE).exists() and run.stored_test_predictions() is not None
    assert not (run.path / CHECKPOINT_FILE).exists(), "a finished run keeps no checkpoint"
    assert json.loads((run.path / CONFIG_FILE).read_text())["model"]["conv_filters"] == [8, 16, 16]
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_stop_reaches_the_task(cluster: RayCluster, data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=2, torch_threads=1, cluster=cluster)
    job_id = registry.submit(MODEL, replace(TRAIN, epochs=200), data, preset="quick", runs_root=tmp_path)
    wait_for(registry, job_id, lambda s: len(s.history) >= 1, timeout=120)
    assert registry.stop(job_id)
    snap = wait_for(registry, job_id, lambda s: not s.active, timeout=60)
    assert snap.status == "stopped", snap.error
    run = load_run(snap.run_dir)
    assert run.status == "stopped" and 1 <= len(run.history) < 200 and run.resumable


def test_a_lost_worker_leaves_an_interrupted_run_that_resumes(
        cluster: RayCluster, data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=2, torch_threads=1, cluster=cluster)
    epochs = 30
    job_id = registry.submit(MODEL, replace(TRAIN, epochs=epochs), data, preset="quick", runs_root=tmp_path)
    wait_for(registry, job_id, lambda s: len(s.history) >= 2, timeout=120)
    run_dir = registry.snapshot(job_id).run_dir
    deadline = time.monotonic() + 30
    while not (run_dir / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = training_workers()
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)

    snap = wait_for(registry, job_id, lambda s: not s.active, timeout=60)
    assert snap.status == "failed" and "lost this run" in snap.error
    run = load_run(run_dir)
    assert run.status == "interrupted" and run.resumable, run.resume_blocker()
    assert len(run.history) >= 2

    resumed = registry.resume(run, data)
    snap = wait_for(registry, resumed, lambda s: not s.active, timeout=180)
    assert snap.status == "finished", snap.error
    run = load_run(run_dir)
    assert run.status == "finished" and [r.epoch for r in run.history] == list(range(1, epochs + 1))


def test_the_train_command_runs_as_a_task_on_the_cluster(cluster: RayCluster, cifar_root: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "CIFAR_RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    result = subprocess.run(
        [sys.executable, "-m", "cifar_core", "train", "--preset", "quick", "--set", "conv_filters=8,16,16",
         "--epochs", "1", "--subset", "300", "--name", "Ada", "--data-dir", str(cifar_root),
         "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training as a Ray task" in result.stdout and "epoch 1/1" in result.stdout
    run = load_run(out)
    assert run.status == "finished" and run.owner == "Ada" and run.subset == 300
