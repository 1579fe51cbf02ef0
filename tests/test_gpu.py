"""Training and evaluation on a GPU (CUDA or Apple MPS), where there is one.

Every test here is marked ``gpu`` and skipped, with the reason, on a machine without
an accelerator; ``pytest -m gpu`` runs just these on one that has it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_core.config import get_preset
from cifar_core.data import CifarData
from cifar_core.devices import resolve_device
from cifar_core.evaluation import evaluate
from cifar_core.model import build_model, predict_logits
from cifar_core.pipeline import train_run
from cifar_core.runs import load_run
from cifar_core.training import fit


def accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return None


DEVICE = accelerator()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE is None, reason="no CUDA or MPS device on this machine")]


def allocated() -> int:
    """Bytes the accelerator has handed out so far in this process."""
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated()
    return torch.mps.driver_allocated_memory()


def test_auto_picks_the_accelerator() -> None:
    assert resolve_device("auto").type == DEVICE
    assert resolve_device(DEVICE).type == DEVICE


@pytest.mark.parametrize("preset", ["quick", "baseline"])
@pytest.mark.parametrize("device", ["auto", "explicit"])
def test_short_run_trains_and_tests_on_the_accelerator(data: CifarData, tmp_path: Path, preset: str,
                                                       device: str) -> None:
    p = get_preset(preset)
    # Batches of 32: the fixture's 400 training images make 12 steps an epoch.
    train = replace(p.train, epochs=3, batch_size=32, device=DEVICE if device == "explicit" else "auto",
                    seed=1)
    metrics = train_run(p.model, train, data, tmp_path / "run", preset=preset)
    assert metrics.status == "finished"
    assert allocated() > 0, "the run never touched the accelerator"
    history = load_run(tmp_path / "run").history
    assert len(history) == 3
    assert all(np.isfinite([r.train_loss, r.val_loss]).all() for r in history)
    assert min(r.train_loss for r in history[1:]) < history[0].train_loss, "the loss went down"
    assert max(r.val_acc for r in history) > 0.2, "better than chance (0.1) on learnable images"
    assert sum(map(sum, metrics.confusion_matrix)) == len(data.y_test)


def test_weights_trained_on_the_accelerator_give_the_same_answers_on_the_cpu(
        data: CifarData, tmp_path: Path) -> None:
    p = get_preset("quick")
    train = replace(p.train, epochs=2, precision="fp32", seed=2)
    train_run(p.model, train, data, tmp_path / "run", preset="quick")
    run = load_run(tmp_path / "run")
    on_gpu = evaluate(run.load_model(DEVICE), data.x_test, data.y_test, data.classes, device=DEVICE,
                      tta=train.tta)
    on_cpu = evaluate(run.load_model("cpu"), data.x_test, data.y_test, data.classes, device="cpu",
                      tta=train.tta)
    assert on_gpu.accuracy == pytest.approx(run.metrics.test_acc)
    assert np.abs(on_gpu.probabilities - on_cpu.probabilities).max() < 1e-3
    assert (on_gpu.predicted == on_cpu.predicted).mean() >= 0.99


def test_bf16_autocast_on_the_accelerator_stays_close_to_fp32(data: CifarData) -> None:
    p = get_preset("baseline-bn")
    torch.manual_seed(0)
    model = build_model(p.model)
    fit(model, data, replace(p.train, epochs=1, device=DEVICE, precision="fp32"))
    device = torch.device(DEVICE)
    full = predict_logits(model, data.x_test, device, bf16=False)
    half = predict_logits(model, data.x_test, device, bf16=True)
    assert full.dtype == half.dtype == torch.float32
    assert (full.argmax(1) == half.argmax(1)).float().mean() >= 0.95
