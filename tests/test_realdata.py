"""The real CIFAR-10 (built from ../shared/datasets; skipped with a reason where absent).

Measured on the 2-core development machine (AVX512-BF16, one torch thread), `train
--preset baseline --epochs 4 --subset 10000`: test accuracy 0.396 with the default seed
(0.393 in fp32), 0.339 to 0.387 with seeds 1-3; about 4 s per epoch, 20 s for the whole
command. The floor below is 2.8 times chance and 5 points under the worst seed seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifar_core.data import DEFAULT_CLASSES, load_cifar10

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable
TEST_ACCURACY_FLOOR = 0.28


@pytest.fixture(scope="module")
def real(real_cifar_root: Path):
    return load_cifar10(real_cifar_root, download=False)


def test_real_split_sizes_and_class_balance(real) -> None:
    assert (len(real.y_train), len(real.y_val), len(real.y_test)) == (40_000, 10_000, 10_000)
    assert real.x_train.shape == (40_000, 32, 32, 3) and real.x_train.dtype == np.uint8
    everything = np.concatenate([real.y_train, real.y_val, real.y_test])
    assert np.bincount(everything, minlength=10).tolist() == [6_000] * 10
    assert np.bincount(real.y_test, minlength=10).tolist() == [1_000] * 10
    assert real.classes == DEFAULT_CLASSES


def test_correct_channel_order_gives_smooth_photographs(real, real_cifar_root: Path) -> None:
    # In a photograph neighbouring pixels are alike. The presentation's reshape makes each
    # "pixel" three neighbours from one colour plane, so its horizontal neighbours are three
    # pixels apart and at every 32nd step jump to another row or plane: twice as rough
    # (14.4 against 29.1 grey levels on the test images).
    def roughness(images: np.ndarray) -> float:
        return float(np.abs(np.diff(images[:2000].astype(np.int16), axis=2)).mean())

    wrong = load_cifar10(real_cifar_root, channel_order="as_presented", download=False)
    assert roughness(real.x_test) * 1.5 < roughness(wrong.x_test)


def test_baseline_trained_briefly_beats_the_floor(real_cifar_root: Path, tmp_path: Path) -> None:
    env = dict(os.environ, CIFAR10_DIR=str(real_cifar_root), CIFAR_RUNS_DIR=str(tmp_path / "runs"),
               # One thread: two OpenMP threads on a busy 2-core machine run several times slower.
               OMP_NUM_THREADS="1")
    out = tmp_path / "baseline"
    started = time.perf_counter()
    result = subprocess.run(
        [PYTHON, "-m", "cifar_core", "train", "--preset", "baseline", "--epochs", "4",
         "--subset", "10000", "--set", "precision=auto", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"\nbaseline, 4 epochs on 10,000 real images: test_acc {metrics['test_acc']:.4f}, "
          f"val_acc {metrics['val_acc']:.4f}, {metrics['train_seconds']:.1f}s training, "
          f"{seconds:.1f}s in all")
    assert metrics["status"] == "finished"
    assert np.array(metrics["confusion_matrix"]).sum() == 2_500
    assert metrics["test_acc"] >= TEST_ACCURACY_FLOOR
    assert metrics["val_acc"] >= TEST_ACCURACY_FLOOR


def test_the_bundled_models_store_their_predictions_in_the_official_test_order(real) -> None:
    from cifar_core.bundled import bundled_runs

    for run in bundled_runs():
        stored = run.stored_test_predictions()
        hint = f"python -m cifar_core evaluate {run.path} --save-predictions --data-dir DIR"
        assert stored is not None and stored.image_digests is not None, f"{run.name}: run `{hint}`"
        assert stored.labels.tolist() == real.y_test.tolist(), f"{run.name}: labels not in the official order"
        assert stored.image_digests.tolist() == real.test_digests.tolist(), f"{run.name}: other test images"


def test_evaluate_draws_every_bundled_model_on_the_official_data_without_classifying(
        real_cifar_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A server holding the official data (the archive users download) finds each bundled
    model's stored predictions by the images' content: no visitor waits on a recomputation."""
    from streamlit.testing.v1 import AppTest

    import app_state
    from cifar_core.bundled import bundled_runs

    monkeypatch.setenv("CIFAR10_DIR", str(real_cifar_root))
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "runs"))
    store = app_state._evaluations()
    before = store.computations
    for run in bundled_runs():
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
        at.query_params.update({"run": run.name, "split": "test"})
        at.switch_page("app_pages/evaluate.py")
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        shown = next(m.value for m in at.metric if m.label == "Test accuracy")
        assert shown == f"{run.stored_test_predictions().accuracy:.1%}", run.name
    assert store.computations == before
