"""Resume: the training state saved with every epoch, read back only as tensors and plain
data, and a stopped, interrupted or killed run that goes on exactly as if it never stopped."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WritesMarker
from streamlit.testing.v1 import AppTest

from cifar_core import runs
from cifar_core.__main__ import main
from cifar_core.config import ConfigError, ModelConfig, TrainConfig, apply_overrides, get_preset
from cifar_core.data import CifarData, load_cifar10, subset
from cifar_core.jobs import JobRegistry, get_registry
from cifar_core.liveness import training_lock
from cifar_core.model import build_model
from cifar_core.pipeline import read_training_state, resume_point, resume_run, train_run
from cifar_core.record import CHECKPOINT_FILE, LOCK_FILE, EpochRecord, RunConfig, RunError
from cifar_core.runs import RunWriter, load_run, load_weights
from cifar_core.training import EarlyStopping, TrainingState, set_up

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "streamlit_app.py")
TINY = ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.25), dense_units=(16,),
                   dense_dropout=(0.25,))
FAST = TrainConfig(epochs=3, batch_size=32, device="cpu", precision="fp32", seed=3)
# The quick preset's recipe (whitening stem, one-cycle schedule, weight averaging, SGD with
# a separate group for batch norm) shrunk to a tiny network.
QUICK_MODEL, QUICK_TRAIN = apply_overrides(
    get_preset("quick").model, get_preset("quick").train,
    {"conv_filters": (8, 16, 16), "batch_size": 32, "epochs": 3, "device": "cpu", "precision": "fp32"})
# Figures of an epoch that must be the same when a run is resumed (not its wall time).
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(cifar_root: Path) -> CifarData:
    return subset(load_cifar10(cifar_root, download=False), 200, seed=0)


def started_state(model_cfg: ModelConfig, train_cfg: TrainConfig, data: CifarData,
                  history: list[EpochRecord] | None = None) -> TrainingState:
    """The state of a run just set up, after one optimizer step (so the optimizer has state)."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg)
    setup = set_up(model, data, train_cfg)
    x = torch.from_numpy(data.x_train[:8]).permute(0, 3, 1, 2).float() / 255
    setup.loss_fn(model(x), torch.from_numpy(data.y_train[:8])).backward()
    setup.optimizer.step()
    setup.schedule.step()
    if setup.averager:
        setup.averager.step(setup.schedule.last_epoch)
    state = TrainingState.capture(model, setup, [], EarlyStopping.for_config(train_cfg), model.state_dict())
    if history:
        state.history, state.epoch = history, len(history)
        state.stopping.best_epoch = min(range(1, len(history) + 1), key=lambda e: history[e - 1].val_loss)
    return state


def records(n: int) -> list[EpochRecord]:
    return [EpochRecord(e, 2.0 / e, 0.1 * e, 2.5 - 0.3 * e + 0.4 * (e == 3), 0.1 * e, 1e-3, 0.5)
            for e in range(1, n + 1)]


def assert_same(a: object, b: object) -> None:
    """Equal plain data, with tensors compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (a != a and b != b), (a, b)


# --- the checkpoint file ----------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["baseline", "quick"])
def test_checkpoint_round_trip_keeps_every_part_of_the_state(recipe: str, data: CifarData,
                                                            tmp_path: Path) -> None:
    model_cfg, train_cfg = (TINY, FAST) if recipe == "baseline" else (QUICK_MODEL, QUICK_TRAIN)
    state = started_state(model_cfg, train_cfg, data, records(2))
    writer = RunWriter(tmp_path / "run", RunConfig(model_cfg, train_cfg))
    writer.save_checkpoint(state.state_dict())
    assert not list((tmp_path / "run").glob(".*.tmp")), "written through the atomic helper"

    back = read_training_state(tmp_path / "run")
    assert back.epoch == 2 and back.history == state.history and back.stopping == state.stopping
    assert (back.images_done, back.elapsed) == (state.images_done, state.elapsed)
    assert (back.train_images, back.val_images) == (len(data.y_train), len(data.y_val))
    for part in ("model", "best_state", "optimizer", "schedule", "rng", "average"):
        assert_same(getattr(state, part), getattr(back, part))
    assert set(back.rng) == {"order", "augment", "torch"}
    assert (back.average is not None) == (recipe == "quick")
    assert back.optimizer["state"], "the optimizer's moments are saved"


@pytest.mark.parametrize("recipe", ["baseline", "quick"])
def test_restored_state_draws_and_steps_as_the_saved_one_would(recipe: str, data: CifarData) -> None:
    model_cfg, train_cfg = (TINY, FAST) if recipe == "baseline" else (QUICK_MODEL, QUICK_TRAIN)
    state = started_state(model_cfg, train_cfg, data)
    # What the saved run would draw next ...
    order = torch.Generator()
    order.set_state(state.rng["order"])
    augment = torch.Generator()
    augment.set_state(state.rng["augment"])
    torch.set_rng_state(state.rng["torch"])
    expected = (torch.randperm(50, generator=order), torch.rand(5, generator=augment), torch.rand(5))

    # ... is what a fresh set-up with the state restored draws.
    torch.manual_seed(1234)
    model = build_model(model_cfg)
    setup = set_up(model, data, train_cfg)
    state.restore(model, setup)
    drawn = (torch.randperm(50, generator=setup.order_gen), torch.rand(5, generator=setup.aug_gen),
             torch.rand(5))
    assert_same(list(expected), list(drawn))
    assert_same(state.model, {k: v.contiguous() for k, v in model.state_dict().items()})
    assert setup.schedule.last_epoch == state.schedule["last_epoch"] == 1
    assert setup.optimizer.param_groups[0]["lr"] == state.optimizer["param_groups"][0]["lr"]
    assert setup.images_done == state.images_done
    if setup.averager:
        assert_same(state.average, setup.averager.state())


def test_state_for_other_data_is_refused(data: CifarData, cifar_root: Path) -> None:
    state = started_state(TINY, FAST, data)
    other = subset(load_cifar10(cifar_root, download=False), 100, seed=0)
    model = build_model(TINY)
    with pytest.raises(ValueError, match="trained on 200 images"):
        state.restore(model, set_up(model, other, FAST))


def save_raw(run_dir: Path, values: object) -> None:
    out = io.BytesIO()
    torch.save(values, out)
    (run_dir / CHECKPOINT_FILE).write_bytes(out.getvalue())


@pytest.mark.parametrize("intruder", ["code", "dataclass"])
def test_checkpoint_with_pickled_objects_is_refused(intruder: str, data: CifarData, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    values = started_state(TINY, FAST, data).state_dict()
    values["stopping"] = WritesMarker(marker) if intruder == "code" else FAST  # FAST: a TrainConfig
    save_raw(tmp_path, values)
    with pytest.raises(RunError, match="refused to load"):
        read_training_state(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"not a zip file at all", "not a readable checkpoint"),
    ({"version": 1, "epoch": 0}, "not a usable checkpoint"),
    ({"version": 99}, "not a usable checkpoint"),
    ([torch.zeros(3)], "not a usable checkpoint"),
])
def test_damaged_or_foreign_checkpoint_is_a_run_error(content: object, message: str, tmp_path: Path) -> None:
    if isinstance(content, bytes):
        (tmp_path / CHECKPOINT_FILE).write_bytes(content)
    else:
        save_raw(tmp_path, content)
    with pytest.raises(RunError, match=message):
        read_training_state(tmp_path)


def test_malformed_state_is_refused(data: CifarData, tmp_path: Path) -> None:
    values = started_state(TINY, FAST, data).state_dict()
    values["model"] = {"layer": "not a tensor"}
    save_raw(tmp_path, values)
    with pytest.raises(RunError, match="malformed"):
        read_training_state(tmp_path)


def test_missing_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint"):
        read_training_state(tmp_path)


# --- which runs can be resumed -------------------------------------------------------------

def write_run(path: Path, data: CifarData, status: str, epochs_done: int, planned: int = 3,
              checkpoint: bool = True) -> Path:
    """A run folder as training leaves it, without training: ``epochs_done`` recorded epochs."""
    cfg = dataclasses.replace(FAST, epochs=planned)
    writer = RunWriter(path, RunConfig(TINY, cfg, preset="baseline", subset=200))
    history = records(epochs_done)
    for e in range(1, epochs_done + 1):
        writer.epoch_done(history[:e], 1, np.eye(10, dtype=np.int64) * e, build_model(TINY).state_dict(),
                          {"conv1": 0.1 * e})
    if checkpoint:
        writer.save_checkpoint(started_state(TINY, cfg, data, history).state_dict())
    if status != "running":
        writer.finish(status)
    return path


def test_which_runs_can_be_resumed(data: CifarData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def blocker(name: str, *args: object, **kwargs: object) -> str | None:
        return load_run(write_run(tmp_path / name, data, *args, **kwargs)).resume_blocker()

    assert blocker("stopped", "stopped", 2) is None
    assert blocker("stopped-in-the-last-epoch", "stopped", 3) is None  # its last epoch was cut short
    assert blocker("stopped-at-once", "stopped", 0) is None  # its checkpoint is the set-up state
    assert blocker("interrupted", "interrupted", 1) is None
    assert "no checkpoint" in blocker("no-checkpoint", "stopped", 2, checkpoint=False)
    assert "has finished" in blocker("finished", "finished", 3)
    assert "planned epochs are done" in blocker("interrupted-at-the-end", "interrupted", 3)
    assert "still running" in blocker("running", "running", 1)  # by this very process
    assert load_run(tmp_path / "stopped").resumable and not load_run(tmp_path / "finished").resumable
    # A running run whose process is gone was interrupted.
    metrics = runs.RunMetrics(status="running", pid=2 ** 22 + 12345, host=runs.socket.gethostname())
    runs.atomic_write(tmp_path / "running" / runs.METRICS_FILE, runs.json.dumps(metrics.to_dict()).encode())
    assert load_run(tmp_path / "running").resumable
    monkeypatch.setattr(runs, "MODELS_DIR", tmp_path)
    assert "bundled model" in load_run(tmp_path / "stopped").resume_blocker()


def test_reopen_cuts_the_files_back_to_the_checkpoint(data: CifarData, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", data, "interrupted", 3, planned=5, checkpoint=False)
    state = started_state(TINY, dataclasses.replace(FAST, epochs=5), data, records(2))
    runs.atomic_write(run_dir / CHECKPOINT_FILE, runs.checkpoint_bytes(state.state_dict()))

    run = load_run(run_dir)
    writer = RunWriter.reopen(run, resume_point(read_training_state(run_dir), run.train_config))
    run = load_run(run_dir)
    assert [r.epoch for r in run.history] == [1, 2]
    assert len(run.val_confusions()) == 2 and [row["epoch"] for row in run.grad_norms()] == [1, 2]
    assert run.status == "running" and run.metrics.pid == os.getpid() and run.metrics.epochs_run == 2
    assert run.metrics.best_epoch == state.stopping.best_epoch == 2
    assert_same(load_weights(run_dir / runs.WEIGHTS_FILE), state.best_state)
    assert run.config.preset == "baseline" and run.subset == 200, "config.json is kept"
    assert writer.confusions and len(writer.confusions) == 2


def test_reopen_from_the_set_up_state_leaves_no_epochs(data: CifarData, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", data, "stopped", 1, checkpoint=False)
    RunWriter.reopen(load_run(run_dir), resume_point(started_state(TINY, FAST, data), FAST))
    run = load_run(run_dir)
    assert run.history == [] and not run.has_weights and run.val_confusions() is None
    assert run.metrics.status == "running"


# --- the command line's refusals ---------------------------------------------------------------

def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_resume_errors_are_one_line(cifar_env: Path, data: CifarData, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert "does not exist" in one_error_line(capsys, ["train", "--resume", str(tmp_path / "nowhere")])
    assert "not a run folder" in one_error_line(capsys, ["train", "--resume", str(tmp_path / "empty")])
    finished = write_run(tmp_path / "finished", data, "finished", 3)
    assert "has finished" in one_error_line(capsys, ["train", "--resume", str(finished)])
    bare = write_run(tmp_path / "bare", data, "stopped", 1, checkpoint=False)
    assert "no checkpoint" in one_error_line(capsys, ["train", "--resume", str(bare)])
    stopped = write_run(tmp_path / "stopped", data, "stopped", 1)
    err = one_error_line(capsys, ["train", "--resume", str(stopped), "--epochs", "9", "--set", "lr=1"])
    assert "--epochs" in err and "--set" in err

    values = torch.load(stopped / CHECKPOINT_FILE, weights_only=True)
    values["optimizer"] = {"hook": WritesMarker(tmp_path / "executed")}
    save_raw(stopped, values)
    assert "refused to load" in one_error_line(capsys, ["train", "--resume", str(stopped)])
    assert not (tmp_path / "executed").exists()
    (stopped / CHECKPOINT_FILE).write_bytes(b"\0" * 100)
    assert "not a readable checkpoint" in one_error_line(capsys, ["train", "--resume", str(stopped)])

    other = write_run(tmp_path / "other-data", data, "stopped", 1)
    run = load_run(other)
    claims = dataclasses.replace(run.config, subset=100)  # other data than its checkpoint was trained on
    runs.atomic_write(other / runs.CONFIG_FILE, runs.json.dumps(claims.to_dict()).encode())
    assert "is it the same dataset" in one_error_line(capsys, ["train", "--resume", str(other)])
    assert load_run(other).status == "stopped", "a refused resume leaves the run as it was"


# --- resumed runs equal uninterrupted ones --------------------------------------------------------

def history_table(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / runs.HISTORY_FILE).open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Equal history (every figure but the wall time) and equal final weights."""
    got, want = history_table(resumed), history_table(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["epoch"], key)
    weights, expected = load_weights(resumed / runs.WEIGHTS_FILE), load_weights(reference / runs.WEIGHTS_FILE)
    assert weights.keys() == expected.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], expected[name], atol=1e-5, rtol=0)
    done, ref = load_run(resumed), load_run(reference)
    assert done.status == "finished" and not (resumed / CHECKPOINT_FILE).exists()
    assert done.metrics.best_epoch == ref.metrics.best_epoch
    assert done.metrics.test_acc == pytest.approx(ref.metrics.test_acc, abs=1e-6)
    np.testing.assert_array_equal(done.val_confusions(), ref.val_confusions())


CLI_RECIPES = {
    "baseline": ["--set", "conv_filters=8,16", "--set", "conv_dropout=0,0.25", "--set", "dense_units=16",
                 "--set", "dense_dropout=0.25", "--set", "batch_size=32", "--subset", "400"],
    # whitening stem, one-cycle schedule, weight averaging, label smoothing, mirror averaging
    "quick": ["--preset", "quick", "--set", "conv_filters=8,16,16", "--set", "batch_size=32",
              "--set", "precision=fp32", "--subset", "400"],
}
EPOCHS = 4


def cli(args: list[str], cifar_root: Path, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k.upper() != "CIFAR10_DIR"}
    env.update(CIFAR10_DIR=str(cifar_root), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    return subprocess.Popen([sys.executable, "-m", "cifar_core", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / runs.HISTORY_FILE).read_text().splitlines()) - 1)
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(CLI_RECIPES))
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(recipe: str, cifar_root: Path,
                                                                 tmp_path: Path) -> None:
    args = ["train", *CLI_RECIPES[recipe], "--epochs", str(EPOCHS), "--device", "cpu", "--seed", "5"]
    reference = cli([*args, "--out", str(tmp_path / "reference")], cifar_root, tmp_path)
    killed_dir = tmp_path / "killed"
    proc = cli([*args, "--out", str(killed_dir)], cifar_root, tmp_path)
    try:
        deadline = time.monotonic() + 180
        while rows(killed_dir) < 1:  # the first epoch is recorded; its checkpoint comes right after
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch within three minutes"
            time.sleep(0.01)
        time.sleep(0.1)  # into the second epoch
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed = load_run(killed_dir)
    assert killed.status == "interrupted" and 1 <= len(killed.history) < EPOCHS, len(killed.history)
    assert killed.resumable

    resumed = cli(["train", "--resume", str(killed_dir)], cifar_root, tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and epoch_lines[-1].startswith(f"epoch {EPOCHS}/{EPOCHS} ")
    assert f"run folder: {killed_dir}" in out
    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err
    assert_same_run(killed_dir, tmp_path / "reference")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["baseline", "quick"])
def test_job_stopped_by_its_user_resumes_to_the_uninterrupted_result(recipe: str, cifar_root: Path,
                                                                    tmp_path: Path) -> None:
    model_cfg, train_cfg = (TINY, FAST) if recipe == "baseline" else (QUICK_MODEL, QUICK_TRAIN)
    full = load_cifar10(cifar_root, download=False)
    train_run(model_cfg, train_cfg, subset(full, 300, seed=train_cfg.seed), tmp_path / "reference",
              subset=300)

    registry = JobRegistry(max_jobs=1, torch_threads=1)
    job_id = registry.submit(model_cfg, train_cfg, full, subset_size=300, runs_root=tmp_path / "runs")
    deadline = time.monotonic() + 120
    while (snap := registry.snapshot(job_id)).epoch < 2:  # stop somewhere in the second epoch
        assert snap.active and time.monotonic() < deadline, snap
        time.sleep(0.005)
    registry.stop(job_id)
    stopped = registry.wait(job_id, timeout=60)
    assert stopped.status == "stopped"
    run = load_run(stopped.run_dir)
    assert run.status == "stopped" and run.resumable, run.resume_blocker()

    resumed_id = registry.resume(run, full)
    with pytest.raises(RunError, match="already being resumed|still running"):
        registry.resume(run, full)
    snap = registry.wait(resumed_id, timeout=120)
    assert snap.status == "finished", snap.error
    assert snap.run_dir == run.path and [r.epoch for r in snap.history] == [1, 2, 3]
    assert_same_run(run.path, tmp_path / "reference")


def record_bytes(run_dir: Path) -> dict[str, bytes]:
    """The name and content of every file in a run folder."""
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_resume_refuses_a_finished_run_in_process(data: CifarData, tmp_path: Path) -> None:
    finished = write_run(tmp_path / "finished", data, "finished", 3)
    with pytest.raises(RunError, match="has finished"):
        resume_run(finished, data)


def test_resume_on_a_machine_without_the_runs_device_leaves_it_as_it_was(
        data: CifarData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stopped = write_run(tmp_path / "stopped", data, "stopped", 1)
    config = json.loads((stopped / "config.json").read_text())
    config["train"]["device"] = "cuda"
    (stopped / "config.json").write_text(json.dumps(config))
    before = record_bytes(stopped)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resume_run(stopped, data)
    assert load_run(stopped).status == "stopped"
    assert record_bytes(stopped) == before | {LOCK_FILE: b""}  # only the attempt's empty lock file


def test_run_saved_on_another_kind_of_device_goes_on_with_fresh_augmentation(
        data: CifarData, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = write_run(tmp_path / "run", data, "stopped", 1)
    (run_dir / runs.GRAD_NORMS_FILE).unlink()  # write_run's stand-in layer names
    values = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    # A CUDA generator's state is Philox's seed and offset, 16 bytes; a CPU one's is 5,056.
    values["rng"]["augment"] = torch.zeros(16, dtype=torch.uint8)
    values["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    save_raw(run_dir, values)
    state = read_training_state(run_dir)

    model = build_model(TINY)
    setup = set_up(model, data, FAST)
    with caplog.at_level("WARNING"):
        state.restore(model, setup)
    assert "another kind of device" in caplog.text
    fresh = torch.Generator().manual_seed(FAST.seed + 1 + state.epoch)
    assert_same(torch.rand(5, generator=setup.aug_gen), torch.rand(5, generator=fresh))
    order = torch.Generator()
    order.set_state(state.rng["order"])
    assert_same(torch.randperm(50, generator=setup.order_gen), torch.randperm(50, generator=order))

    metrics = resume_run(run_dir, data)
    assert metrics.status == "finished" and [r.epoch for r in load_run(run_dir).history] == [1, 2, 3]


HOLD = """
import sys, time
from pathlib import Path
from cifar_core.liveness import training_lock
with training_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_run_folder_is_trained_by_one_process_at_a_time(data: CifarData, tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", data, "stopped", 1)
    (run_dir / runs.GRAD_NORMS_FILE).unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunError, match="being trained by another process"):
            resume_run(run_dir, data)
        assert load_run(run_dir).status == "stopped" and len(load_run(run_dir).history) == 1, \
            "a refused resume leaves the run as it was"
        before = record_bytes(run_dir)
        with pytest.raises(RunError, match="being trained by another process"):
            train_run(TINY, FAST, data, run_dir)  # a new run into the same folder writes nothing
        assert record_bytes(run_dir) == before
        os.kill(holder.pid, signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert resume_run(run_dir, data).status == "finished"


def test_a_training_run_holds_its_folder(data: CifarData, tmp_path: Path) -> None:
    refusals = []

    def try_to_take_it(event: object) -> None:
        with pytest.raises(RunError, match="being trained by another process") as err:
            with training_lock(tmp_path / "run"):
                pass
        refusals.append(err.value)

    train_run(TINY, dataclasses.replace(FAST, epochs=1), data, tmp_path / "run", on_event=try_to_take_it)
    assert refusals
    with training_lock(tmp_path / "run"):  # free once the run is over
        pass


# --- the Train page -------------------------------------------------------------------------

@pytest.mark.slow  # the job it starts trains
@pytest.mark.usefixtures("no_jobs_left_running")
def test_train_page_resumes_a_stopped_run_as_a_job(cifar_env: Path, tmp_path: Path) -> None:
    full = load_cifar10(cifar_env, download=False)
    cfg = dataclasses.replace(FAST, epochs=2)
    stop = threading.Event()
    stop.set()  # stopped in its first batch: recorded, and resumable from its set-up state
    run_dir = Path(os.environ["CIFAR_RUNS_DIR"]) / "stopped-run"
    train_run(TINY, cfg, subset(full, 200, seed=cfg.seed), run_dir, stop=stop, preset="baseline",
              subset=200)
    assert load_run(run_dir).status == "stopped" and load_run(run_dir).resumable

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="train.resume.run").value == str(run_dir)
    at.button(key="train.resume").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]

    job_id = at.session_state["train.job_id"]
    snap = get_registry().snapshot(job_id)
    assert snap is not None and snap.run_dir == run_dir
    done = get_registry().wait(job_id, timeout=60)
    assert done.status == "finished", done.error
    assert [r.epoch for r in load_run(run_dir).history] == [1, 2]
    at.run()
    assert "finished after 2 epochs" in at.success[0].value
    assert not [s for s in at.get("selectbox") if s.key == "train.resume.run"], "nothing left to resume"


def test_train_page_offers_resume_for_stopped_runs_only(cifar_env: Path, data: CifarData) -> None:
    root = Path(os.environ["CIFAR_RUNS_DIR"])
    write_run(root / "done", data, "finished", 3)
    write_run(root / "stopped", data, "stopped", 1)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    choice = at.selectbox(key="train.resume.run")
    assert choice.value == str(root / "stopped") and choice.options == [load_run(root / "stopped").label]
    assert not at.button(key="train.resume").disabled
    # The stopped run was never tested: its table cell says so with a dash, not "None".
    table = next(d for d in at.dataframe if "status" in d.value.columns)
    stopped = table.value.set_index("status").loc["stopped"]
    assert stopped["test acc"] != stopped["test acc"] and table.proto.placeholder == "—"
