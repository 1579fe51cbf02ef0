"""Figures of one evaluation without a model: accuracy of a matrix, the images of a cell, and
the store that keeps evaluations for every session."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cifar_core.evaluation import Evaluation, EvaluationStore, matrix_accuracy

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


def test_the_store_keeps_the_most_recently_used() -> None:
    store = EvaluationStore(size=2)
    first, second, third = an_evaluation(), an_evaluation(), an_evaluation()
    store.put("x", first)
    store.put("y", second)
    assert store.get("x") is first  # x is now the most recent
    store.put("z", third)
    assert store.get("y") is None and store.get("x") is first and store.get("z") is third


def test_the_store_is_safe_to_share_between_threads() -> None:
    store = EvaluationStore(size=4)
    value = an_evaluation()

    def use(i: int) -> None:
        for j in range(200):
            store.put((i, j % 6), value)
            store.get((i, (j + 1) % 6))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store._items) == 4
