"""Figures of one evaluation without a model: accuracy of a matrix, the images of a cell, and
predictions stored beside a model."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_core.evaluation import Evaluation, matrix_accuracy, predictions_bytes, read_predictions

CLASSES = ("a", "b", "c")


def an_evaluation() -> Evaluation:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                              [0.6, 0.3, 0.1], [0.0, 0.4, 0.6], [0.3, 0.3, 0.4]])
    return Evaluation(labels, probabilities.argmax(1), probabilities, CLASSES)


def test_matrix_accuracy_is_the_diagonal_share() -> None:
    assert matrix_accuracy(np.array([[3, 1], [0, 4]])) == pytest.approx(7 / 8)
    assert matrix_accuracy(np.zeros((2, 2))) == 0.0


def test_a_cell_lists_its_images_most_confident_first() -> None:
    result = an_evaluation()
    cell = result.cell(0, 1)
    assert cell.to_dict("records") == [{"index": 1, "true": "a", "predicted": "b", "confidence": 0.7}]
    right = result.cell(2, 2)
    assert right["index"].tolist() == [4, 5] and right["confidence"].tolist() == [0.6, 0.4]
    assert list(right.columns) == list(result.mistakes().columns)
    assert result.cell(1, 2).empty
    assert result.confusion()[0, 1] == 1


def test_stored_predictions_round_trip_in_float16() -> None:
    result = an_evaluation()
    raw = predictions_bytes(result, "abc", "flip")
    back = read_predictions(raw, CLASSES, "abc", "flip")
    assert back is not None
    assert back.labels.tolist() == result.labels.tolist()
    assert back.predicted.tolist() == result.predicted.tolist()
    np.testing.assert_allclose(back.probabilities, result.probabilities, atol=1e-3)
    assert back.accuracy == result.accuracy and (back.confusion() == result.confusion()).all()


def test_stored_predictions_of_other_weights_or_views_or_damaged_are_ignored() -> None:
    raw = predictions_bytes(an_evaluation(), "abc", "flip")
    assert read_predictions(raw, CLASSES, "other weights", "flip") is None
    assert read_predictions(raw, CLASSES, "abc", "flip_translate") is None
    assert read_predictions(raw[:100], CLASSES, "abc", "flip") is None
    assert read_predictions(b"not a zip", CLASSES, "abc", "flip") is None
    assert read_predictions(raw, ("a", "b"), "abc", "flip") is None  # probabilities of 3 classes
