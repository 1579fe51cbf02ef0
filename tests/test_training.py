"""The training loop on a tiny learnable problem: the loss falls, early stopping fires and
restores the best weights, the stop flag acts within one batch, runs repeat exactly,
and every figure it reports agrees with a recomputation from the model."""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

from cifar_core import devices, training
from cifar_core.config import ConfigError, ModelConfig, TrainConfig
from cifar_core.data import CifarData
from cifar_core.devices import resolve_device, training_memory_format, tune_for_fixed_shapes, use_bf16
from cifar_core.model import build_model, predict_logits
from cifar_core.training import BatchEvent, EpochEvent, fit

TINY = ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.25), dense_units=(32,),
                   dense_dropout=(0.25,))


def tiny_config(**changes: object) -> TrainConfig:
    values = {"epochs": 3, "batch_size": 32, "lr": 3e-3, "augmentation": "none", "device": "cpu",
              "early_stopping": False, "precision": "fp32"} | changes
    return TrainConfig(**values)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    def __init__(self) -> None:
        self.events: list[BatchEvent | EpochEvent] = []

    def __call__(self, event: BatchEvent | EpochEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def test_loss_falls_and_accuracy_beats_chance(data: CifarData) -> None:
    result = fit(tiny_model(), data, tiny_config(epochs=4))
    first, last = result.history[0], result.history[-1]
    assert last.train_loss < first.train_loss * 0.5
    assert last.val_loss < first.val_loss
    assert last.val_acc >= 0.8
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]


def test_events_report_every_batch_and_epoch(data: CifarData) -> None:
    rec = Recorder()
    fit(tiny_model(), data, tiny_config(epochs=2, batch_size=64), on_event=rec)
    batches = rec.of(BatchEvent)
    # Whole batches only, as Keras' steps_per_epoch = n // batch_size: 400 // 64 = 6.
    assert [(e.epoch, e.batch) for e in batches] == [(ep, b) for ep in (1, 2) for b in range(1, 7)]
    assert all(e.batches == 6 and np.isfinite(e.loss) and e.images_per_second > 0 for e in batches)
    assert all(a.elapsed <= b.elapsed for a, b in zip(batches, batches[1:]))
    epochs = rec.of(EpochEvent)
    assert [e.record.epoch for e in epochs] == [1, 2]
    assert rec.events.index(epochs[0]) == 6  # the epoch event follows its last batch


def test_epoch_figures_agree_with_the_model(data: CifarData) -> None:
    rec = Recorder()
    model = tiny_model()
    result = fit(model, data, tiny_config(epochs=1, restore_best=False), on_event=rec)
    record, event = result.history[0], rec.of(EpochEvent)[0]
    logits = predict_logits(model, data.x_val, torch.device("cpu"))
    predicted = logits.argmax(1).numpy()
    assert record.val_acc == pytest.approx(float((predicted == data.y_val).mean()))
    assert record.val_loss == pytest.approx(F.cross_entropy(logits, torch.from_numpy(data.y_val)).item(),
                                            rel=1e-5)
    np.testing.assert_array_equal(event.val_confusion,
                                  confusion_matrix(data.y_val, predicted, labels=range(10)))
    assert 0 <= record.train_acc <= 1 and record.lr == 3e-3 and record.seconds > 0


def test_predict_logits_does_not_depend_on_batch_size(data: CifarData) -> None:
    model = tiny_model()
    cpu = torch.device("cpu")
    torch.testing.assert_close(predict_logits(model, data.x_test, cpu, batch_size=7),
                               predict_logits(model, data.x_test, cpu, batch_size=1000))


class ConstantValidation:
    """predict_logits that reports the same validation logits every epoch: no improvement."""

    def __call__(self, model, images, *args, **kwargs):
        return torch.zeros(len(images), 10)


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc"])
def test_early_stopping_fires_and_restores_the_best_weights(data: CifarData, monitor: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "predict_logits", ConstantValidation())
    model = tiny_model()
    states = {}

    def keep_state(event: BatchEvent | EpochEvent) -> None:
        if isinstance(event, EpochEvent):
            states[event.record.epoch] = copy.deepcopy(model.state_dict())

    cfg = tiny_config(epochs=10, early_stopping=True, patience=2, monitor=monitor)
    result = fit(model, data, cfg, on_event=keep_state)
    assert result.stopped_early and not result.stopped_by_user
    assert len(result.history) == 3 and result.best_epoch == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, states[1][key])
    assert not torch.equal(states[3]["layers.logits.weight"], states[1]["layers.logits.weight"])


def test_without_restore_best_the_last_weights_stay(data: CifarData,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "predict_logits", ConstantValidation())
    model = tiny_model()
    result = fit(model, data, tiny_config(epochs=10, early_stopping=True, patience=1, restore_best=False))
    assert len(result.history) == 2 and result.best_epoch == 2
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, result.best_state[key])


def test_early_stopping_off_runs_every_epoch(data: CifarData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "predict_logits", ConstantValidation())
    result = fit(tiny_model(), data, tiny_config(epochs=3, batch_size=128, patience=1))
    assert len(result.history) == 3 and not result.stopped_early


@pytest.mark.parametrize("at_batch", [1, 3])
def test_stop_flag_ends_the_run_within_one_batch(data: CifarData, at_batch: int) -> None:
    stop = threading.Event()
    rec = Recorder()

    def handler(event: BatchEvent | EpochEvent) -> None:
        rec(event)
        if isinstance(event, BatchEvent) and event.batch == at_batch:
            stop.set()

    result = fit(tiny_model(), data, tiny_config(epochs=5), on_event=handler, stop=stop)
    assert len(rec.of(BatchEvent)) == at_batch
    assert result.stopped_by_user and not result.stopped_early
    # The interrupted epoch is still validated and recorded, so the run keeps a result.
    assert len(result.history) == 1 and len(rec.of(EpochEvent)) == 1
    assert result.best_epoch == 1


def history_values(result: training.FitResult) -> list[tuple]:
    return [(r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.lr) for r in result.history]


def test_same_seed_gives_the_same_run(data: CifarData) -> None:
    cfg = tiny_config(epochs=2, augmentation="keras", seed=3)
    a_model, b_model = tiny_model(1), tiny_model(1)
    a, b = fit(a_model, data, cfg), fit(b_model, data, cfg)
    assert history_values(a) == history_values(b)
    for key, value in a_model.state_dict().items():
        assert torch.equal(value, b_model.state_dict()[key])
    c = fit(tiny_model(1), data, tiny_config(epochs=2, augmentation="keras", seed=4))
    assert history_values(c) != history_values(a)


def test_model_is_channels_last_while_training(data: CifarData) -> None:
    model = tiny_model()
    seen = []

    def check(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if module.training:
            seen.append((inputs[0].is_contiguous(memory_format=torch.channels_last),
                         module.weight.is_contiguous(memory_format=torch.channels_last)))

    model.layers.conv2.register_forward_pre_hook(check)
    fit(model, data, tiny_config(epochs=1, batch_size=128, augmentation="keras"))
    assert seen and all(inp and weight for inp, weight in seen)


def test_each_device_has_its_training_layout_and_only_cuda_autotunes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training_memory_format(torch.device("cpu")) == torch.channels_last
    assert training_memory_format(torch.device("cuda")) == torch.channels_last
    assert training_memory_format(torch.device("mps")) == torch.contiguous_format
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    tune_for_fixed_shapes(torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark
    tune_for_fixed_shapes(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_change_the_learning_rate(data: CifarData, schedule: str) -> None:
    result = fit(tiny_model(), data, tiny_config(epochs=3, batch_size=128, lr_schedule=schedule,
                                                 optimizer="sgd", lr=0.05))
    rates = [r.lr for r in result.history]
    assert len(set(rates)) == 3 and max(rates) <= 0.05 + 1e-12


def test_sgd_and_crop_flip_and_label_smoothing_train(data: CifarData) -> None:
    cfg = tiny_config(epochs=3, optimizer="sgd", lr=0.05, augmentation="crop_flip", label_smoothing=0.1)
    result = fit(tiny_model(), data, cfg)
    assert result.history[-1].train_loss < result.history[0].train_loss


@pytest.mark.parametrize("values, message", [
    ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"), ({"epochs": 0}, "epochs"),
    ({"optimizer": "rmsprop"}, "optimizer"), ({"augmentation": "mixup"}, "augmentation"),
    ({"patience": 0}, "patience"), ({"device": "tpu"}, "device"), ({"precision": "fp8"}, "precision"),
])
def test_invalid_train_configs_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_train_config_round_trips_through_a_dict() -> None:
    cfg = tiny_config(lr_schedule="cosine", seed=9)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"lr": 0.1, "warp": 9})


def test_baseline_train_config_is_the_presentation_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.adam_eps, cfg.batch_size, cfg.epochs) == ("adam", 1e-3, 1e-7, 64, 50)
    assert (cfg.early_stopping, cfg.monitor, cfg.patience, cfg.restore_best) == (True, "val_loss", 10, True)
    assert cfg.augmentation == "keras"


def test_precision_choice() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False
    assert use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cpu) == devices.cpu_has_native_bf16()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_a_missing_cuda_device_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_early_stopping_tracker_counts_epochs_since_the_best() -> None:
    tracker = training.EarlyStopping(monitor="val_loss", patience=2)
    assert [tracker.update(e, loss, 0.0) for e, loss in enumerate([1.0, 0.8, 0.9, 0.85], 1)] == [
        True, True, False, False]
    assert (tracker.best_epoch, tracker.since_best, tracker.should_stop) == (2, 2, True)
    by_accuracy = training.EarlyStopping(monitor="val_acc", patience=1, enabled=False)
    assert by_accuracy.update(1, 9.0, 0.5) and not by_accuracy.update(2, 0.1, 0.4)
    assert not by_accuracy.should_stop  # counted, but switched off
    # Plain data: it survives a round trip through a dict (a saved run) unchanged.
    assert training.EarlyStopping(**dataclasses.asdict(tracker)) == tracker


@pytest.mark.parametrize("changes, last_epoch, stopped_early", [
    ({"epochs": 3}, 3, False),
    ({"epochs": 10, "early_stopping": True, "patience": 2}, 3, True),
])
def test_the_epoch_event_says_whether_another_epoch_follows(
        data: CifarData, monkeypatch: pytest.MonkeyPatch, changes: dict, last_epoch: int,
        stopped_early: bool) -> None:
    monkeypatch.setattr(training, "predict_logits", ConstantValidation())
    rec = Recorder()
    fit(tiny_model(), data, tiny_config(batch_size=128, **changes), on_event=rec)
    events = rec.of(EpochEvent)
    assert [e.last for e in events] == [False] * (last_epoch - 1) + [True]
    assert events[-1].stopped_early is stopped_early


def test_altflip_shows_each_training_image_mirrored_in_alternate_epochs(
        data: CifarData, monkeypatch: pytest.MonkeyPatch) -> None:
    mirrored: list[dict[bytes, bool]] = [{}, {}]
    augment = training.augment

    def spy(x: torch.Tensor, kind: str, generator: torch.Generator, flips: torch.Tensor) -> torch.Tensor:
        epoch = mirrored[0] if len(mirrored[0]) < 384 else mirrored[1]  # 12 batches of 32 per epoch
        epoch.update({image.numpy().tobytes(): bool(f) for image, f in zip(x, flips, strict=True)})
        return augment(x, kind, generator, flips)

    monkeypatch.setattr(training, "augment", spy)
    fit(tiny_model(), data, tiny_config(epochs=2, augmentation="translate_altflip"))
    both = mirrored[0].keys() & mirrored[1].keys()
    assert len(both) > 300 and 0.3 < np.mean(list(mirrored[0].values())) < 0.7
    assert all(mirrored[0][image] != mirrored[1][image] for image in both)


def test_the_stem_bias_learns_in_its_first_epochs_only(data: CifarData,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, stem="whiten"))
    biases, stem_outputs_learn = [], []
    epoch_of = training.train_epoch

    def record(model: torch.nn.Module, setup: training.TrainingSetup, cfg: TrainConfig, epoch: int,
               *args: object, **kwargs: object) -> training.EpochTraining:
        hook = model.layers.stem.register_forward_hook(
            lambda _m, _i, out: stem_outputs_learn.append(out.requires_grad))
        try:
            result = epoch_of(model, setup, cfg, epoch, *args, **kwargs)
        finally:
            hook.remove()
        biases.append(model.layers.stem.bias.detach().clone())
        return result

    monkeypatch.setattr(training, "train_epoch", record)
    fit(model, data, tiny_config(epochs=3, optimizer="sgd", lr=0.05, stem_bias_epochs=1))
    assert not torch.equal(biases[0], torch.zeros_like(biases[0]))  # it learned in epoch 1
    torch.testing.assert_close(biases[1], biases[0], rtol=0, atol=0)  # and then stood still
    torch.testing.assert_close(biases[2], biases[0], rtol=0, atol=0)
    # Nothing before the first conv needs a gradient after epoch 1, so autograd skips its input's.
    batches = len(stem_outputs_learn) // 3
    assert all(stem_outputs_learn[:batches]) and not any(stem_outputs_learn[batches:])
    assert model.layers.stem.bias.requires_grad  # as built again, for whatever uses it next
