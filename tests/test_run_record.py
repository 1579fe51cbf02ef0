"""A run folder read back as typed records: metrics, epochs, and what every page asks of a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar_core.bundled import bundled_runs
from cifar_core.compare import leaderboard, run_table
from cifar_core.config import ModelConfig, TrainConfig
from cifar_core.data import DEFAULT_CLASSES, image_digests
from cifar_core.evaluation import Evaluation
from cifar_core.record import WEIGHTS_FILE, EpochRecord, RunConfig, RunMetrics, StoredPredictions
from cifar_core.runs import MODELS_DIR, RunWriter, load_run

REPO = Path(__file__).resolve().parents[1]
RECORD = EpochRecord(1, 2.0, 0.3, 1.9, 0.35, 0.001, 2.5)


def write_run(path: Path, finish: dict | None = None, subset: int | None = None) -> Path:
    writer = RunWriter(path, RunConfig(ModelConfig(), TrainConfig(), preset="baseline", subset=subset))
    writer.epoch_done([RECORD], 1, np.eye(10, dtype=np.int64), None)
    if finish is not None:
        writer.finish("finished", **finish)
    return path


def test_metrics_keep_the_file_format() -> None:
    assert RunMetrics().to_dict() == {"status": "running", "best_epoch": 0, "val_acc": None, "test_acc": None,
                                      "images_per_second": None, "train_seconds": None,
                                      "confusion_matrix": None}
    done = RunMetrics(status="finished", classes=("a", "b"), stopped_early=False)
    assert done.to_dict()["classes"] == ["a", "b"] and done.to_dict()["stopped_early"] is False
    assert RunMetrics.from_dict(done.to_dict()) == done


def test_metrics_of_the_wrong_type_count_as_missing() -> None:
    metrics = RunMetrics.from_dict({"status": 3, "val_acc": "high", "best_epoch": True, "classes": "x"})
    assert metrics == RunMetrics(status="interrupted")


def test_a_run_answers_its_label_classes_accuracy_and_origin(tmp_path: Path) -> None:
    running = load_run(write_run(tmp_path / "r1", subset=2000))
    assert running.status == "running" and running.accuracy == 0.35 and running.metrics.epochs_run == 1
    assert running.label == "r1 (running) · baseline · 2,000 images"
    assert running.classes == DEFAULT_CLASSES and not running.is_bundled
    assert running.history == [RECORD]
    done = load_run(write_run(tmp_path / "r2", finish={"test_acc": 0.4, "classes": tuple("abcdefghij")}))
    assert done.accuracy == 0.4 and done.classes == tuple("abcdefghij")
    assert done.label == "r2 (finished) · baseline · test 40.0%"
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["classes"] == list("abcdefghij")


def test_bundled_models_say_so() -> None:
    for run in bundled_runs():
        assert run.is_bundled and run.path.parent == MODELS_DIR
        assert run.label.startswith(f"Bundled model '{run.name}'")
        assert run.test_confusion() is not None and run.classes == DEFAULT_CLASSES


def test_one_run_table_serves_the_run_list_and_the_leaderboard(tmp_path: Path) -> None:
    runs = [load_run(write_run(tmp_path / "a", subset=500)),
            load_run(write_run(tmp_path / "b", finish={"val_acc": 0.9, "test_acc": 0.8}))]
    table = run_table(runs)
    assert table["run"].tolist() == ["a", "b"] and table["best_epoch"].tolist() == [1, 1]
    assert table["images"].tolist()[0] == 500 and np.isnan(table["images"].tolist()[1])
    board = leaderboard(runs)
    assert board["run"].tolist() == ["b", "a"] and "created" not in board


def test_config_keeps_its_file_format_and_reads_older_or_damaged_files_leniently() -> None:
    config = RunConfig(ModelConfig(), TrainConfig(epochs=3), preset="baseline", subset=500,
                       created="2026-01-01T00:00:00", owner="Ada")
    values = config.to_dict()
    assert list(values) == ["model", "train", "preset", "subset", "channel_order", "created", "owner"]
    assert RunConfig.from_dict(json.loads(json.dumps(values))) == config
    older = {"model": ModelConfig().to_dict(), "train": TrainConfig().to_dict()}
    assert RunConfig.from_dict(older) == RunConfig(ModelConfig(), TrainConfig(), created="")
    damaged = older | {"preset": 7, "subset": "all", "created": None, "owner": ["x"], "channel_order": 1}
    assert RunConfig.from_dict(damaged) == RunConfig(ModelConfig(), TrainConfig(), created="")


def test_a_runs_owner_is_kept_in_its_folder(tmp_path: Path) -> None:
    RunWriter(tmp_path / "r", RunConfig(ModelConfig(), TrainConfig(), owner="Grace"))
    assert load_run(tmp_path / "r").config.owner == "Grace"
    assert json.loads((tmp_path / "r" / "config.json").read_text())["owner"] == "Grace"


@pytest.mark.slow  # starts a Python process that imports torch
def test_reading_run_folders_does_not_load_the_training_loop() -> None:
    # Every page that only lists or shows runs imports cifar_core.runs.
    code = "import sys, cifar_core.runs; print(sorted(m for m in sys.modules if m.startswith('cifar_core.')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    assert "cifar_core.record" in loaded and "cifar_core.training" not in loaded
    assert "cifar_core.augment" not in loaded


def an_evaluation(rows: int = 6) -> Evaluation:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(10), rows)
    digests = image_digests(np.arange(rows * 12, dtype=np.uint8).reshape(rows, 2, 2, 3))
    return Evaluation(rng.integers(0, 10, rows), probabilities.argmax(1), probabilities, DEFAULT_CLASSES,
                      digests)


def stored(result: Evaluation, digests: bool = True) -> StoredPredictions:
    return StoredPredictions(result.labels, result.predicted, result.probabilities,
                             result.image_digests if digests else None, "abc", "flip")


def test_stored_predictions_round_trip_in_float16() -> None:
    result = an_evaluation()
    back = StoredPredictions.from_bytes(stored(result).to_bytes(), 10)
    assert back is not None and (back.weights_sha256, back.tta) == ("abc", "flip")
    assert back.labels.tolist() == result.labels.tolist()
    assert back.predicted.tolist() == result.predicted.tolist()
    np.testing.assert_allclose(back.probabilities, result.probabilities, atol=1e-3)
    assert back.image_digests.tolist() == result.image_digests.tolist()


def test_damaged_stored_predictions_are_ignored() -> None:
    raw = stored(an_evaluation()).to_bytes()
    assert StoredPredictions.from_bytes(raw[:100], 10) is None
    assert StoredPredictions.from_bytes(b"not a zip", 10) is None
    assert StoredPredictions.from_bytes(raw, 3) is None  # probabilities of 10 classes


def test_predictions_stored_before_digests_still_read_but_match_by_position_only() -> None:
    back = StoredPredictions.from_bytes(stored(an_evaluation(), digests=False).to_bytes(), 10)
    assert back is not None and back.image_digests is None


def test_stored_predictions_count_only_for_the_weights_and_views_that_made_them(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r")
    (path / WEIGHTS_FILE).write_bytes(b"the weights")
    result = an_evaluation()
    load_run(path).save_test_predictions(result)
    back = load_run(path).stored_test_predictions()
    assert back is not None and back.predicted.tolist() == result.predicted.tolist()
    assert back.in_order_of(result.image_digests[::-1], result.labels[::-1]) is not None
    config = json.loads((path / "config.json").read_text())
    config["train"]["tta"] = "flip"  # the same weights, other test-time views
    (path / "config.json").write_text(json.dumps(config))
    assert load_run(path).stored_test_predictions() is None
