"""Crash safety: a training process killed with SIGKILL mid-epoch, a crash at every single write
of a run, and run folders that cannot be written. What was saved stays readable, the run is
reported as interrupted, and the app's job registry reports the failure and keeps serving."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_core import record, runs
from cifar_core.__main__ import main
from cifar_core.config import ModelConfig, TrainConfig
from cifar_core.data import CifarData, load_cifar10, subset
from cifar_core.jobs import JobRegistry
from cifar_core.pipeline import train_run
from cifar_core.record import HISTORY_COLUMNS, RunConfig, RunError
from cifar_core.runs import RunWriter, list_runs, load_run

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable
TINY = ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.25), dense_units=(16,),
                   dense_dropout=(0.25,))
FAST = TrainConfig(epochs=2, batch_size=32, device="cpu", precision="fp32", seed=3)
# Every file a run folder may hold, as record.py names them (CONFIG_FILE, HISTORY_FILE, ...).
RUN_FILES = {value for key, value in vars(record).items() if key.endswith("_FILE") and isinstance(value, str)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(cifar_root: Path) -> CifarData:
    return subset(load_cifar10(cifar_root, download=False), 100, seed=0)


def history_rows(path: Path) -> list[dict[str, str]]:
    with (path / runs.HISTORY_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def assert_complete_history(run_dir: Path) -> list[dict[str, str]]:
    """Every row of history.csv is a whole epoch: all columns, finite numbers, epochs 1..n."""
    rows = history_rows(run_dir)
    assert (run_dir / runs.HISTORY_FILE).read_text().splitlines()[0] == ",".join(HISTORY_COLUMNS)
    for i, row in enumerate(rows, 1):
        assert list(row) == list(HISTORY_COLUMNS) and None not in row.values()
        assert int(row["epoch"]) == i
        assert all(math.isfinite(float(v)) for v in row.values())
    return rows


# --- a real process, really killed -------------------------------------------------------

@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_a_readable_interrupted_run(cifar_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "runs" / "killed"
    env = {k: v for k, v in os.environ.items() if k.upper() != "CIFAR10_DIR"}
    env.update(CIFAR10_DIR=str(cifar_root), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    proc = subprocess.Popen([PYTHON, "-m", "cifar_core", "train", "--subset", "400", "--epochs", "50",
                             "--set", "batch_size=32", "--device", "cpu", "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no second epoch within two minutes"
            if (out / runs.HISTORY_FILE).exists() and len(history_rows(out)) >= 2:
                break
            time.sleep(0.02)
        time.sleep(0.15)  # into the next epoch (each takes about half a second)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)  # reaped: a zombie would still answer os.kill(pid, 0)
    assert proc.returncode == -signal.SIGKILL

    # Only the documented files, plus at most the temporary file of a write cut short.
    extra = {p.name for p in out.iterdir()} - RUN_FILES
    assert all(name.startswith(".") and name.endswith(".tmp") for name in extra), extra

    rows = assert_complete_history(out)
    assert 2 <= len(rows) < 50
    run = load_run(out)
    assert run.metrics.status == "running" and run.metrics.pid == proc.pid
    assert run.status == "interrupted"
    # metrics.json is written after history.csv: it is at most one epoch behind.
    assert run.metrics.epochs_run in (len(rows) - 1, len(rows))
    assert 1 <= run.metrics.best_epoch <= len(rows)
    assert len(run.history) == len(rows)
    confusions = run.val_confusions()
    assert confusions is not None and len(confusions) in (len(rows), len(rows) + 1)
    model = run.load_model()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r.name for r in list_runs(out.parent)] == ["killed"]
    assert list_runs(out.parent)[0].status == "interrupted"

    # The command line evaluates it like any other run.
    monkeypatch.setenv("CIFAR10_DIR", str(cifar_root))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    assert '"accuracy"' in printed.out and printed.err == ""


# --- a crash at every write ---------------------------------------------------------------

class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way may swallow it."""


def count_writes(data: CifarData, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    calls = []
    real = runs.atomic_write
    monkeypatch.setattr(runs, "atomic_write", lambda p, b: (calls.append(p), real(p, b)))
    train_run(TINY, FAST, data, path)
    monkeypatch.setattr(runs, "atomic_write", real)
    return len(calls)


@pytest.mark.slow
def test_a_crash_at_any_write_leaves_the_last_complete_state(data: CifarData, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    total = count_writes(data, tmp_path / "clean", monkeypatch)
    assert total >= 2 + 4 * FAST.epochs  # config, metrics, then four files per epoch, ...
    real = runs.atomic_write
    for crash_at in range(1, total + 1):
        path = tmp_path / f"crash-{crash_at}"
        written: list[str] = []

        def dying_write(target: Path, payload: bytes, crash_at: int = crash_at,
                        written: list[str] = written) -> None:
            if len(written) + 1 >= crash_at:
                # What a kill during the write leaves: half a temporary file, the old file intact.
                (target.parent / f".{target.name}.dying.tmp").write_bytes(payload[: len(payload) // 2])
                raise Crash
            real(target, payload)
            written.append(target.name)

        monkeypatch.setattr(runs, "atomic_write", dying_write)
        with pytest.raises(Crash):
            train_run(TINY, FAST, data, path)
        monkeypatch.setattr(runs, "atomic_write", real)

        if runs.CONFIG_FILE not in written or runs.METRICS_FILE not in written:
            with pytest.raises(RunError, match="not a run folder"):
                load_run(path)
            continue
        run = load_run(path)  # every file there is a complete old or new version
        rows = assert_complete_history(path) if (path / runs.HISTORY_FILE).exists() else []
        assert len(run.history) == len(rows)
        assert (run.metrics.epochs_run or 0) in (len(rows) - 1, len(rows)) or not rows
        if runs.WEIGHTS_FILE in written:
            run.load_model()
        else:
            with pytest.raises(RunError, match="no weights yet"):
                run.load_model()
        if runs.CONFUSION_FILE in written:
            assert run.val_confusions().shape[1:] == (10, 10)


# --- folders that cannot be written -----------------------------------------------------------

def test_run_folder_under_a_file_is_a_clear_run_error(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    with pytest.raises(RunError, match=r"cannot create run folder .*runs/r: Not a directory") as info:
        RunWriter(blocker / "r", RunConfig(TINY, FAST))
    assert info.value.__cause__ is None and "\n" not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes to read-only folders anyway; the EROFS test covers it")
def test_read_only_runs_folder_is_a_clear_run_error(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(RunError, match="Permission denied"):
            RunWriter(root / "r", RunConfig(TINY, FAST))
    finally:
        root.chmod(0o755)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT])
def test_unwritable_file_system_is_a_clear_run_error(code: int, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(runs.tempfile, "mkstemp", refuse)
    with pytest.raises(RunError, match=rf"cannot write .*config\.json: {os.strerror(code)}"):
        RunWriter(tmp_path / "r", RunConfig(TINY, FAST))


def disk_full_after_epoch_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write after the first epoch's metrics.json fails: the disk is full."""
    real = runs.atomic_write
    metrics_writes = []

    def filling_up(target: Path, payload: bytes) -> None:
        if len(metrics_writes) >= 2:  # the one at the start, the one after epoch 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(target, payload)
        if target.name == runs.METRICS_FILE:
            metrics_writes.append(target)

    monkeypatch.setattr(runs, "atomic_write", filling_up)


def test_disk_full_mid_run_keeps_the_saved_epochs(data: CifarData, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "full"
    real = runs.atomic_write
    disk_full_after_epoch_one(monkeypatch)
    with pytest.raises(RunError, match="No space left on device") as info:
        train_run(TINY, FAST, data, path)
    # The first write that failed is the one reported, not the final metrics.json after it.
    assert runs.METRICS_FILE not in str(info.value)
    # metrics.json could not say so, but the run has ended: not "running" in this live process.
    assert json.loads((path / runs.METRICS_FILE).read_text())["status"] == "running"
    assert load_run(path).status == "interrupted"
    monkeypatch.setattr(runs, "atomic_write", real)
    assert len(assert_complete_history(path)) == 1
    load_run(path).load_model()
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]


def test_a_new_writer_in_an_abandoned_folder_is_running_again(data: CifarData, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "again"
    real = runs.atomic_write
    disk_full_after_epoch_one(monkeypatch)
    with pytest.raises(RunError):
        train_run(TINY, FAST, data, path)
    monkeypatch.setattr(runs, "atomic_write", real)
    assert load_run(path).status == "interrupted"
    writer = RunWriter(path, RunConfig(TINY, FAST))  # written here again, by this live process
    assert load_run(path).status == "running"
    writer.finish("stopped")
    assert load_run(path).status == "stopped"


def test_train_command_into_an_unwritable_folder_is_one_error_line(cifar_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("CIFAR10_DIR", str(cifar_root))
    code = main(["train", "--subset", "50", "--epochs", "1", "--device", "cpu", "--out", str(blocker / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot create run folder") and err.count("\n") == 1


# --- the app's job registry keeps serving ------------------------------------------------------

def test_job_with_an_unwritable_runs_folder_fails_and_the_registry_keeps_serving(
        data: CifarData, tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, max_queued=4, torch_threads=1)
    blocker = tmp_path / "runs-is-a-file"
    blocker.write_text("")
    bad = registry.submit(TINY, FAST, data, runs_root=blocker)
    snap = registry.wait(bad, timeout=60)
    assert snap.status == "failed" and "cannot create a run folder" in snap.error
    assert "Not a directory" in snap.error and "Traceback" not in snap.error
    good = registry.submit(TINY, FAST, data, runs_root=tmp_path / "runs")
    snap = registry.wait(good, timeout=120)
    assert snap.status == "finished" and snap.error is None
    assert load_run(snap.run_dir).status == "finished"


def test_job_whose_disk_fills_up_mid_run_fails_with_the_reason(data: CifarData, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    registry = JobRegistry(max_jobs=1, max_queued=4, torch_threads=1)
    real = runs.atomic_write
    disk_full_after_epoch_one(monkeypatch)
    failed = registry.wait(registry.submit(TINY, FAST, data, runs_root=tmp_path / "runs"), timeout=120)
    assert failed.status == "failed" and "No space left on device" in failed.error
    assert runs.METRICS_FILE not in failed.error  # the write that failed first, not the last attempt
    assert len(failed.history) >= 1
    assert len(assert_complete_history(failed.run_dir)) == 1
    # The server lives on and the disk is still full: the run is listed as ended, not running.
    assert [r.status for r in list_runs(tmp_path / "runs")] == ["interrupted"]
    monkeypatch.setattr(runs, "atomic_write", real)
    again = registry.wait(registry.submit(TINY, FAST, data, runs_root=tmp_path / "runs"), timeout=120)
    assert again.status == "finished"
    assert np.isfinite(again.metrics.test_acc)
