"""The deployment profile: how a cloud host is recognised, and the defaults that follow."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cifar_core import deployment, jobs
from cifar_core.config import ModelConfig, TrainConfig
from cifar_core.data import load_cifar10
from cifar_core.deployment import cpu_quota, current_profile, detect
from cifar_core.jobs import JobLimitError, JobRegistry, default_torch_threads
from cifar_core.runs import RunMetrics

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "streamlit_app.py")


@pytest.fixture()
def cloud_root(tmp_path: Path) -> Path:
    """A stand-in for Community Cloud's /mount/src, holding a checked-out repository."""
    root = tmp_path / "mount" / "src"
    (root / "cifar-lab").mkdir(parents=True)
    return root


def here(tmp_path: Path) -> dict:
    """Arguments that place the app in an ordinary folder (a laptop)."""
    folder = tmp_path / "laptop" / "cifar-lab"
    folder.mkdir(parents=True, exist_ok=True)
    return {"cwd": folder, "project_dir": folder}


# --- detection ----------------------------------------------------------------------

def test_a_laptop_is_local(tmp_path: Path, cloud_root: Path) -> None:
    profile = detect({"HOME": "/home/ann"}, cloud_root=cloud_root, **here(tmp_path))
    assert profile.name == "local"


@pytest.mark.parametrize("where", ["project_dir", "cwd"])
def test_running_from_the_cloud_checkout_is_cloud(tmp_path: Path, cloud_root: Path, where: str) -> None:
    places = here(tmp_path) | {where: cloud_root / "cifar-lab"}
    profile = detect({"HOME": "/root"}, cloud_root=cloud_root, **places)
    assert profile.name == "cloud"
    assert str(cloud_root) in profile.reason


def test_appuser_home_counts_only_where_the_cloud_mount_exists(tmp_path: Path, cloud_root: Path) -> None:
    env = {"HOME": "/home/appuser"}
    assert detect(env, cloud_root=cloud_root, **here(tmp_path)).name == "cloud"
    # Many Docker images run as "appuser" too: without /mount/src that is no sign of the cloud.
    assert detect(env, cloud_root=tmp_path / "absent", **here(tmp_path)).name == "local"


@pytest.mark.parametrize(("value", "expected"), [("cloud", "cloud"), ("CLOUD ", "cloud"), ("local", "local")])
def test_cifar_profile_decides_over_detection(tmp_path: Path, cloud_root: Path, value: str,
                                              expected: str) -> None:
    in_cloud = {"cwd": cloud_root / "cifar-lab", "project_dir": cloud_root / "cifar-lab"}
    assert detect({"CIFAR_PROFILE": value}, cloud_root=cloud_root, **in_cloud).name == expected
    assert detect({"CIFAR_PROFILE": value}, cloud_root=cloud_root, **here(tmp_path)).name == expected


def test_unknown_cifar_profile_is_ignored_with_a_warning(tmp_path: Path, cloud_root: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cifar_core.deployment"):
        profile = detect({"CIFAR_PROFILE": "huge"}, cloud_root=cloud_root, **here(tmp_path))
    assert profile.name == "local"
    assert "CIFAR_PROFILE='huge'" in caplog.text


def test_current_profile_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR_PROFILE", "cloud")
    assert current_profile().name == "cloud"
    monkeypatch.setenv("CIFAR_PROFILE", "local")
    assert current_profile().name == "local"


# --- what each profile means ----------------------------------------------------------

def test_cloud_defaults_are_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR_PROFILE", "cloud")
    cloud = current_profile()
    assert (cloud.max_jobs, cloud.max_queued) == (1, 2)
    assert cloud.default_training_images(40_000) == 10_000
    assert cloud.default_training_images(8_000) == 0, "fewer images than the default: all of them"
    assert cloud.default_epochs(50) == 10 and cloud.default_epochs(4) == 4
    monkeypatch.setenv("CIFAR_PROFILE", "local")
    local = current_profile()
    assert local.default_training_images(40_000) == 0 and local.default_epochs(50) == 50
    assert local.model_cache > cloud.model_cache and local.keep_finished > cloud.keep_finished


def test_registry_takes_its_limits_from_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CIFAR_MAX_JOBS", "CIFAR_MAX_QUEUED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CIFAR_PROFILE", "cloud")
    registry = JobRegistry(torch_threads=1)
    assert (registry.max_jobs, registry.max_queued, registry.keep_finished) == (1, 2, 10)
    monkeypatch.setenv("CIFAR_PROFILE", "local")
    registry = JobRegistry(torch_threads=1)
    assert (registry.max_jobs, registry.max_queued, registry.keep_finished) == (jobs.machine_slots(), 60, 50)
    monkeypatch.setenv("CIFAR_PROFILE", "cloud")
    monkeypatch.setenv("CIFAR_MAX_QUEUED", "0")
    monkeypatch.setenv("CIFAR_MAX_JOBS", "2")
    registry = JobRegistry(torch_threads=1)
    assert (registry.max_jobs, registry.max_queued) == (2, 0), "explicit settings win"


def test_cloud_queue_is_short_then_refuses(monkeypatch: pytest.MonkeyPatch, cifar_root: Path,
                                           tmp_path: Path) -> None:
    for name in ("CIFAR_MAX_JOBS", "CIFAR_MAX_QUEUED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CIFAR_PROFILE", "cloud")
    released = threading.Event()

    def held_run(*args: object, stop: threading.Event, **kwargs: object) -> RunMetrics:
        released.wait(30)
        return RunMetrics(status="finished")

    monkeypatch.setattr(jobs, "train_run", held_run)
    data = load_cifar10(cifar_root, download=False)
    registry = JobRegistry(torch_threads=1)
    submit = lambda: registry.submit(ModelConfig(), TrainConfig(), data, runs_root=tmp_path)  # noqa: E731
    try:
        ids = [submit() for _ in range(3)]
        assert [registry.snapshot(i).status for i in ids] == ["running", "queued", "queued"]
        with pytest.raises(JobLimitError, match="queue is full"):
            submit()
    finally:
        released.set()
        for job_id in ids:
            assert registry.wait(job_id, timeout=30).status == "finished"


def test_torch_threads_respect_a_container_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFAR_TORCH_THREADS", raising=False)
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(jobs, "cpu_quota", lambda: 2)
    assert default_torch_threads(1) == 1, "16 host cores, 2 allowed: one thread, one core for the server"
    monkeypatch.setattr(jobs, "cpu_quota", lambda: None)
    assert default_torch_threads(1) == 15


@pytest.mark.parametrize(("text", "cores"), [
    ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("400000 100000", 4),
    ("max 100000", None), ("", None), ("junk", None), ("100 0", None)])
def test_cpu_quota_reads_cgroup_cpu_max(tmp_path: Path, text: str, cores: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert cpu_quota(path) == cores
    assert cpu_quota(tmp_path / "missing") is None


# --- the Train page ------------------------------------------------------------------------

@pytest.mark.parametrize(("profile", "epochs", "note"), [("cloud", 10, True), ("local", 50, False)])
def test_train_page_starts_from_the_profile_defaults(cifar_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                     profile: str, epochs: int, note: bool) -> None:
    monkeypatch.setenv("CIFAR_PROFILE", profile)
    monkeypatch.setattr(deployment.Profile, "default_training_images",
                        lambda self, available: min(self.default_subset, available // 2))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key="train.epochs").value == epochs  # the baseline plans 50
    # The fixture has 400 training images; the stand-in default offers half where the profile has one.
    assert at.number_input(key="train.subset").value == (200 if profile == "cloud" else 0)
    assert any("Shared cloud server" in c.value for c in at.caption) == note


# --- requirements-cloud.txt ----------------------------------------------------------------

def requirements(name: str) -> list:
    from packaging.requirements import Requirement
    lines = (Path(__file__).resolve().parents[1] / name).read_text().splitlines()
    return [Requirement(line) for line in map(str.strip, lines) if line and not line.startswith(("#", "-"))]


def test_cloud_requirements_keep_the_main_pins_with_cpu_torch() -> None:
    main = {r.name: r for r in requirements("requirements.txt")}
    cloud = requirements("requirements-cloud.txt")
    torch_pin = str(main.pop("torch").specifier).removeprefix("==")
    main.pop("torchvision")  # not imported by the app; PyPI's build is made for the CUDA torch
    others = {r.name: str(r.specifier) for r in cloud if r.name != "torch"}
    assert others == {name: str(r.specifier) for name, r in main.items()}
    torches = [r for r in cloud if r.name == "torch"]
    assert len(torches) == 2
    for version in ("3.11", "3.12"):  # the versions Community Cloud offers; one wheel each
        (wheel,) = [r for r in torches if r.marker.evaluate({"python_version": version})]
        tag = "cp" + version.replace(".", "")
        assert wheel.url == ("https://download.pytorch.org/whl/cpu/"
                             f"torch-{torch_pin}%2Bcpu-{tag}-{tag}-manylinux_2_28_x86_64.whl")


def test_the_server_skips_streamlits_collection_after_every_script_run() -> None:
    # A full collection after each run (Streamlit's default) held the interpreter lock for
    # 0.2-0.7 s per run, every second per visitor watching a training run; the option is
    # hidden, so a misspelt name would be ignored silently: read it back as the server does.
    option = "'runner.postScriptGC'"
    script = ("from streamlit import config; config.get_config_options(force_reparse=True); "
              f"print(config.get_option({option}), config.get_where_defined({option}))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", str(ROOT / ".streamlit" / "config.toml")]
