"""Models that ship their test results, and which run a page opens on.

The bundled models carry their test-set predictions, so Evaluate draws them at once with or
without the data; the app opens Predict and Evaluate on the most accurate finished model,
or on the run this visitor has just trained, never on one still training.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cifar_core.__main__ import main
from cifar_core.bundled import bundled_runs
from cifar_core.config import ModelConfig, TrainConfig
from cifar_core.data import load_cifar10
from cifar_core.evaluation import evaluate
from cifar_core.pipeline import train_run
from cifar_core.record import PREDICTIONS_FILE, RunConfig, RunMetrics
from cifar_core.runs import Run, default_run, load_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(ModelConfig(conv_filters=(8, 8, 8)),
              TrainConfig(epochs=1, augmentation="none", early_stopping=False, precision="fp32",
                          device="cpu"), load_cifar10(cifar_root, download=False), path, preset="baseline")
    return path


def test_the_bundled_models_ship_their_test_predictions() -> None:
    runs = bundled_runs()
    assert {run.name for run in runs} >= {"best", "fast", "baseline"}
    for run in runs:
        stored = run.stored_test_predictions()
        hint = f"python -m cifar_core evaluate {run.path} --save-predictions"
        assert stored is not None, f"{run.name}: run `{hint}`"
        assert len(stored.labels) == 10_000 and stored.probabilities.shape == (10_000, 10)
        assert (run.path / PREDICTIONS_FILE).stat().st_size < 300_000
        # The test confusion matrix the run recorded when it was trained, within a few dozen
        # of the 10,000 images (those figures came from the training precision, bfloat16 for
        # the baseline, and the same images as read at the time).
        recorded = run.test_confusion()
        assert np.abs(stored.confusion() - recorded).sum() <= 60
        assert stored.accuracy == pytest.approx(run.metrics.test_acc, abs=0.002)


def test_evaluate_save_predictions_stores_what_evaluate_computes(
        tiny_run: Path, cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = shutil.copytree(tiny_run, tmp_path / "tiny")
    (run_dir / PREDICTIONS_FILE).unlink()  # as in a run folder written before runs kept them
    assert load_run(run_dir).stored_test_predictions() is None
    assert main(["evaluate", str(run_dir), "--data-dir", str(cifar_root), "--save-predictions"]) == 0
    run = load_run(run_dir)
    stored = run.stored_test_predictions()
    data = load_cifar10(cifar_root, download=False)
    fresh = evaluate(run.load_model(), data.x_test, data.y_test, data.classes)
    assert stored is not None and stored.predicted.tolist() == fresh.predicted.tolist()
    assert stored.labels.tolist() == data.y_test.tolist()
    # Retrained (new weights): the stored predictions no longer count.
    weights = run_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    os.utime(weights, (time.time() + 5, time.time() + 5))
    assert load_run(run_dir).stored_test_predictions() is None
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "val", "--save-predictions"]) == 2
    assert "--save-predictions" in capsys.readouterr().err


def test_stored_predictions_serve_the_same_test_images_in_any_order_without_classifying(
        tiny_run: Path, cifar_root: Path) -> None:
    import app_state

    run = load_run(tiny_run)
    data = load_cifar10(cifar_root, download=False)
    order = np.random.default_rng(1).permutation(len(data.y_test))
    shuffled = replace(data, x_test=data.x_test[order], y_test=data.y_test[order],
                       source=Path("shuffled copy"))
    store = app_state._evaluations()
    before = store.computations
    result = app_state.evaluation(run, "test", shuffled)
    assert store.computations == before  # drawn from the stored predictions
    fresh = evaluate(run.load_model(), shuffled.x_test, shuffled.y_test, data.classes)
    assert result.predicted.tolist() == fresh.predicted.tolist()
    assert result.labels.tolist() == shuffled.y_test.tolist()
    assert app_state.images_for(result, "test", shuffled) is shuffled.x_test
    # Other images under the same labels: the stored predictions do not apply to them.
    other = replace(data, x_test=255 - data.x_test, source=Path("other images"))
    assert app_state.stored_on_disk(run, run.stored_test_predictions(), other) is None


def a_run(name: str, status: str, test_acc: float | None) -> Run:
    live = {"pid": os.getpid(), "host": socket.gethostname()} if status == "running" else {}
    metrics = RunMetrics.from_dict({"status": status, "test_acc": test_acc, "val_acc": test_acc, **live})
    return Run(Path("/runs") / name, RunConfig(ModelConfig(), TrainConfig()), [], metrics)


def test_the_default_is_the_most_accurate_finished_run() -> None:
    demo, fast, baseline = a_run("demo", "finished", 0.30), a_run("fast", "finished", 0.87), \
        a_run("baseline", "finished", 0.69)
    training = a_run("training", "running", 0.95)  # its best epoch so far: never the default
    stopped = a_run("stopped", "stopped", 0.90)
    assert default_run([training, demo, stopped, fast, baseline]) is fast
    assert default_run([]) is None
    assert default_run([training, stopped]) is stopped  # nothing finished: anything settled
    assert default_run([training]) is training  # the only one there is


def test_the_run_just_trained_by_this_visitor_comes_first() -> None:
    demo, fast = a_run("demo", "finished", 0.30), a_run("fast", "finished", 0.87)
    stopped = a_run("stopped", "stopped", None)
    assert default_run([demo, fast], just_trained="/runs/demo") is demo
    assert default_run([stopped, fast], just_trained="/runs/stopped") is stopped
    assert default_run([demo, fast], just_trained="/runs/gone") is fast
    training = a_run("training", "running", 0.5)
    assert default_run([training, fast], just_trained="/runs/training") is fast
