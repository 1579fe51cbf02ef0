"""The dataset fetched by itself in the background: one download for the whole process,
md5-checked, installed only when every batch parses. Offline here, so a local file:// URL
stands in for the University of Toronto."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_archive, write_cifar

from cifar_core.data import BackgroundDownload, load_cifar10
from cifar_core.jobs import use_page_threads


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(file:// URL, md5) of a small CIFAR-format archive."""
    root = tmp_path_factory.mktemp("mirror")
    path = make_archive(write_cifar(root / "src", per_batch=20), root / "cifar-10-python.tar.gz")
    return path.as_uri(), hashlib.md5(path.read_bytes()).hexdigest()


def test_downloads_checks_and_installs_once(archive: tuple[str, str], tmp_path: Path) -> None:
    url, md5 = archive
    fetch = BackgroundDownload(tmp_path / "data", url, md5)
    assert fetch.status().state == "idle"
    assert fetch.start()
    assert not fetch.start()  # one download for everyone
    status = fetch.wait(30)
    assert status.state == "done", status.error
    assert status.done == status.total > 0 and status.share == 1.0
    assert not fetch.start()  # done: nothing more to do
    data = load_cifar10(tmp_path / "data", download=False)
    assert len(data.y_test) == 20


def test_a_wrong_checksum_installs_nothing_and_can_be_retried(archive: tuple[str, str],
                                                              tmp_path: Path) -> None:
    url, md5 = archive
    fetch = BackgroundDownload(tmp_path / "data", url, "0" * 32)
    fetch.start()
    status = fetch.wait(30)
    assert status.state == "failed" and "md5" in status.error
    assert not list((tmp_path / "data").iterdir())  # no partial file, no folder
    fetch.md5 = md5
    assert fetch.start()
    assert fetch.wait(30).state == "done"


def test_offline_fails_with_a_message(tmp_path: Path) -> None:
    fetch = BackgroundDownload(tmp_path / "data", (tmp_path / "nowhere.tar.gz").as_uri())
    fetch.start()
    status = fetch.wait(30)
    assert status.state == "failed" and "download failed" in status.error


def test_pages_get_the_cores_training_leaves_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # A job pins its own thread count; a page thread started afterwards sets its own instead
    # of inheriting the job's, and the job keeps its count.
    monkeypatch.setattr("cifar_core.jobs.available_cores", lambda: 4)
    seen: dict[str, int] = {}
    job_ready, page_done = threading.Event(), threading.Event()

    def job() -> None:
        torch.set_num_threads(1)
        torch.get_num_threads()
        job_ready.set()
        page_done.wait(5)
        seen["job"] = torch.get_num_threads()

    def page(busy: int, name: str) -> None:
        seen[name] = use_page_threads(busy)

    worker = threading.Thread(target=job)
    worker.start()
    job_ready.wait(5)
    for busy, name in ((1, "page while training"), (0, "page when idle")):
        thread = threading.Thread(target=page, args=(busy, name))
        thread.start()
        thread.join()
    page_done.set()
    worker.join()
    assert seen == {"job": 1, "page while training": 3, "page when idle": 4}
