"""A class training together: names on runs, a fair queue with expected starts, the Leaderboard."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cifar_core import jobs
from cifar_core.__main__ import main
from cifar_core.compare import run_table
from cifar_core.config import OWNER_MAX_LENGTH, ConfigError, check_owner, get_preset
from cifar_core.data import CifarData, subset
from cifar_core.jobs import JobLimitError, JobRegistry, expected_starts, machine_slots
from cifar_core.pipeline import train_run
from cifar_core.runs import CONFIG_FILE, load_run

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
PRESET = get_preset("baseline")
pytestmark = pytest.mark.usefixtures("one_thread", "keep_torch_threads")


# --- names ---------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "kept"), [
    ("  Ada   Lovelace ", "Ada Lovelace"), ("Zoë O'Neil-Smith_2.", "Zoë O'Neil-Smith_2."),
    ("", None), ("   ", None), (None, None), ("x" * OWNER_MAX_LENGTH, "x" * OWNER_MAX_LENGTH)])
def test_a_name_is_trimmed_and_kept(given: str | None, kept: str | None) -> None:
    assert check_owner(given) == kept


@pytest.mark.parametrize(("given", "says"), [
    ("x" * (OWNER_MAX_LENGTH + 1), "at most 40 characters"), ("<b>Ada</b>", "'/' '<' '>'"),
    ("../etc", "'/'"), ("Ada\x00", "'\\x00'"), ("Ada; drop", "';'")])
def test_a_bad_name_is_refused_saying_why(given: str, says: str) -> None:
    with pytest.raises(ConfigError, match="at most|letters, digits") as err:
        check_owner(given)
    assert says in str(err.value)


def test_a_run_keeps_its_name_and_shows_it_wherever_it_is_listed(data: CifarData, tmp_path: Path) -> None:
    cfg = replace(PRESET.train, epochs=1, device="cpu")
    train_run(PRESET.model, cfg, data, tmp_path / "named", preset="baseline", owner=" Ada  L. ")
    train_run(PRESET.model, cfg, data, tmp_path / "anonymous", preset="baseline")
    named, anonymous = load_run(tmp_path / "named"), load_run(tmp_path / "anonymous")
    assert json.loads((named.path / CONFIG_FILE).read_text())["owner"] == "Ada L."
    assert named.owner == "Ada L." and "· Ada L. · baseline" in named.label
    assert anonymous.owner is None and "· baseline" in anonymous.label
    owners = run_table([named, anonymous])["owner"]
    assert owners[0] == "Ada L." and pd.isna(owners[1])

    config = json.loads((anonymous.path / CONFIG_FILE).read_text())
    (anonymous.path / CONFIG_FILE).write_text(json.dumps({**config, "owner": "<script>"}))
    assert load_run(anonymous.path).owner is None, "a hand-edited bad name is not shown"


def test_train_command_takes_a_name_and_refuses_a_bad_one(cifar_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--name", "a/b", "--data-dir", str(cifar_root), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: a name may hold letters")
    out = tmp_path / "run"
    assert main(["train", "--name", "Grace", "--data-dir", str(cifar_root), "--dry-run",
                 "--set", "conv_filters=8,8,8", "--out", str(out)]) == 0
    assert load_run(out).owner == "Grace"


# --- the queue -----------------------------------------------------------------------

def test_expected_starts_follow_the_slots_first_come_first_served() -> None:
    assert expected_starts([30.0], [20.0, 20.0, 20.0], slots=1) == [30.0, 50.0, 70.0]
    assert expected_starts([30.0, 10.0], [20.0, 20.0, 20.0], slots=2) == [10.0, 30.0, 30.0]
    assert expected_starts([], [20.0, 20.0, 20.0], slots=2) == [0.0, 0.0, 20.0]
    assert expected_starts([5.0], [None, 20.0], slots=1) == [5.0, None], "after an unknown length"
    assert expected_starts([None, 8.0], [1.0, 1.0], slots=2) == [8.0, 9.0], "the known slot bounds it"


def test_machine_slots_leave_a_core_to_the_server_and_fit_in_memory() -> None:
    gib = 1 << 30
    assert machine_slots(cores=2, memory=64 * gib) == 1
    assert machine_slots(cores=16, memory=64 * gib) == 15
    assert machine_slots(cores=16, memory=4 * gib) == 4
    assert machine_slots(cores=1, memory=None) == 1 and machine_slots(cores=8, memory=0) == 1


def test_a_visitor_has_one_run_waiting_and_every_job_carries_its_name(data: CifarData,
                                                                       tmp_path: Path) -> None:
    registry = JobRegistry(max_jobs=1, max_queued=10, torch_threads=1)
    long = replace(PRESET.train, epochs=200, early_stopping=False, device="cpu")
    running = registry.submit(PRESET.model, long, data, runs_root=tmp_path, owner="Ada", visitor="a")
    waiting = registry.submit(PRESET.model, long, data, runs_root=tmp_path, owner="Ada", visitor="a")
    try:
        with pytest.raises(JobLimitError, match="already have a run waiting"):
            registry.submit(PRESET.model, long, data, runs_root=tmp_path, visitor="a")
        with pytest.raises(ConfigError):
            registry.submit(PRESET.model, long, data, runs_root=tmp_path, owner="a/b", visitor="b")
        other = registry.submit(PRESET.model, long, data, runs_root=tmp_path, visitor="b")
        snaps = {s.id: s for s in registry.active()}
        assert [snaps[i].queue_position for i in (running, waiting, other)] == [None, 1, 2]
        assert snaps[waiting].owner == "Ada" and snaps[other].owner is None
        assert snaps[waiting].train_images == len(data.y_train)
        deadline = time.monotonic() + 30
        while registry.snapshot(other).starts_in is None and time.monotonic() < deadline:
            time.sleep(0.05)  # known once the running job has measured an epoch
        first, second = registry.snapshot(waiting).starts_in, registry.snapshot(other).starts_in
        assert first is not None and second is not None and 0 <= first < second
        registry.stop(waiting)
        registry.submit(PRESET.model, long, data, runs_root=tmp_path, visitor="a")  # room again
        running_dir = registry.snapshot(running).run_dir
        assert json.loads((running_dir / CONFIG_FILE).read_text())["owner"] == "Ada"
    finally:
        for snap in registry.active():
            registry.stop(snap.id)
        registry.wait(running, timeout=30)


@pytest.mark.slow  # starts a Python process that imports torch
def test_without_a_cluster_address_ray_is_never_imported(tmp_path: Path) -> None:
    code = ("import sys, cifar_core.jobs, cifar_core.__main__, cifar_core.pipeline\n"
            "cifar_core.jobs.get_registry()\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    env = {"PATH": "/usr/bin:/bin", "CIFAR_RUNS_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(APP).parent, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- the Leaderboard -----------------------------------------------------------------

@pytest.fixture()
def class_runs(cifar_env: Path, tmp_path: Path, data: CifarData) -> Path:
    """Three finished one-epoch runs of the tiny data: Ada's, Bea's with a smaller batch, and one
    without a name on 200 of its images."""
    root = tmp_path / "runs"
    cfg = replace(PRESET.train, epochs=1)
    for folder, owner, train in (("20260101-000001-baseline", "Ada", cfg),
                                 ("20260101-000002-baseline", "Bea", replace(cfg, batch_size=32)),
                                 ("20260101-000003-baseline", None, cfg)):
        images = None if owner else 200
        train_run(PRESET.model, train, data if owner else subset(data, 200), root / folder, preset="baseline",
                  owner=owner, subset=images)
    return root


def board_rows(at: AppTest) -> list[str]:
    table = next(m.value for m in at.markdown if 'class="board"' in m.value)
    return table.split("<tbody>")[1].split("</tr>")[:-1]


def test_leaderboard_lists_every_run_with_its_name_changes_and_accuracy(class_runs: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["sort"] = "name"
    at.run()
    at.switch_page("app_pages/leaderboard.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    rows = board_rows(at)
    assert len(rows) == 3
    assert ">Ada<" in rows[0] and ">Bea<" in rows[1], "sorted by name, as the URL asked"
    assert ">epochs: 50 → 1<" in rows[0] and ">batch_size: 64 → 32; epochs: 50 → 1<" in rows[1]
    assert ">epochs: 50 → 1; images: all → 200<" in rows[2]
    assert rows[0].count("%") == 2, "finished: validation and test accuracy"

    at.segmented_control(key="leaderboard.sort").set_value("newest").run()
    assert at.query_params["sort"] == "newest", "the view is in the URL"
    assert ">Ada<" in board_rows(at)[2]
    at.selectbox(key="leaderboard.preset").set_value("quick").run()
    assert at.query_params["preset"] == "quick"
    assert any("No runs yet" in i.value for i in at.info)


@pytest.mark.slow  # trains through the app, and stopping a run tests it first
def test_each_waiting_visitor_sees_their_place_and_name(cifar_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                        no_jobs_left_running: None) -> None:
    monkeypatch.setattr(jobs, "_registry", JobRegistry(max_jobs=1, torch_threads=1))
    sessions = []
    for name in ("Ada", "Ben", "Chloé"):
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.switch_page("app_pages/train.py")
        at.run()
        at.text_input(key="train.owner").set_value(name)
        at.number_input(key="train.epochs").set_value(300)
        at.button(key="train.start").click()
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        sessions.append(at)
    ada, ben, chloe = sessions
    assert not ada.info, "Ada's run trains at once"
    assert "by Ben is waiting: **number 1 in the queue**" in ben.info[0].value
    assert "by Chloé is waiting: **number 2 in the queue**" in chloe.info[0].value
    assert ben.button(key="train.start").disabled, "one run waiting per visitor"

    bad = AppTest.from_file(APP, default_timeout=60)
    bad.run()
    bad.switch_page("app_pages/train.py")
    bad.run()
    bad.text_input(key="train.owner").set_value("Eve<script>")
    bad.button(key="train.start").click()
    bad.run()
    assert "a name may hold letters, digits, spaces" in bad.error[0].value
    assert len(jobs.get_registry().active()) == 3


def test_a_cluster_that_does_not_answer_is_one_clear_message_not_a_wait(
        cifar_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("CIFAR_RAY_ADDRESS", address)
    monkeypatch.setattr(jobs, "_registry", None)
    monkeypatch.setattr(jobs, "_cluster_failure", None)
    started = time.monotonic()
    assert main(["train", "--dry-run", "--data-dir", str(cifar_env)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and address in error and "unset CIFAR_RAY_ADDRESS" in error
    assert "Traceback" not in error

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Training is unavailable on this server" in e.value for e in at.error)
    with pytest.raises(jobs.ClusterError):  # remembered: the next views do not try again at once
        jobs.get_registry()
    assert time.monotonic() - started < 30
