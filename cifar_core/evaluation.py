"""How good is a model: accuracy, confusion matrix, per-class report, its worst mistakes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from torch import nn

from .config import TTA
from .data import image_digests
from .devices import resolve_device, use_bf16
from .model import predict_logits


@dataclass
class Evaluation:
    """Predictions of one model on one split, and the figures derived from them."""

    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray  # (N, 10)
    classes: tuple[str, ...]
    # data.image_digests of the images, row for row, where known: what lets stored
    # predictions find their images in another copy of the split (``in_order_of``).
    image_digests: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(accuracy_score(self.labels, self.predicted))

    def confusion(self, normalize: bool = False) -> np.ndarray:
        """Rows are true classes, columns predicted; ``normalize`` divides each row by its total."""
        return confusion_matrix(self.labels, self.predicted, labels=range(len(self.classes)),
                                normalize="true" if normalize else None)

    def per_class(self) -> pd.DataFrame:
        precision, recall, f1, support = precision_recall_fscore_support(
            self.labels, self.predicted, labels=range(len(self.classes)), zero_division=0)
        return pd.DataFrame({"class": self.classes, "precision": precision, "recall": recall,
                             "f1": f1, "support": support})

    def mistakes(self, true_class: int | None = None, predicted_class: int | None = None,
                 limit: int = 24) -> pd.DataFrame:
        """Misclassified images, most confident first: index, true, predicted, confidence."""
        confidence = self.probabilities[np.arange(len(self.predicted)), self.predicted]
        wrong = self.predicted != self.labels
        if true_class is not None:
            wrong &= self.labels == true_class
        if predicted_class is not None:
            wrong &= self.predicted == predicted_class
        index = np.flatnonzero(wrong)
        index = index[np.argsort(-confidence[index], kind="stable")][:limit]
        return pd.DataFrame({"index": index, "true": [self.classes[i] for i in self.labels[index]],
                             "predicted": [self.classes[i] for i in self.predicted[index]],
                             "confidence": confidence[index]})

    def pair(self, true_class: int, predicted_class: int, limit: int = 24) -> np.ndarray:
        """Indices of images of ``true_class`` predicted as ``predicted_class``, most confident first."""
        confidence = self.probabilities[:, predicted_class]
        index = np.flatnonzero((self.labels == true_class) & (self.predicted == predicted_class))
        return index[np.argsort(-confidence[index], kind="stable")][:limit]

    def cell(self, true_class: int, predicted_class: int, limit: int = 24) -> pd.DataFrame:
        """The images of one confusion-matrix cell, most confident first, in the columns of
        ``mistakes``; on the diagonal they are right answers."""
        index = self.pair(true_class, predicted_class, limit)
        return pd.DataFrame({"index": index, "true": [self.classes[true_class]] * len(index),
                             "predicted": [self.classes[predicted_class]] * len(index),
                             "confidence": self.probabilities[index, predicted_class]})

    def in_order_of(self, digests: np.ndarray, labels: np.ndarray) -> Evaluation | None:
        """These predictions for the images named by ``digests``, in that order and with
        those ``labels`` (the copy of the split on disk); None when any of them has no
        prediction here or the digests are unknown. Identical images get identical
        predictions, so a duplicate may take either of its rows."""
        if self.image_digests is None or not len(self.image_digests):
            return None
        order = np.argsort(self.image_digests, kind="stable")
        found = np.searchsorted(self.image_digests, digests, sorter=order)
        rows = order[np.minimum(found, len(order) - 1)]
        if len(digests) != len(labels) or not np.array_equal(self.image_digests[rows], digests):
            return None
        return Evaluation(np.asarray(labels), self.predicted[rows], self.probabilities[rows],
                          self.classes, self.image_digests[rows])


def matrix_accuracy(matrix: np.ndarray) -> float:
    """The share of right answers in a confusion matrix: its diagonal over its total."""
    return float(np.trace(matrix) / max(matrix.sum(), 1))


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
             device: str = "auto", precision: str = "fp32", tta: TTA = "none",
             progress: Callable[[int, int], None] | None = None) -> Evaluation:
    dev = resolve_device(device)
    model.to(dev)
    logits = predict_logits(model, images, dev, use_bf16(precision, dev), tta, progress=progress)
    probabilities = torch.softmax(logits, 1).numpy()
    return Evaluation(np.asarray(labels), probabilities.argmax(1), probabilities, tuple(classes),
                      image_digests(images))
