"""Figures of one evaluation without a model: accuracy of a matrix, the images of a cell, and
predictions that follow their images by content."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_core.data import image_digests
from cifar_core.evaluation import Evaluation, matrix_accuracy

CLASSES = ("a", "b", "c")


def an_evaluation() -> Evaluation:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                              [0.6, 0.3, 0.1], [0.0, 0.4, 0.6], [0.3, 0.3, 0.4]])
    digests = image_digests(np.arange(6 * 12, dtype=np.uint8).reshape(6, 2, 2, 3))
    return Evaluation(labels, probabilities.argmax(1), probabilities, CLASSES, digests)


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


def test_a_digest_names_an_image_by_its_pixels_alone() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    digests = image_digests(images)
    assert digests.dtype == np.uint64 and len(set(digests.tolist())) == 50
    assert image_digests(images[::-1]).tolist() == digests[::-1].tolist()
    changed = images.copy()
    changed[7, 31, 31, 2] ^= 1  # one bit of one pixel
    assert (image_digests(changed) != digests).tolist() == [i == 7 for i in range(50)]


def test_stored_predictions_follow_their_images_into_another_order() -> None:
    result = an_evaluation()
    order = np.array([3, 0, 5, 1, 4, 2])
    moved = result.in_order_of(result.image_digests[order], result.labels[order])
    assert moved is not None
    assert moved.predicted.tolist() == result.predicted[order].tolist()
    np.testing.assert_array_equal(moved.probabilities, result.probabilities[order])
    assert moved.labels.tolist() == result.labels[order].tolist()
    assert moved.confusion().tolist() == result.confusion().tolist()
    # A subset in any order matches too; a foreign image or a length mismatch does not.
    assert result.in_order_of(result.image_digests[[4, 1]], result.labels[[4, 1]]) is not None
    foreign = result.image_digests[order].copy()
    foreign[2] += 1
    assert result.in_order_of(foreign, result.labels[order]) is None
    assert result.in_order_of(result.image_digests, result.labels[:3]) is None
