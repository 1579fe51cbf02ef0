"""One complete run: build the model, train it, test it, and keep it all in a run folder.

The command line and the app's background jobs both call ``train_run``, so a run
started from either leaves the same folder behind.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import torch

from .data import CifarData
from .evaluation import evaluate
from .model import ModelConfig, build_model
from .runs import RunError, RunWriter
from .training import EpochEvent, Event, EventHandler, FitResult, TrainConfig, fit


def train_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data: CifarData, run_dir: Path,
              on_event: EventHandler | None = None, stop: threading.Event | None = None,
              preset: str | None = None, subset: int | None = None) -> dict:
    """Train, record every epoch in ``run_dir``, evaluate on the test set; returns the metrics.

    A run stopped by the user is still tested and saved (status ``stopped``); an
    exception marks the folder ``interrupted`` and propagates.
    """
    writer = RunWriter(run_dir, model_cfg, train_cfg, preset, subset)
    torch.manual_seed(train_cfg.seed)  # the initial weights belong to the seeded run too
    model = build_model(model_cfg)
    history = []

    def record(event: Event) -> None:
        if isinstance(event, EpochEvent):
            history.append(event.record)
            state = model.state_dict() if event.improved or not train_cfg.restore_best else None
            writer.epoch_done(history, event.best_epoch, event.val_confusion, state, event.grad_norms)
        if on_event:
            on_event(event)

    try:
        result: FitResult = fit(model, data, train_cfg, record, stop)
        if not result.history:
            writer.finish("stopped", train_seconds=result.train_seconds)
            return writer.metrics
        writer.save_weights(result.best_state)
        test = evaluate(model, data.x_test, data.y_test, data.classes, train_cfg.device,
                        train_cfg.precision, train_cfg.tta_flip)
    except BaseException:
        # Also after training: a run whose process lives on (an app job) must not stay "running".
        # When this write fails too (the disk is full), the first failure is the one to report;
        # the writer still marks the run ended for this process.
        with contextlib.suppress(RunError):
            writer.finish("interrupted")
        raise
    best = result.history[result.best_epoch - 1]
    writer.finish(
        "stopped" if result.stopped_by_user else "finished",
        best_epoch=result.best_epoch, val_acc=best.val_acc, test_acc=test.accuracy,
        epochs_run=len(result.history), stopped_early=result.stopped_early,
        images_per_second=round(result.images_per_second, 1),
        train_seconds=round(result.train_seconds, 2),
        seconds_per_epoch=round(float(np.mean([r.seconds for r in result.history])), 2),
        confusion_matrix=test.confusion().tolist(), classes=list(data.classes))
    return writer.metrics
