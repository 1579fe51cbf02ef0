"""Experiments: the ablations' configs, the scrambled data, the verdicts, and the page."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cifar_core import experiments
from cifar_core.config import get_preset
from cifar_core.data import load_cifar10, to_images
from cifar_core.experiments import EXPERIMENTS, Summary, as_presented, result_record
from cifar_core.record import EpochRecord

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def history(val_accs: list[float], train_accs: list[float] | None = None) -> list[EpochRecord]:
    train_accs = train_accs or val_accs
    return [EpochRecord(i + 1, 1.0, t, 1.0, v, 0.001, 1.0)
            for i, (v, t) in enumerate(zip(val_accs, train_accs))]


def test_every_arm_differs_from_the_baseline_only_in_its_overrides() -> None:
    baseline = get_preset("baseline")
    for experiment in EXPERIMENTS.values():
        configs = [arm.configs(experiment.base) for arm in experiment.arms]
        for (model, train), arm in zip(configs, experiment.arms):
            changed = {k for k, v in model.to_dict().items() if v != baseline.model.to_dict()[k]}
            changed |= {k for k, v in train.to_dict().items() if v != baseline.train.to_dict()[k]}
            assert changed <= set(experiment.base) | set(arm.overrides), (experiment.name, arm.label)
        assert len({(m.to_dict().__repr__(), t.to_dict().__repr__(), a.channel_order)
                    for (m, t), a in zip(configs, experiment.arms)}) == len(experiment.arms)


def test_as_presented_matches_the_presentations_reshape(cifar_root: Path) -> None:
    data = load_cifar10(cifar_root)
    rows = data.x_train.transpose(0, 3, 1, 2).reshape(len(data.x_train), -1)
    scrambled = as_presented(data)
    np.testing.assert_array_equal(scrambled.x_train, rows.reshape(-1, 32, 32, 3))
    np.testing.assert_array_equal(scrambled.x_train, to_images(rows, "as_presented"))
    np.testing.assert_array_equal(scrambled.y_val, data.y_val)


def test_verdicts_follow_the_numbers_both_ways() -> None:
    verdict = EXPERIMENTS["batchnorm"].verdict
    plain = Summary("plain", history([0.3, 0.5, 0.4, 0.6]), 0.5)
    bn = Summary("bn", history([0.4, 0.5, 0.55, 0.65]), 0.6)
    assert "The claim holds." in verdict([plain, bn])
    assert "does not hold" in verdict([bn, plain])
    jumpy_bn = Summary("bn", history([0.4, 0.6, 0.9, 0.4]), 0.5)
    assert "only in part" in verdict([plain, jumpy_bn])
    dropout = EXPERIMENTS["dropout"].verdict
    with_d = Summary("with", history([0.5], [0.55]), 0.5)
    without = Summary("without", history([0.5], [0.9]), 0.5)
    assert "claim holds" in dropout([with_d, without])
    assert "does not hold" in dropout([without, with_d])


def test_activation_verdict_reads_the_gradient_norms() -> None:
    def norms(first: float) -> list[dict]:
        return [{"epoch": 1, "conv1": first, "logits": 1.0}]

    relu = Summary("relu", history([0.5]), 0.5, norms(0.5))
    sigmoid = Summary("sigmoid", history([0.1]), 0.1, norms(1e-6))
    assert "claim holds" in EXPERIMENTS["activation"].verdict([relu, sigmoid])
    assert "does not hold" in EXPERIMENTS["activation"].verdict([relu, relu])


def test_shipped_results_if_present_are_complete() -> None:
    shipped = experiments.load_results()
    if not shipped:
        pytest.skip("no experiments/results.json in this checkout")
    for name, record in shipped.items():
        experiment = EXPERIMENTS[name]
        assert [a["label"] for a in record["arms"]] == [a.label for a in experiment.arms]
        summaries = experiments.summaries_from_record(record)
        assert record["verdict"] == experiment.verdict(summaries)


@pytest.mark.slow
def test_page_shows_shipped_results_and_reruns_an_experiment_live(
        cifar_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = EXPERIMENTS["channel_order"]
    summaries = [Summary(a.label, history([0.3, 0.4]), 0.4) for a in experiment.arms]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"channel_order": result_record(experiment, summaries, "cmd")}))
    monkeypatch.setattr(experiments, "RESULTS_FILE", results)
    monkeypatch.setattr(experiments.load_results, "__defaults__", (results,))
    monkeypatch.setitem(experiment.base, "epochs", 1)

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/experiments.py").run()
    at.selectbox[0].select("channel_order").run()
    assert not at.exception
    assert experiment.verdict(summaries) in [s.value for s in at.success]

    at.button[0].click().run()
    # Until both arms have trained (seconds; more on a busy machine), as a visitor's page would.
    deadline = time.monotonic() + 180
    while len(at.success) < 2 and time.monotonic() < deadline:
        time.sleep(0.25)
        at.run()
        assert not at.exception, [e.message for e in at.exception]
    live = at.success[1].value
    assert "with the presentation's reshape" in live and "cost" in live
