"""Training: the loop in small steps, early stopping, live events and a stop flag.

The whole dataset sits on the device as uint8 (N, 32, 32, 3); each batch is gathered
by index, converted to float in [0, 1], viewed as NCHW (which is channels_last in
memory), augmented on the device and fed to the model. There are no DataLoader worker
processes: on a 2-core laptop they would only compete with the math for the same cores.

``fit`` is ``set_up``, then per epoch ``train_epoch``, ``validate`` and an
``EarlyStopping`` update. It reports a ``BatchEvent`` after every batch and an
``EpochEvent`` after every epoch (which says whether another epoch follows), and checks a
``threading.Event`` after every batch so a stop request takes effect within one batch.
Given the seed, a run on the CPU is deterministic.

After set-up and after every complete epoch ``fit`` can hand out a ``TrainingState``:
everything needed to go on from there (weights, optimizer, schedule, random-number
generators, early stopping, best weights, weight average, counters) as plain tensors,
numbers and strings. ``fit(..., resume=state)`` continues from it exactly as if the run
had never stopped (on the same kind of device; moved between CPU and GPU it goes on with
fresh augmentation draws).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import alternating_flips, augment
from .config import TTA, Monitor, TrainConfig
from .data import CifarData
from .devices import autocast, resolve_device, training_memory_format, tune_for_fixed_shapes, use_bf16
from .model import CifarCNN, predict_logits, to_input
from .record import EpochRecord

log = logging.getLogger(__name__)

# --- events ---------------------------------------------------------------------

@dataclass(frozen=True)
class BatchEvent:
    epoch: int
    batch: int  # 1-based, within the epoch
    batches: int
    loss: float
    images_per_second: float
    elapsed: float  # seconds since training started


@dataclass(frozen=True)
class EpochEvent:
    record: EpochRecord
    best_epoch: int
    epochs_without_improvement: int
    improved: bool
    val_confusion: np.ndarray = field(repr=False)
    # Mean gradient norm of each conv/dense layer's weights over the epoch's batches:
    # the measurement behind "sigmoid makes gradients vanish in deep networks".
    grad_norms: dict[str, float] = field(default_factory=dict, repr=False)
    # No epoch follows this one: the planned last, a stop request, or early stopping
    # (``stopped_early``). Live views read the decision here instead of repeating the rule.
    last: bool = False
    stopped_early: bool = False


Event = BatchEvent | EpochEvent
EventHandler = Callable[[Event], None]


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    stopped_early: bool
    stopped_by_user: bool
    train_seconds: float
    images_per_second: float


# --- the loop -------------------------------------------------------------------

# Enough images for a steady estimate of the 12x12 patch covariance, in well under a second.
WHITENING_IMAGES = 5000

def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters, with batch norm and the stem's bias in a group of their own
    when ``bias_lr_scale`` gives them a larger learning rate."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if cfg.bias_lr_scale == 1:
        return [{"params": [p for _, p in trainable], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    batch_norms = {name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)}

    def is_shift(name: str) -> bool:
        return name.rsplit(".", 1)[0] in batch_norms or name.endswith("stem.bias")

    shifts = [p for name, p in trainable if is_shift(name)]
    weights = [p for name, p in trainable if not is_shift(name)]
    return [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": shifts, "lr": cfg.lr * cfg.bias_lr_scale,
             "weight_decay": cfg.weight_decay / cfg.bias_lr_scale}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernels update all parameters in one pass: about 1 ms less per step
    # than the loop-of-tensors default on a 2-core CPU, where the steps are small.
    fused = device.type in ("cpu", "cuda")
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps, fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           fused=fused)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps, pct_start=0.25, anneal_strategy="linear",
            cycle_momentum=False, div_factor=10, final_div_factor=100)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """Counts of (true, predicted) pairs; rows are true classes."""
    # np.bincount over pair codes: the same as sklearn's confusion_matrix, ~50x faster
    # per epoch on 10,000 labels, which matters when it runs after every epoch.
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def weight_layers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(layer name, weight) of every learned conv and dense layer, input to output."""
    return [(name.rsplit(".", 1)[-1], module.weight) for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad]


@dataclass
class EarlyStopping:
    """The best epoch so far by the monitored figure, and the epochs since.

    Its state is plain numbers, so it can be saved with a run and restored to go on.
    """

    monitor: Monitor = "val_loss"
    patience: int = 10
    enabled: bool = True
    best_value: float = math.inf  # lower is better: the loss, or minus the accuracy
    best_epoch: int = 0
    since_best: int = 0

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> EarlyStopping:
        return cls(cfg.monitor, cfg.patience, cfg.early_stopping)

    def update(self, epoch: int, val_loss: float, val_acc: float) -> bool:
        """Take in one epoch's validation figures; True when it is the best so far."""
        value = val_loss if self.monitor == "val_loss" else -val_acc
        if value < self.best_value:
            self.best_value, self.best_epoch, self.since_best = value, epoch, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.since_best >= self.patience


class WeightAverage:
    """Lookahead-style averaging of the weights (and batch norm statistics).

    Every ``every`` steps the average moves towards the weights, which then jump back to
    it; its decay rises as the cube of the progress, so early on it follows the weights
    closely and at the end it averages over the last few hundred steps.
    """

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5, final_decay: float = 0.95) -> None:
        self.tensors = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        self.average = [t.detach().clone() for t in self.tensors]
        self.total_steps, self.every = max(1, total_steps), every
        self.top_decay = final_decay ** every

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based)."""
        if step % self.every and step != self.total_steps:
            return
        decay = self.top_decay * (step / self.total_steps) ** 3
        torch._foreach_lerp_(self.average, self.tensors, 1 - decay)
        torch._foreach_copy_(self.tensors, self.average)

    def state(self) -> list[torch.Tensor]:
        return [t.detach().cpu().clone() for t in self.average]

    @torch.no_grad()
    def load_state(self, average: list[torch.Tensor]) -> None:
        if [a.shape for a in average] != [b.shape for b in self.average]:
            raise ValueError("the weight average does not fit this model")
        torch._foreach_copy_(self.average, [a.to(b.device) for a, b in zip(average, self.average)])


@dataclass
class TrainingSetup:
    """What the epochs of one fit share: the device, the data on it, optimizer, schedule, RNGs."""

    device: torch.device
    bf16: bool
    memory_format: torch.memory_format
    x_train: torch.Tensor
    y_train: torch.Tensor
    batch_size: int
    batches: int  # per epoch
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    order_gen: torch.Generator  # the order of the images in each epoch
    aug_gen: torch.Generator  # augmentation parameters
    weighted: list[tuple[str, torch.Tensor]]  # the layers whose gradient norms are reported
    averager: WeightAverage | None
    val_images: int
    started: float = 0.0  # perf_counter when training began
    images_done: int = 0


def whole_batches(images: int, batch_size: int) -> tuple[int, int]:
    """The batch size an epoch of ``images`` uses (at most all of them) and its number of
    batches: whole batches only, as Keras' steps_per_epoch = n // batch."""
    batch_size = min(batch_size, images)
    return batch_size, images // batch_size


def set_up(model: nn.Module, data: CifarData, cfg: TrainConfig) -> TrainingSetup:
    """Seed, move model and training images to the device, make optimizer and schedule."""
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    memory_format = training_memory_format(device)
    tune_for_fixed_shapes(device)
    model.to(device=device, memory_format=memory_format)
    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    batch_size, batches = whole_batches(len(y_train), cfg.batch_size)
    if isinstance(model, CifarCNN) and model.config.stem == "whiten":
        model.init_whitening(to_input(x_train[:WHITENING_IMAGES]))
    optimizer = make_optimizer(model, cfg, device)
    total_steps = max(1, batches * cfg.epochs)
    schedule = make_schedule(optimizer, cfg, total_steps)
    averager = WeightAverage(model, total_steps) if cfg.weight_averaging else None
    return TrainingSetup(device, bf16, memory_format, x_train, y_train, batch_size, batches, optimizer,
                         schedule, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                         order_gen, aug_gen, weight_layers(model), averager, len(data.y_val))


@dataclass(frozen=True)
class EpochTraining:
    """One epoch's pass over the training images."""

    loss: float
    accuracy: float
    lr: float  # at the epoch's start
    grad_norms: dict[str, float]
    stopped: bool  # a stop request came during the epoch
    complete: bool  # every batch of the epoch ran


def train_epoch(model: nn.Module, setup: TrainingSetup, cfg: TrainConfig, epoch: int,
                on_event: EventHandler | None = None, stop: threading.Event | None = None) -> EpochTraining:
    """One pass over the training images in a fresh random order, augmented; stops within one
    batch of a stop request."""
    s = setup
    model.train()
    learn_stem_bias(model, stem_bias_learns(cfg, epoch))
    perm = torch.randperm(len(s.y_train), generator=s.order_gen).to(s.device)
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    grad_sums = torch.zeros(len(s.weighted), device=s.device)
    lr = s.optimizer.param_groups[0]["lr"]
    flips = (alternating_flips(len(s.y_train), cfg.seed, epoch).to(s.device)
             if cfg.augmentation == "translate_altflip" else None)
    seen = steps = 0
    stopped = False
    for b in range(s.batches):
        idx = perm[b * s.batch_size:(b + 1) * s.batch_size]
        x = augment(to_input(s.x_train[idx]), cfg.augmentation, s.aug_gen,
                    None if flips is None else flips[idx])
        x = x.contiguous(memory_format=s.memory_format)
        y = s.y_train[idx]
        with autocast(s.device, s.bf16):
            logits = model(x)
        loss = s.loss_fn(logits.float(), y)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_sums += torch.stack(torch._foreach_norm([w.grad for _, w in s.weighted]))
        s.optimizer.step()
        s.schedule.step()
        if s.averager:
            s.averager.step(s.schedule.last_epoch)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        steps = b + 1
        s.images_done += len(y)
        if on_event:
            elapsed = time.perf_counter() - s.started
            on_event(BatchEvent(epoch, b + 1, s.batches, loss.item(),
                                s.images_done / max(elapsed, 1e-9), elapsed))
        if stop is not None and stop.is_set():
            stopped = True
            break
    grad_norms = dict(zip([name for name, _ in s.weighted], (grad_sums / steps).tolist()))
    return EpochTraining((loss_sum / seen).item(), correct.item() / seen, lr, grad_norms, stopped,
                         steps == s.batches)


def stem_bias_learns(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the whitening stem's bias learns in ``epoch`` (1-based)."""
    return cfg.stem_bias_epochs == 0 or epoch <= cfg.stem_bias_epochs


def learn_stem_bias(model: nn.Module, learn: bool) -> None:
    """Let the whitening stem's bias learn, or hold it fixed: with nothing before the first
    conv left to learn, autograd skips that conv's input gradient."""
    if isinstance(model, CifarCNN) and model.config.stem == "whiten":
        model.layers.stem.bias.requires_grad_(learn)


@dataclass(frozen=True)
class Validation:
    loss: float
    accuracy: float
    confusion: np.ndarray


def validate(model: nn.Module, data: CifarData, setup: TrainingSetup, tta: TTA) -> Validation:
    """Loss, accuracy and confusion matrix on the validation images."""
    logits = predict_logits(model, data.x_val, setup.device, setup.bf16, tta)
    loss = F.cross_entropy(logits, torch.from_numpy(data.y_val)).item()
    predicted = logits.argmax(1).numpy()
    accuracy = float((predicted == data.y_val).mean())
    return Validation(loss, accuracy, confusion(data.y_val, predicted, len(data.classes)))


# --- saving and resuming --------------------------------------------------------

def _plain(value: object) -> object:
    """A copy of a state (model, optimizer, schedule) with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _continue_generator(generator: torch.Generator, state: torch.Tensor, epoch: int) -> None:
    """Give ``generator`` the saved ``state``, or, when that state is another kind of
    device's, a fresh seed for ``epoch``: a CUDA generator's state (Philox) cannot continue a
    CPU one's (Mersenne Twister) or the reverse, and a run moved between them should go on,
    with other augmentations than it would have drawn, rather than refuse."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
    else:
        generator.manual_seed(generator.initial_seed() + epoch)
        log.warning("resumed on %s from a state saved on another kind of device: "
                    "augmentations after epoch %d differ from an uninterrupted run's",
                    generator.device.type, epoch)


@dataclass
class TrainingState:
    """Everything ``fit`` needs to go on after ``epoch`` complete epochs, on the CPU.

    ``state_dict()`` turns it into tensors, dicts, lists, numbers and strings only, so it
    can be saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``;
    ``from_state_dict`` checks that shape and raises ``ValueError`` for anything else.
    """

    epoch: int
    history: list[EpochRecord]
    model: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor]  # the best epoch's weights so far
    optimizer: dict
    schedule: dict
    stopping: EarlyStopping
    rng: dict[str, torch.Tensor]  # ByteTensor states: order, augment, torch (and cuda)
    average: list[torch.Tensor] | None  # the weight average, when weight averaging is on
    images_done: int
    elapsed: float  # seconds of training so far
    train_images: int  # the data it was trained on, to check a resume uses the same
    val_images: int

    VERSION = 1

    @classmethod
    def capture(cls, model: nn.Module, setup: TrainingSetup, history: list[EpochRecord],
                stopping: EarlyStopping, best_state: dict[str, torch.Tensor]) -> TrainingState:
        rng = {"order": setup.order_gen.get_state(), "augment": setup.aug_gen.get_state(),
               "torch": torch.get_rng_state()}
        if setup.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(setup.device)
        return cls(len(history), list(history), _plain(model.state_dict()), _plain(best_state),
                   _plain(setup.optimizer.state_dict()), _plain(setup.schedule.state_dict()),
                   copy.copy(stopping), rng, setup.averager.state() if setup.averager else None,
                   setup.images_done, time.perf_counter() - setup.started, len(setup.y_train),
                   setup.val_images)

    def restore(self, model: nn.Module, setup: TrainingSetup) -> None:
        """Put weights, optimizer, schedule, generators and counters back as they were;
        ``ValueError`` when the state does not fit this model, these settings or this device."""
        if (self.train_images, self.val_images) != (len(setup.y_train), setup.val_images):
            raise ValueError(f"it was trained on {self.train_images:,} images and validated on "
                             f"{self.val_images:,}; this data has {len(setup.y_train):,} and "
                             f"{setup.val_images:,}")
        if (self.average is None) != (setup.averager is None):
            raise ValueError("weight averaging differs between the saved state and the settings")
        try:
            model.load_state_dict(self.model)
            setup.optimizer.load_state_dict(self.optimizer)
            setup.schedule.load_state_dict(self.schedule)
            if setup.averager and self.average is not None:
                setup.averager.load_state(self.average)
            setup.order_gen.set_state(self.rng["order"])
            _continue_generator(setup.aug_gen, self.rng["augment"], self.epoch)
            torch.set_rng_state(self.rng["torch"])
            if setup.device.type == "cuda" and "cuda" in self.rng:
                torch.cuda.set_rng_state(self.rng["cuda"], setup.device)
        except (RuntimeError, KeyError, TypeError) as err:
            detail = " ".join(str(err).split())[:200]
            raise ValueError(f"the saved state does not fit this model and device ({detail})") from None
        setup.images_done = self.images_done
        setup.started = time.perf_counter() - self.elapsed

    def state_dict(self) -> dict:
        return {"version": self.VERSION, "epoch": self.epoch,
                "history": [asdict(r) for r in self.history], "model": self.model,
                "best_state": self.best_state, "optimizer": self.optimizer, "schedule": self.schedule,
                "stopping": asdict(self.stopping), "rng": self.rng, "average": self.average,
                "images_done": self.images_done, "elapsed": self.elapsed,
                "train_images": self.train_images, "val_images": self.val_images}

    def well_formed(self) -> bool:
        def tensors(values: object) -> bool:
            items = values.values() if isinstance(values, dict) else values
            return isinstance(values, dict | list) and all(isinstance(t, torch.Tensor) for t in items)

        return (isinstance(self.epoch, int) and self.epoch == len(self.history)
                and tensors(self.model) and tensors(self.best_state) and tensors(self.rng)
                and {"order", "augment", "torch"} <= set(self.rng)
                and (self.average is None or tensors(self.average))
                and isinstance(self.optimizer, dict) and isinstance(self.schedule, dict)
                and isinstance(self.images_done, int) and isinstance(self.elapsed, float | int)
                and isinstance(self.train_images, int) and isinstance(self.val_images, int))

    @classmethod
    def from_state_dict(cls, values: object) -> TrainingState:
        if not isinstance(values, dict) or values.get("version") != cls.VERSION:
            raise ValueError("not a training state of this version")
        try:
            history = [EpochRecord(**row) for row in values["history"]]
            stopping = EarlyStopping(**values["stopping"])
            state = cls(values["epoch"], history, values["model"], values["best_state"],
                        values["optimizer"], values["schedule"], stopping, values["rng"],
                        values["average"], values["images_done"], values["elapsed"],
                        values["train_images"], values["val_images"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"incomplete training state ({err})") from None
        if not state.well_formed():
            raise ValueError("malformed training state")
        return state


StateHandler = Callable[[TrainingState], None]


# --- fit --------------------------------------------------------------------------


def fit(model: nn.Module, data: CifarData, cfg: TrainConfig,
        on_event: EventHandler | None = None, stop: threading.Event | None = None,
        resume: TrainingState | None = None, on_state: StateHandler | None = None) -> FitResult:
    """Train ``model`` on ``data.x_train``, validating after every epoch.

    ``resume`` continues from a saved state (its history is kept); ``on_state`` receives
    the state after set-up and after every complete epoch, to be saved for a resume. An
    epoch cut short by a stop request is recorded but not handed to ``on_state``: a resume
    goes on from the last complete one.
    """
    setup = set_up(model, data, cfg)
    history, stopping, best_state = _start(model, setup, cfg, resume, on_state)
    stopped_early = stopped_by_user = False
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        trained = train_epoch(model, setup, cfg, epoch, on_event, stop)
        stopped_by_user = trained.stopped
        # Test-time augmentation only for the planned last epoch's figure: between epochs
        # validation just tracks progress, and the extra views would cost time every epoch.
        val = validate(model, data, setup, cfg.tta if epoch == cfg.epochs else "none")
        record = EpochRecord(epoch, trained.loss, trained.accuracy, val.loss, val.accuracy, trained.lr,
                             time.perf_counter() - epoch_start)
        history.append(record)
        improved = stopping.update(epoch, val.loss, val.accuracy)
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        stopped_early = not stopped_by_user and stopping.should_stop
        last = stopped_by_user or stopped_early or epoch == cfg.epochs
        if on_event:
            on_event(EpochEvent(record, stopping.best_epoch, stopping.since_best, improved,
                                val.confusion, trained.grad_norms, last, stopped_early))
        if on_state and trained.complete:
            on_state(TrainingState.capture(model, setup, history, stopping, best_state))
        if last:
            break
    learn_stem_bias(model, True)  # as built, for whatever uses the model next
    return _result(model, cfg, setup, history, stopping, best_state, stopped_early, stopped_by_user)


def _start(model: nn.Module, setup: TrainingSetup, cfg: TrainConfig, resume: TrainingState | None,
           on_state: StateHandler | None) -> tuple[list[EpochRecord], EarlyStopping, dict[str, torch.Tensor]]:
    """History, early stopping and best weights to begin with: fresh, or those of ``resume``."""
    setup.started = time.perf_counter()
    if resume is not None:
        resume.restore(model, setup)
        best_state = {k: v.to(setup.device) for k, v in resume.best_state.items()}
        return list(resume.history), copy.copy(resume.stopping), best_state
    history: list[EpochRecord] = []
    stopping = EarlyStopping.for_config(cfg)
    best_state = copy.deepcopy(model.state_dict())
    if on_state:  # a run stopped or killed in its first epoch can start again from here
        on_state(TrainingState.capture(model, setup, history, stopping, best_state))
    return history, stopping, best_state


def _result(model: nn.Module, cfg: TrainConfig, setup: TrainingSetup, history: list[EpochRecord],
            stopping: EarlyStopping, best_state: dict[str, torch.Tensor], stopped_early: bool,
            stopped_by_user: bool) -> FitResult:
    """The outcome; the model left with the best epoch's weights when ``restore_best``."""
    train_seconds = time.perf_counter() - setup.started
    best_epoch = stopping.best_epoch
    if cfg.restore_best and history:
        model.load_state_dict(best_state)
    else:
        best_state = copy.deepcopy(model.state_dict())
        best_epoch = history[-1].epoch if history else 0
    return FitResult(history, best_epoch, best_state, stopped_early, stopped_by_user,
                     train_seconds, setup.images_done / max(train_seconds, 1e-9))
