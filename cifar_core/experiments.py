"""The presentation's design claims, each as a small controlled experiment.

An experiment is a set of short runs ("arms") that differ from the baseline in one
thing, all on the same training subset, seed and epoch budget. Its verdict is computed
from the measured histories, so it can come out against the claim.

Results measured on the real data ship in ``experiments/results.json``
(``python benchmarks/run_experiments.py`` writes it); the Experiments page shows them
at once and can rerun any experiment live.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ModelConfig, TrainConfig, apply_overrides, get_preset
from .data import CifarData, as_presented_images
from .record import EpochRecord
from .runs import Run

RESULTS_FILE = Path(__file__).resolve().parent.parent / "experiments" / "results.json"


@dataclass(frozen=True)
class Arm:
    label: str
    overrides: dict = field(default_factory=dict)
    channel_order: str = "correct"

    def configs(self, base: dict) -> tuple[ModelConfig, TrainConfig]:
        preset = get_preset("baseline")
        return apply_overrides(preset.model, preset.train, {**base, **self.overrides})


@dataclass(frozen=True)
class Summary:
    """What the verdict looks at, per arm: the history and the figures derived from it."""

    label: str
    history: list[EpochRecord]
    test_acc: float | None
    grad_norms: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int = 0

    @property
    def best_val_acc(self) -> float:
        return max(r.val_acc for r in self.history)

    @property
    def final_gap(self) -> float:
        """Train minus validation accuracy in the last epoch: how much is memorised."""
        return self.history[-1].train_acc - self.history[-1].val_acc


Verdict = Callable[[list[Summary]], str]


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str
    arms: tuple[Arm, ...]
    verdict: Verdict
    subset: int = 10_000
    base: dict = field(default_factory=dict)  # overrides shared by every arm


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _jitter(summary: Summary) -> float:
    """Mean change of validation accuracy from one epoch to the next: how unsteady a run is."""
    accs = [r.val_acc for r in summary.history]
    return float(np.mean(np.abs(np.diff(accs)))) if len(accs) > 1 else 0.0


def _verdict_batchnorm(s: list[Summary]) -> str:
    plain, bn = s
    k = min(3, len(plain.history), len(bn.history))
    bn_k, plain_k = bn.history[k - 1].val_acc, plain.history[k - 1].val_acc
    faster, steadier = bn_k > plain_k, _jitter(bn) < _jitter(plain)
    as_good = bn.best_val_acc >= plain.best_val_acc - 0.005
    conclusion = {3: "The claim holds.", 0: "The claim does not hold at this scale."}.get(
        faster + steadier + as_good, "The claim holds only in part.")
    return (f"After {k} epochs: {_pct(bn_k)} validation accuracy with batch norm, {_pct(plain_k)} "
            f"without ({'faster' if faster else 'not faster'}). Epoch-to-epoch swing: "
            f"{_pct(_jitter(bn))} vs {_pct(_jitter(plain))} ({'steadier' if steadier else 'not steadier'}). "
            f"Best: {_pct(bn.best_val_acc)} vs {_pct(plain.best_val_acc)}. " + conclusion)


def _verdict_dropout(s: list[Summary]) -> str:
    with_dropout, without = s
    holds = without.final_gap > with_dropout.final_gap
    return (f"Train-validation gap in the last epoch: {_pct(without.final_gap)} without dropout, "
            f"{_pct(with_dropout.final_gap)} with it; best validation {_pct(without.best_val_acc)} vs "
            f"{_pct(with_dropout.best_val_acc)}. "
            + ("Dropout narrows the gap: the claim holds." if holds
               else "Dropout does not narrow the gap here: the claim does not hold in this budget."))


def _verdict_activation(s: list[Summary]) -> str:
    relu, sigmoid = s

    def first_to_last(summary: Summary) -> float:
        last = summary.grad_norms[-1]
        layers = [k for k in last if k != "epoch"]
        return last[layers[0]] / max(last[layers[-1]], 1e-30)

    ratio_relu, ratio_sigmoid = first_to_last(relu), first_to_last(sigmoid)
    holds = ratio_sigmoid < ratio_relu / 10
    return (f"First-layer gradient as a share of the last layer's: {ratio_relu:.1e} with ReLU, "
            f"{ratio_sigmoid:.1e} with sigmoid; best validation {_pct(relu.best_val_acc)} vs "
            f"{_pct(sigmoid.best_val_acc)}. "
            + ("Sigmoid's gradients vanish on the way down: the claim holds." if holds
               else "No vanishing gradient at this depth: the claim does not hold here."))


def _verdict_augmentation(s: list[Summary]) -> str:
    parts = ", ".join(f"{a.label} {_pct(a.best_val_acc)} (gap {_pct(a.final_gap)})" for a in s)
    best = max(s, key=lambda a: a.best_val_acc)
    return f"Best validation accuracy: {parts}. Best in this budget: {best.label}."


def _verdict_early_stopping(s: list[Summary]) -> str:
    on, off = s
    on_test, off_test = on.test_acc or 0.0, off.test_acc or 0.0
    if not on.stopped_early:
        return (f"Validation loss never stalled long enough to stop the run in {len(on.history)} "
                f"epochs; test {_pct(on_test)} (best epoch {on.best_epoch}) against {_pct(off_test)} "
                "for the last epoch without it.")
    conclusion = ("It saved time without losing accuracy." if on_test >= off_test - 0.01
                  else "Here it cost accuracy.")
    return (f"With early stopping the run stopped after epoch {len(on.history)} and kept epoch "
            f"{on.best_epoch} (test {_pct(on_test)}); without it all {len(off.history)} epochs ran "
            f"and the last weights score {_pct(off_test)} on test. " + conclusion)


def _verdict_channels(s: list[Summary]) -> str:
    wrong, right = s
    return (f"Validation accuracy: {_pct(wrong.best_val_acc)} with the presentation's reshape, "
            f"{_pct(right.best_val_acc)} with the channels read correctly: the reshape mistake "
            f"alone costs {_pct(right.best_val_acc - wrong.best_val_acc)}.")


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("batchnorm", "Batch norm: faster and more stable?",
               "Batch normalisation between convolution and activation makes training faster "
               "and more stable.",
               (Arm("no batch norm"), Arm("batch norm", {"batch_norm": True})), _verdict_batchnorm,
               base={"epochs": 8, "early_stopping": False}),
    Experiment("dropout", "Dropout: does it prevent overfitting?",
               "Dropout layers stop the network from memorising the training images.",
               (Arm("dropout (baseline)"),
                Arm("no dropout", {"conv_dropout": (0.0, 0.0, 0.0), "dense_dropout": (0.0, 0.0)})),
               _verdict_dropout, base={"epochs": 12, "early_stopping": False, "augmentation": "none"}),
    Experiment("activation", "ReLU vs sigmoid: the vanishing gradient",
               "ReLU avoids the vanishing gradient that sigmoid suffers in deeper networks.",
               (Arm("relu"), Arm("sigmoid", {"activation": "sigmoid"})), _verdict_activation,
               base={"epochs": 6, "early_stopping": False, "convs_per_block": 2, "padding": "same"}),
    Experiment("augmentation", "Which augmentation helps?",
               "Random rotations, shifts and flips help the model generalise.",
               (Arm("presentation's (rotate/shift/flip)"), Arm("crop + flip", {"augmentation": "crop_flip"}),
                Arm("none", {"augmentation": "none"})), _verdict_augmentation,
               base={"epochs": 10, "early_stopping": False}),
    Experiment("early_stopping", "Early stopping on vs off",
               "Early stopping ends training when validation loss stops improving and keeps "
               "the best weights.",
               (Arm("early stopping (patience 3)", {"early_stopping": True, "patience": 3}),
                Arm("no early stopping", {"early_stopping": False, "restore_best": False})),
               _verdict_early_stopping, subset=5_000,
               base={"epochs": 20, "augmentation": "none"}),
    Experiment("channel_order", "Why did the presentation get 49%?",
               "The presentation's model reached 49% validation accuracy.",
               (Arm("reshape(-1, 32, 32, 3) as presented", channel_order="as_presented"), Arm("correct")),
               _verdict_channels, base={"epochs": 8, "early_stopping": False}),
]}


def as_presented(data: CifarData) -> CifarData:
    """The same images as the presentation saw them: planar rows reshaped as if interleaved."""
    scramble = as_presented_images
    return CifarData(scramble(data.x_train), data.y_train, scramble(data.x_val), data.y_val,
                     scramble(data.x_test), data.y_test, data.classes, data.source)


def arm_data(arm: Arm, data: CifarData) -> CifarData:
    """The images one arm trains on: ``data`` as it is, or as the presentation read it."""
    return as_presented(data) if arm.channel_order == "as_presented" else data


def arms_table(summaries: list[Summary]) -> pd.DataFrame:
    """One row per arm: its best validation accuracy, last train-validation gap, test accuracy."""
    return pd.DataFrame({
        "run": [s.label for s in summaries],
        "best validation accuracy": [s.best_val_acc for s in summaries],
        "train - validation gap (last epoch)": [s.final_gap for s in summaries],
        "test accuracy": [s.test_acc for s in summaries],
        "epochs": [len(s.history) for s in summaries],
    })


def summarize(run: Run, label: str) -> Summary:
    return Summary(label, run.history, run.metrics.test_acc, run.grad_norms(),
                   bool(run.metrics.stopped_early), run.metrics.best_epoch)


def load_results(path: Path = RESULTS_FILE) -> dict:
    """The shipped results: {experiment name: {"arms": [...], "verdict": str, ...}}."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def result_record(experiment: Experiment, summaries: list[Summary], command: str) -> dict:
    return {"title": experiment.title, "claim": experiment.claim, "subset": experiment.subset,
            "verdict": experiment.verdict(summaries), "command": command,
            "arms": [{"label": s.label, "history": [asdict(r) for r in s.history], "test_acc": s.test_acc,
                      "grad_norms": s.grad_norms, "stopped_early": s.stopped_early,
                      "best_epoch": s.best_epoch} for s in summaries]}


def summaries_from_record(record: dict) -> list[Summary]:
    return [Summary(a["label"], [EpochRecord.from_dict(r) for r in a["history"]], a["test_acc"],
                    a.get("grad_norms", []), a.get("stopped_early", False), a.get("best_epoch", 0))
            for a in record["arms"]]
