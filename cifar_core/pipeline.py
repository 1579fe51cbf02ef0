"""One complete run: build the model, train it, test it, and keep it all in a run folder.

The command line and the app's background jobs both call ``train_run`` to start a run
and ``resume_run`` to go on with a stopped or interrupted one, so a run started or
resumed from either leaves the same folder behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig, TrainConfig, check_owner
from .data import CifarData
from .devices import resolve_device
from .evaluation import evaluate
from .liveness import training_lock
from .model import build_model
from .record import CHECKPOINT_FILE, EpochRecord, RunConfig, RunError, RunMetrics
from .runs import ResumePoint, Run, RunWriter, load_run, make_run_folder, read_checkpoint
from .training import EpochEvent, Event, EventHandler, FitResult, TrainingState, fit


def train_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data: CifarData, run_dir: Path,
              on_event: EventHandler | None = None, stop: threading.Event | None = None,
              preset: str | None = None, subset: int | None = None,
              channel_order: str = "correct", owner: str | None = None) -> RunMetrics:
    """Train, record every epoch in ``run_dir``, evaluate on the test set and keep its
    predictions there too (the Evaluate page draws them at once); returns the metrics.
    ``owner``, the display name of whoever started the run, is kept in its config.json.

    A run stopped by the user is still tested and saved (status ``stopped``); an
    exception marks the folder ``interrupted`` and propagates. A device this machine lacks
    raises ConfigError before the folder exists, so it leaves no run behind.
    """
    resolve_device(train_cfg.device)
    owner = check_owner(owner)  # a bad name, like a missing device, before the folder exists
    # The lock before any write: the folder may be another process's run.
    with training_lock(make_run_folder(run_dir)):
        config = RunConfig(model_cfg, train_cfg, preset, subset, channel_order, owner=owner)
        writer = RunWriter(run_dir, config)
        torch.manual_seed(train_cfg.seed)  # the initial weights belong to the seeded run too
        model = build_model(model_cfg)
        return _train_and_test(model, train_cfg, data, writer, on_event, stop)


def resume_run(run_dir: str | os.PathLike, data: CifarData, on_event: EventHandler | None = None,
               stop: threading.Event | None = None) -> RunMetrics:
    """Go on with a stopped or interrupted run from its last complete epoch, in its own folder.

    ``data`` must be what the run trained on (its subset, its channel order); ``RunError``
    when the folder is not a run, has finished, or has no usable checkpoint.
    """
    path = _resumable(run_dir).path
    with training_lock(path):
        run = _resumable(path)  # again: another process may have resumed it in between
        state = read_training_state(run.path)
        cfg = run.train_config
        if state.epoch >= cfg.epochs:
            raise RunError(f"{run.path}: all {cfg.epochs} planned epochs are done; "
                           "there is nothing to resume")
        if (state.train_images, state.val_images) != (len(data.y_train), len(data.y_val)):
            raise RunError(f"{run.path} trained on {state.train_images:,} images (validated on "
                           f"{state.val_images:,}); this data has {len(data.y_train):,} "
                           f"({len(data.y_val):,}): is it the same dataset?")
        resolve_device(cfg.device)  # before reopening: a run that cannot go on here keeps its record
        writer = RunWriter.reopen(run, resume_point(state, cfg))
        model = build_model(run.model_config)
        try:
            return _train_and_test(model, cfg, data, writer, on_event, stop, state)
        except ValueError as err:  # the saved state does not fit this model or data
            raise RunError(f"{run.path}: cannot resume: {err}") from None


def read_training_state(run_dir: Path) -> TrainingState:
    """The training state a run's checkpoint holds; ``RunError`` when it is missing or unusable."""
    try:
        return TrainingState.from_state_dict(read_checkpoint(run_dir))
    except ValueError as err:
        raise RunError(f"{Path(run_dir) / CHECKPOINT_FILE}: not a usable checkpoint ({err})") from None


def resume_point(state: TrainingState, cfg: TrainConfig) -> ResumePoint:
    """What the run folder holds when training goes on from ``state``."""
    if cfg.restore_best:
        return ResumePoint(state.history, state.best_state, state.stopping.best_epoch)
    return ResumePoint(state.history, state.model, state.epoch)


def _resumable(run_dir: str | os.PathLike) -> Run:
    run = load_run(run_dir)
    blocker = run.resume_blocker()
    if blocker:
        raise RunError(blocker)
    return run


def _train_and_test(model: torch.nn.Module, cfg: TrainConfig, data: CifarData, writer: RunWriter,
                    on_event: EventHandler | None, stop: threading.Event | None,
                    resume: TrainingState | None = None) -> RunMetrics:
    history: list[EpochRecord] = list(resume.history) if resume else []

    def record(event: Event) -> None:
        if isinstance(event, EpochEvent):
            history.append(event.record)
            state = model.state_dict() if event.improved or not cfg.restore_best else None
            writer.epoch_done(history, event.best_epoch, event.val_confusion, state, event.grad_norms)
        if on_event:
            on_event(event)

    try:
        result: FitResult = fit(model, data, cfg, record, stop, resume=resume,
                                on_state=lambda state: writer.save_checkpoint(state.state_dict()))
        if not result.history:
            writer.finish("stopped", train_seconds=result.train_seconds)
            return writer.metrics
        writer.save_weights(result.best_state)
        test = evaluate(model, data.x_test, data.y_test, data.classes, cfg.device,
                        cfg.precision, cfg.tta)
        writer.save_test_predictions(test, cfg.tta)
    except BaseException:
        # Also after training: a run whose process lives on (an app job) must not stay "running".
        # When this write fails too (the disk is full), the first failure is the one to report;
        # the writer still marks the run ended for this process.
        with contextlib.suppress(RunError):
            writer.finish("interrupted")
        raise
    best = result.history[result.best_epoch - 1]
    status = "stopped" if result.stopped_by_user else "finished"
    writer.finish(
        status, best_epoch=result.best_epoch, val_acc=best.val_acc, test_acc=test.accuracy,
        epochs_run=len(result.history), stopped_early=result.stopped_early,
        images_per_second=round(result.images_per_second, 1),
        train_seconds=round(result.train_seconds, 2),
        seconds_per_epoch=round(float(np.mean([r.seconds for r in result.history])), 2),
        confusion_matrix=test.confusion().tolist(), classes=tuple(data.classes))
    if status == "finished":
        writer.discard_checkpoint()
    return writer.metrics
