"""The benchmark scripts' measurements, checked against the project's own code."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cifar_core.config import ModelConfig, choices, get_preset
from cifar_core.data import load_cifar10
from cifar_core.model import build_model, predict_logits, training_flops
from cifar_core.runs import load_run

REPO = Path(__file__).resolve().parents[1]


def benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # where dataclasses look a module's classes up
    spec.loader.exec_module(module)
    return module


def test_tta_benchmark_gives_each_option_its_accuracy(cifar_root: Path) -> None:
    data = load_cifar10(cifar_root, download=False)
    images, labels = data.x_test[:40], data.y_test[:40]
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()

    figures = benchmark("tta").each_way(model, images, labels)

    assert tuple(figures) == choices("tta")
    for tta, (accuracy, seconds) in figures.items():
        predicted = predict_logits(model, images, torch.device("cpu"), tta=tta).argmax(1).numpy()
        assert accuracy == (predicted == labels).mean() and seconds > 0


def test_speed_benchmark_counts_the_step_as_the_presets_later_epochs_run() -> None:
    speed = benchmark("speed")
    assert speed.fixes_stem(get_preset("fast")) and not speed.fixes_stem(get_preset("baseline"))
    fast = get_preset("fast").model
    assert training_flops(fast, stem_fixed=True) < training_flops(fast)


def test_preset_benchmark_counts_the_stem_input_gradient_only_while_the_bias_learns() -> None:
    fast = get_preset("fast")
    assert fast.train.stem_bias_epochs == 3 and fast.train.epochs == 12
    expected = 100 * (3 * training_flops(fast.model) + 9 * training_flops(fast.model, stem_fixed=True))
    assert benchmark("presets").run_flops(fast.model, fast.train, 12, 100) == pytest.approx(expected)


def test_preset_benchmark_reports_what_each_run_recorded(cifar_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    presets = benchmark("presets")
    # The device's matrix-product peak, printed above the table, takes seconds to measure and is
    # not what this test reads; one epoch per run records all that the table reports.
    monkeypatch.setattr(presets, "matmul_gflops", lambda dtype, device: 1.0)
    monkeypatch.setattr(sys, "argv", ["presets.py", "--data-dir", str(cifar_root), "--presets", "quick",
                                      "--seeds", "3", "4", "--device", "cpu", "--runs-dir", str(tmp_path),
                                      "--set", "label_smoothing=0.1", "--set", "epochs=1"])
    presets.main()
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| quick |")]
    per_run, summary = rows[:2], rows[2]
    tests = []
    for cells, seed in zip(per_run, (3, 4), strict=True):
        run = load_run(tmp_path / f"quick-seed{seed}")
        assert run.train_config.seed == seed and int(cells[1]) == seed
        assert run.train_config.label_smoothing == 0.1
        assert float(cells[2]) == pytest.approx(sum(r.seconds for r in run.history), abs=0.06)
        assert float(cells[7]) == pytest.approx(100 * run.metrics.test_acc, abs=0.006)
        tests.append(100 * run.metrics.test_acc)
    mean, spread = (float(v) for v in summary[4].split("±"))
    assert mean == pytest.approx(statistics.mean(tests), abs=0.006)
    assert spread == pytest.approx(statistics.stdev(tests), abs=0.006)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_speed_benchmark_times_the_step_in_either_layout(cifar_root: Path,
                                                         memory_format: torch.memory_format) -> None:
    data = load_cifar10(cifar_root, download=False)
    images_per_second = benchmark("speed").project_steps("quick", data.x_train, data.y_train, 1,
                                                         torch.device("cpu"), memory_format, warmup=1)
    assert images_per_second > 0


def test_speed_benchmark_times_the_textbook_loop(cifar_root: Path) -> None:
    data = load_cifar10(cifar_root, download=False)
    # Batches of 64: the fixture's 400 training images hold a warm-up step and a timed one.
    speed = benchmark("speed")
    assert speed.naive_steps("baseline", data.x_train, data.y_train, 1, torch.device("cpu"), warmup=1) > 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_browser_cpu_benchmark_counts_only_the_processes_it_started() -> None:
    browser_cpu = benchmark("browser_cpu")
    shell = subprocess.Popen(["bash", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(found := [p for p in browser_cpu.descendants(os.getpid()) if p != shell.pid]) < 1:
            assert time.monotonic() < deadline, "the shell's child never showed"
            time.sleep(0.05)
        assert shell.pid in browser_cpu.descendants(os.getpid())
        assert Path(f"/proc/{found[0]}/comm").read_text().strip() == "sleep"  # a grandchild
        assert browser_cpu.chromium_cpu_seconds() == 0.0  # no Chromium of its own yet
    finally:
        shell.kill()
        shell.wait()


def test_dropout_benchmark_compares_two_layers_that_give_the_same_values() -> None:
    dropout = benchmark("dropout")
    x = torch.rand(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    outputs = []
    for kind in ("comparison", "arithmetic"):
        torch.manual_seed(1)
        with dropout.layer(kind):
            outputs.append(dropout.Dropout(0.25).train()(x))
    assert torch.equal(*outputs) and (outputs[0] == 0).any()


@pytest.mark.parametrize("tta", choices("tta"))
def test_contention_benchmark_runs_the_same_views_one_call_each(tta: str) -> None:
    contention = benchmark("contention")
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(contention.view_by_view_logits(model, x, tta),
                                   contention.model_module.tta_logits(model, x, tta))
