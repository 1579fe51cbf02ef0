"""The command line, run as users run it: `python -m cifar_core ...` in a subprocess.

A round trip (summary, train, evaluate, predict) checked against the same computation
in-process, and bad input of every kind: exit status 2, exactly one `error: ` line on
stderr, never a traceback. The bad-input commands are started together when the module
begins, so their interpreter start-ups overlap with the round trip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dumps, synthetic_images, write_cifar
from PIL import Image

from cifar_core.__main__ import main
from cifar_core.config import PRESETS, ModelConfig, TrainConfig
from cifar_core.data import load_cifar10
from cifar_core.evaluation import evaluate
from cifar_core.inference import predict_files
from cifar_core.model import build_model, count_parameters
from cifar_core.record import RunConfig
from cifar_core.runs import RunWriter, load_run

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable
SMALL = ["--set", "conv_filters=8,16,16", "--set", "dense_units=32,16", "--set", "batch_size=32"]

# Slow: every test shares subprocesses started by an autouse fixture.
pytestmark = pytest.mark.slow


def cli_env(data_dir: Path, runs_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "cifar10_dir")}
    env.update(CIFAR10_DIR=str(data_dir), CIFAR_RUNS_DIR=str(runs_dir),
               # One thread per process: many start at once on a small machine.
               OMP_NUM_THREADS="1",
               # Any download attempt fails at once instead of fetching 170 MB.
               https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "cifar_core", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return finish(start(args, env))


def save_png(path: Path, seed: int = 0, size: tuple[int, int] = (50, 40)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def untrained_run(path: Path) -> Path:
    """A valid run folder without training: config, metrics and (random) weights."""
    model_cfg = ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.0), dense_units=(16,),
                            dense_dropout=(0.0,))
    writer = RunWriter(path, RunConfig(model_cfg, TrainConfig(epochs=1)))
    writer.save_weights(build_model(model_cfg).state_dict())
    writer.finish("finished")
    return path


class WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- the round trip ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(workdir: Path, cifar_root: Path) -> dict[str, str]:
    return cli_env(cifar_root, workdir / "runs")


@pytest.fixture(scope="module")
def trained(workdir: Path, env: dict[str, str]) -> tuple[Path, subprocess.CompletedProcess]:
    out = workdir / "run"
    result = run_cli(["train", *SMALL, "--epochs", "1", "--subset", "200", "--device", "cpu",
                      "--out", str(out)], env)
    return out, result


def test_summary_prints_the_baseline_table(env: dict[str, str]) -> None:
    result = run_cli(["summary"], env)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "Total params: 167,818"
    assert any("(None, 30, 30, 32)" in line for line in lines)


def test_summary_applies_presets_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--preset", "fast", "--set", "conv_filters=16,32,64"]) == 0
    config = ModelConfig(**{**PRESETS["fast"].model.to_dict(), "conv_filters": (16, 32, 64)})
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"Total params: {count_parameters(build_model(config)):,}"


def test_train_writes_a_run_folder(trained: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, result = trained
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data: 200 train / 50 val / 50 test")
    assert sum(line.startswith("epoch 1/1 ") for line in lines) == 1
    assert lines[-1] == f"run folder: {out}"
    run = load_run(out)
    assert run.status == "finished" and len(run.history) == 1
    assert run.model_config.conv_filters == (8, 16, 16) and run.train_config.batch_size == 32
    assert run.config.subset == 200 and run.config.preset == "baseline"
    assert np.array(run.metrics.confusion_matrix).sum() == 50


def test_evaluate_json_matches_an_in_process_evaluation(trained: tuple[Path, subprocess.CompletedProcess],
                                                        env: dict[str, str], cifar_root: Path) -> None:
    out, _ = trained
    result = run_cli(["evaluate", str(out), "--json"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    data = load_cifar10(cifar_root, download=False)
    run = load_run(out)
    expected = evaluate(run.load_model(), data.x_test, data.y_test, data.classes, device="cpu",
                        precision=run.train_config.precision)
    assert report["split"] == "test" and report["accuracy"] == pytest.approx(expected.accuracy)
    assert report["confusion_matrix"] == expected.confusion().tolist()
    assert np.array(report["confusion_matrix"]).sum() == 100
    assert [row["class"] for row in report["per_class"]] == list(data.classes)


def test_evaluate_on_the_validation_split(trained: tuple[Path, subprocess.CompletedProcess],
                                          cifar_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained
    assert main(["evaluate", str(out), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "val accuracy" in text and "on 100 images" in text
    assert "confusion matrix (rows true, columns predicted):" in text


def test_predict_json_matches_an_in_process_prediction(trained: tuple[Path, subprocess.CompletedProcess],
                                                       env: dict[str, str], workdir: Path) -> None:
    out, _ = trained
    images = [save_png(workdir / "cat.png", seed=1), save_png(workdir / "dog.png", seed=2, size=(30, 64))]
    result = run_cli(["predict", str(out), *map(str, images), "--json", "--top", "2"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    run = load_run(out)
    expected = predict_files(run.load_model(), [(str(p), p.read_bytes()) for p in images],
                             run.metrics.classes)
    assert [r["file"] for r in report] == [str(p) for p in images]
    for got, want in zip(report, expected):
        assert got["label"] == want.label
        assert [c for c, _ in got["top"]] == [c for c, _ in want.top(2)]
        np.testing.assert_allclose([p for _, p in got["top"]], [p for _, p in want.top(2)], atol=1e-6)


# --- bad input, all started at once -------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module", autouse=True)
def bad_runs(workdir: Path, cifar_root: Path) -> Iterator[dict[str, subprocess.Popen]]:
    bad = workdir / "bad"
    env = cli_env(cifar_root, bad / "runs")

    def dataset(name: str, batch: str, payload: bytes | None) -> Path:
        folder = write_cifar(bad / name, per_batch=10)
        raw = (folder / batch).read_bytes()
        (folder / batch).write_bytes(payload if payload is not None else raw[: len(raw) // 2])
        return bad / name

    rows, labels = synthetic_images(10, seed=1)
    wrong_shape = {b"data": rows.reshape(10, 3, 1024), b"labels": list(labels)}
    run = untrained_run(bad / "run")
    (bad / "notes.txt").write_text("not a picture\n")
    cases = {
        "missing data folder": ["train", "--data-dir", str(bad / "nowhere"), "--epochs", "1"],
        "truncated batch": ["train", "--data-dir", str(dataset("truncated", "data_batch_2", None))],
        "malicious pickle": ["train", "--data-dir",
                             str(dataset("evil", "test_batch", dumps(WritesMarker(bad / "pwned"), "py2")))],
        "wrong-shape batch": ["train", "--data-dir",
                              str(dataset("shape", "data_batch_5", dumps(wrong_shape, "py3")))],
        "text file to predict": ["predict", str(run), str(bad / "notes.txt"), "--json"],
        "unknown --set key": ["summary", "--set", "wings=2"],
        "unknown preset": ["summary", "--preset", "nope"],
    }
    procs = {name: start(args, env) for name, args in cases.items()}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


EXPECTED_MESSAGES = {
    "missing data folder": "cifar-10-python.tar.gz",
    "truncated batch": "data_batch_2",
    "malicious pickle": "refused",
    "wrong-shape batch": "shape",
    "text file to predict": "notes.txt",
    "unknown --set key": "wings",
    "unknown preset": "nope",
}


@pytest.mark.parametrize("case", list(EXPECTED_MESSAGES))
def test_bad_input_gives_one_error_line_and_exit_2(bad_runs: dict[str, subprocess.Popen], case: str,
                                                   workdir: Path) -> None:
    result = finish(bad_runs[case])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert EXPECTED_MESSAGES[case] in lines[0]
    assert not (workdir / "bad" / "pwned").exists()


def test_missing_data_error_says_where_to_put_it(bad_runs: dict[str, subprocess.Popen],
                                                 workdir: Path) -> None:
    line = finish(bad_runs["missing data folder"]).stderr.strip()
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in line
    assert str(workdir / "bad" / "nowhere") in line

# --- more bad input, in-process (main() is what the subprocesses above run) ------------------

@pytest.fixture()
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def in_process_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_set_value_is_a_one_line_error(cifar_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "kernel_size" in in_process_error(["train", "--set", "kernel_size=4"], capsys)
    assert "key=value" in in_process_error(["summary", "--set", "lr"], capsys)
    assert "epochs" in in_process_error(["train", "--epochs", "0"], capsys)


@pytest.mark.parametrize("n", ["0", "-5"])
def test_subset_below_one_is_a_one_line_error(cifar_env: Path, capsys: pytest.CaptureFixture[str],
                                               n: str) -> None:
    assert "--subset" in in_process_error(["train", "--subset", n, "--epochs", "1"], capsys)


def test_pickled_weights_are_refused_by_predict(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = untrained_run(workdir / "pickled-weights")
    marker = workdir / "pwned-by-weights"
    torch.save({"x": WritesMarker(marker)}, run / "weights.safetensors")
    image = save_png(workdir / "for-pickled.png")
    assert "safetensors" in in_process_error(["predict", str(run), str(image)], capsys)
    assert not marker.exists()


def test_missing_run_folder_and_missing_image(workdir: Path, capsys: pytest.CaptureFixture[str],
                                              cifar_env: Path) -> None:
    assert "does not exist" in in_process_error(["evaluate", str(workdir / "no-such-run")], capsys)
    run = untrained_run(workdir / "run-for-missing-image")
    assert "No such file" in in_process_error(["predict", str(run), str(workdir / "absent.png")], capsys)
    assert "at least one image" in in_process_error(["predict", str(run)], capsys)
    assert "unrecognized" in in_process_error(["train", "--frobnicate"], capsys)


def test_predict_reports_good_images_before_failing_on_a_bad_one(
        workdir: Path, capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    run = untrained_run(workdir / "run-mixed")
    good = save_png(workdir / "good.png")
    (workdir / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", str(run), str(good), str(workdir / "bad.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ")
    assert captured.err.strip().splitlines() == [captured.err.strip()]
    assert "bad.png" in captured.err
