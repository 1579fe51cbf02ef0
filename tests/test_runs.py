"""Run folders: what train_run leaves behind, reading it back, crash safety of every write,
and weights that can only be loaded as safetensors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WritesMarker

from cifar_core import runs
from cifar_core.config import ConfigError, ModelConfig, TrainConfig
from cifar_core.data import DEFAULT_CLASSES, CifarData
from cifar_core.evaluation import Evaluation, evaluate
from cifar_core.model import build_model
from cifar_core.pipeline import train_run
from cifar_core.record import WEIGHTS_FILE, EpochRecord, RunError, history_csv, read_history
from cifar_core.runs import atomic_write, list_runs, load_run, new_run_dir
from cifar_core.training import BatchEvent, EpochEvent

TINY = ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.25), dense_units=(32,),
                   dense_dropout=(0.25,))
TRAIN = TrainConfig(epochs=2, batch_size=32, lr=3e-3, augmentation="keras", device="cpu",
                    precision="fp32", seed=1)
HISTORY_HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"
METRIC_KEYS = {"status", "best_epoch", "val_acc", "test_acc", "images_per_second", "train_seconds",
               "confusion_matrix"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(data: CifarData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(TINY, TRAIN, data, path, preset="baseline", subset=None, owner="Ada")
    return path


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


# --- what a finished run leaves --------------------------------------------------------

def test_run_folder_holds_exactly_the_documented_files(run_dir: Path) -> None:
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock", "config.json", "grad_norms.csv", "history.csv", "metrics.json", "test_predictions.npz",
        "val_confusion.npy", "weights.safetensors"]
    assert (run_dir / ".lock").stat().st_size == 0


def test_grad_norms_recorded_per_epoch_and_layer(run_dir: Path) -> None:
    rows = load_run(run_dir).grad_norms()
    assert [r["epoch"] for r in rows] == [1, 2]
    layers = [k for k in rows[0] if k != "epoch"]
    assert layers[0] == "conv1" and layers[-1] == "logits"
    assert all(r[k] > 0 for r in rows for k in layers)


def test_history_csv_columns_and_rows(run_dir: Path) -> None:
    lines = (run_dir / "history.csv").read_text().splitlines()
    assert lines[0] == HISTORY_HEADER
    rows = read_history(run_dir / "history.csv")
    assert [r.epoch for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r.train_acc <= 1 and 0 <= r.val_acc <= 1
        assert r.train_loss > 0 and r.val_loss > 0 and r.seconds > 0 and r.lr == 3e-3


def test_metrics_json_has_the_documented_figures(run_dir: Path, data: CifarData) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["status"] == "finished" and "pid" not in metrics
    assert metrics["best_epoch"] in (1, 2)
    assert 0 <= metrics["val_acc"] <= 1 and 0 <= metrics["test_acc"] <= 1
    assert metrics["images_per_second"] > 0 and metrics["train_seconds"] > 0
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == len(data.y_test) == 100
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["test_acc"])
    # Rows are true classes.
    assert cm.sum(axis=1).tolist() == np.bincount(data.y_test, minlength=10).tolist()
    history = read_history(run_dir / "history.csv")
    assert metrics["val_acc"] == pytest.approx(history[metrics["best_epoch"] - 1].val_acc, abs=1e-6)


def test_saved_weights_reproduce_the_test_figures(run_dir: Path, data: CifarData) -> None:
    run = load_run(run_dir)
    result = evaluate(run.load_model(), data.x_test, data.y_test, data.classes, device="cpu")
    assert result.accuracy == pytest.approx(run.metrics.test_acc)
    assert result.confusion().tolist() == run.metrics.confusion_matrix
    # The predictions kept for the Evaluate page are these, so it draws them without the data.
    stored = run.stored_test_predictions()
    assert stored is not None and stored.predicted.tolist() == result.predicted.tolist()
    np.testing.assert_allclose(stored.probabilities, result.probabilities, atol=1e-3)


def test_config_json_rebuilds_model_and_training(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.model_config == TINY and run.train_config == TRAIN
    assert run.config.preset == "baseline" and run.config.created and run.config.owner == "Ada"


def test_val_confusions_one_per_epoch(run_dir: Path, data: CifarData) -> None:
    confusions = load_run(run_dir).val_confusions()
    assert confusions.shape == (2, 10, 10)
    assert confusions.sum(axis=(1, 2)).tolist() == [len(data.y_val)] * 2


def test_load_run_reads_history_and_status(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.status == "finished" and run.name == "tiny"
    assert run.history == read_history(run_dir / "history.csv")


def test_same_seed_gives_the_same_run_folder(run_dir: Path, data: CifarData, tmp_path: Path) -> None:
    train_run(TINY, TRAIN, data, tmp_path / "again")

    def without_seconds(path: Path) -> list[EpochRecord]:
        return [dataclasses.replace(row, seconds=0.0) for row in read_history(path)]

    assert without_seconds(tmp_path / "again" / "history.csv") == without_seconds(run_dir / "history.csv")
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["confusion_matrix"] == json.loads((run_dir / "metrics.json").read_text())["confusion_matrix"]


# --- stops and crashes -----------------------------------------------------------------

def test_stopped_run_is_tested_and_marked_stopped(data: CifarData, tmp_path: Path) -> None:
    stop = threading.Event()

    def stop_at_once(event: BatchEvent | EpochEvent) -> None:
        stop.set()

    metrics = train_run(TINY, TRAIN, data, tmp_path / "stopped", on_event=stop_at_once, stop=stop)
    assert metrics.status == "stopped" and metrics.best_epoch == 1
    assert 0 <= metrics.test_acc <= 1
    assert load_run(tmp_path / "stopped").status == "stopped"


class Crash(RuntimeError):
    pass


def test_crash_mid_run_keeps_the_finished_epochs(data: CifarData, tmp_path: Path) -> None:
    def crash_after_first_epoch(event: BatchEvent | EpochEvent) -> None:
        if isinstance(event, BatchEvent) and event.epoch == 2:
            raise Crash("power cut")

    with pytest.raises(Crash):
        train_run(TINY, TRAIN, data, tmp_path / "crashed", on_event=crash_after_first_epoch)
    run = load_run(tmp_path / "crashed")
    assert run.status == "interrupted"
    assert [r.epoch for r in run.history] == [1]
    run.load_model()  # the best epoch so far is usable


def test_failure_after_training_does_not_leave_the_run_running(data: CifarData, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from cifar_core import pipeline

    def broken_evaluate(*args: object, **kwargs: object) -> None:
        raise Crash("evaluation failed")

    monkeypatch.setattr(pipeline, "evaluate", broken_evaluate)
    with pytest.raises(Crash):
        train_run(TINY, TRAIN.__class__(**TRAIN.to_dict() | {"epochs": 1}), data, tmp_path / "r")
    # This process is alive, so only the recorded status can tell that the run ended.
    assert load_run(tmp_path / "r").status == "interrupted"


def test_a_device_this_machine_lacks_leaves_no_run_behind(data: CifarData, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train_run(TINY, dataclasses.replace(TRAIN, device="cuda"), data, tmp_path / "r")
    # Else a student's mistyped --device would list as an interrupted run in the app.
    assert not (tmp_path / "r").exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("pid, host, expected", [
    ("dead", "here", "interrupted"),
    ("self", "here", "running"),
    ("self", "elsewhere.example", "interrupted"),
    (None, "here", "interrupted"),
])
def test_running_status_needs_a_live_process(run_dir: Path, tmp_path: Path, pid: str | None, host: str,
                                             expected: str) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    pids = {"dead": dead_pid(), "self": os.getpid(), None: None}
    edit_json(path / "metrics.json", status="running", pid=pids[pid],
              host=socket.gethostname() if host == "here" else host)
    assert load_run(path).status == expected


def test_list_runs_newest_first_skipping_broken_folders(run_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name, created in [("old", "2026-01-01T00:00:00"), ("new", "2026-06-01T00:00:00"),
                          ("mid", "2026-03-01T00:00:00")]:
        edit_json(copy_run(run_dir, root / name) / "config.json", created=created)
    (root / "not-a-run").mkdir()
    (copy_run(run_dir, root / "broken") / "config.json").write_text("{ half a file")
    (root / "stray.txt").write_text("hello")
    assert [r.name for r in list_runs(root)] == ["new", "mid", "old"]
    assert list_runs(tmp_path / "absent") == []


def test_list_runs_defaults_to_the_runs_dir(run_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    copy_run(run_dir, tmp_path / "env-runs" / "a")
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "env-runs"))
    assert [r.name for r in list_runs()] == ["a"]
    fresh = new_run_dir(label="quick")
    assert fresh.parent == tmp_path / "env-runs" and fresh.name.endswith("-quick") and not fresh.exists()


def test_new_run_dir_never_reuses_a_name(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path, "x")
    first.mkdir()
    second = new_run_dir(tmp_path, "x")
    assert second != first and not second.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda p: shutil.rmtree(p), "does not exist"),
    (lambda p: (p / "config.json").unlink(), "not a run folder"),
    (lambda p: (p / "config.json").write_text("[1, 2]"), "JSON object"),
    (lambda p: (p / "config.json").write_text('{"model": {"wings": 2}, "train": {}}'), "invalid"),
    (lambda p: (p / "metrics.json").write_text("{"), "unreadable"),
    (lambda p: (p / "history.csv").write_text("epoch,train_loss\n1,abc\n"), "unreadable"),
])
def test_damaged_run_folders_raise_run_error(run_dir: Path, tmp_path: Path, damage, message: str) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    damage(path)
    with pytest.raises(RunError, match=message):
        load_run(path)


# --- weights ---------------------------------------------------------------------------

def test_torch_pickle_renamed_to_safetensors_is_refused(run_dir: Path, tmp_path: Path) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    marker = tmp_path / "pwned"
    state = load_run(run_dir).load_model().state_dict()
    torch.save({**state, "extra": WritesMarker(marker)}, path / "weights.safetensors")
    with pytest.raises(RunError, match="safetensors"):
        load_run(path).load_model()
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage" * 100])
def test_garbage_weights_are_refused(run_dir: Path, tmp_path: Path, content: bytes) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    (path / "weights.safetensors").write_bytes(content)
    with pytest.raises(RunError, match="safetensors"):
        load_run(path).load_model()


def test_truncated_weights_are_refused(run_dir: Path, tmp_path: Path) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    raw = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RunError):
        load_run(path).load_model()


def test_weights_for_another_model_are_refused(run_dir: Path, tmp_path: Path) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    config = json.loads((path / "config.json").read_text())
    config["model"]["conv_filters"] = [8, 32]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="does not fit"):
        load_run(path).load_model()


def test_missing_weights_say_so(run_dir: Path, tmp_path: Path) -> None:
    path = copy_run(run_dir, tmp_path / "r")
    (path / "weights.safetensors").unlink()
    with pytest.raises(RunError, match="no weights"):
        load_run(path).load_model()


def test_weights_round_trip_exactly(tmp_path: Path) -> None:
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    runs.atomic_write(tmp_path / "w.safetensors", runs.save_weights_bytes(state))
    loaded = runs.load_weights(tmp_path / "w.safetensors")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


# --- atomic writes ----------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "target.json")


def test_atomic_write_replaces_the_content(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content" and leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            fail_in: str, error: type) -> None:
    target = tmp_path / "target.json"
    target.write_bytes(b'{"complete": true}')

    def fail(*args: object, **kwargs: object) -> None:
        raise error("disk on fire")

    if fail_in == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fd: int, mode: str) -> None:
                self.f = real_fdopen(fd, mode)

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])  # half the bytes reach the disk, then...
                self.f.flush()
                fail()

        monkeypatch.setattr(runs.os, "fdopen", HalfWriter)
    else:
        monkeypatch.setattr(runs.os, fail_in, fail)
    with pytest.raises(error):
        atomic_write(target, b'{"complete": "new and longer"}')
    monkeypatch.undo()
    assert target.read_bytes() == b'{"complete": true}'
    assert leftovers(tmp_path) == []


def test_history_csv_round_trips(tmp_path: Path) -> None:
    history = [EpochRecord(1, 2.3, 0.1, 2.2, 0.15, 0.001, 1.5),
               EpochRecord(2, 1.9, 0.3, 1.8, 0.35, 0.0005, 1.25)]
    (tmp_path / "history.csv").write_bytes(history_csv(history))
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == HISTORY_HEADER
    assert read_history(tmp_path / "history.csv") == history
    assert read_history(tmp_path / "absent.csv") == []


# --- evaluating a run ---------------------------------------------------------------------

def made_up_evaluation(seed: int = 0) -> Evaluation:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 300)
    probabilities = rng.dirichlet(np.ones(10), 300)
    probabilities[np.arange(300) % 2 == 0, labels[::2]] += 1  # half are likely right
    probabilities /= probabilities.sum(1, keepdims=True)
    return Evaluation(labels, probabilities.argmax(1), probabilities, tuple(DEFAULT_CLASSES))


def test_confusion_and_per_class_figures_by_hand() -> None:
    ev = made_up_evaluation()
    cm = np.zeros((10, 10), int)
    for t, p in zip(ev.labels, ev.predicted):
        cm[t, p] += 1
    np.testing.assert_array_equal(ev.confusion(), cm)
    np.testing.assert_allclose(ev.confusion(normalize=True), cm / cm.sum(1, keepdims=True))
    report = ev.per_class()
    np.testing.assert_allclose(report["recall"], np.diag(cm) / cm.sum(1))
    np.testing.assert_allclose(report["precision"], np.diag(cm) / np.maximum(cm.sum(0), 1))
    assert report["support"].tolist() == cm.sum(1).tolist()
    assert ev.accuracy == pytest.approx(np.trace(cm) / cm.sum())


def test_mistakes_are_wrong_and_most_confident_first() -> None:
    ev = made_up_evaluation(1)
    table = ev.mistakes(limit=1000)
    wrong = np.flatnonzero(ev.predicted != ev.labels)
    assert sorted(table["index"]) == sorted(wrong)
    assert list(table["confidence"]) == sorted(table["confidence"], reverse=True)
    cats = ev.mistakes(true_class=3, limit=1000)
    assert all(ev.labels[i] == 3 and ev.predicted[i] != 3 for i in cats["index"])
    assert len(ev.mistakes(limit=5)) == min(5, len(wrong))
    pair = ev.pair(3, 5)
    assert all(ev.labels[i] == 3 and ev.predicted[i] == 5 for i in pair)
    assert list(ev.probabilities[pair, 5]) == sorted(ev.probabilities[pair, 5], reverse=True)


@pytest.mark.parametrize(("config", "shape"), [
    (ModelConfig(conv_filters=(8, 16, 16, 16, 16, 16), convs_per_block=2, padding="same",
                 head="global_max", dense_units=(), dense_dropout=()), (8, 3, 3, 3)),
    (ModelConfig(stem="whiten", conv_filters=(8, 16), conv_dropout=0, padding="same", head="global_max",
                 dense_units=(), dense_dropout=()), (24, 3, 2, 2)),
], ids=["ten-or-more-names", "whitening-stem"])
def test_first_conv_weights_are_those_that_see_the_image(tmp_path: Path, config: ModelConfig,
                                                         shape: tuple[int, ...]) -> None:
    # The weights file lists tensors by name: "conv1" < "conv10" < "conv2" < "stem".
    model = build_model(config)
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(runs.save_weights_bytes(model.state_dict()))
    expected = (model.layers.stem if config.stem == "whiten" else model.layers.conv1).weight
    assert runs.first_conv_weights(path).shape == shape
    np.testing.assert_array_equal(runs.first_conv_weights(path), expected.detach().numpy())
