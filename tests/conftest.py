"""Shared fixtures: tiny CIFAR-format datasets in both pickle flavours, and the real data.

The synthetic images are learnable on purpose: each class has its own colour and a
bright stripe at its own row, plus noise, so a few epochs of training must lower the loss.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_core.data import CifarData, load_cifar10
from cifar_core.jobs import get_registry

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) planar uint8 rows and labels 0..9, cycling through the classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.int16)
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 90 + 15 * label
        images[i, 3 * label:3 * label + 3, :, :] += 100
    images = np.clip(images, 0, 255).astype(np.uint8)
    return images.transpose(0, 3, 1, 2).reshape(n, 3072), labels


class Python2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 did: protocol 2, str and bytes as BINSTRING."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def dumps(obj: object, flavour: str) -> bytes:
    if flavour == "py3":
        return pickle.dumps(obj, protocol=4)
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(obj)
    # Python 2's numpy lived in numpy.core; numpy 2 writes numpy._core.
    return out.getvalue().replace(b"numpy._core.", b"numpy.core.")


def batch_dict(rows: np.ndarray, labels: np.ndarray, label: str) -> dict:
    return {b"batch_label": label.encode(), b"labels": [int(v) for v in labels],
            b"data": rows, b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}


def write_cifar(root: Path, per_batch: int = 100, flavour: str = "py3", seed: int = 0) -> Path:
    """Write a CIFAR-10 python folder at root/cifar-10-batches-py; returns that folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 7):
        rows, labels = synthetic_images(per_batch, seed + i)
        name = f"data_batch_{i}" if i < 6 else "test_batch"
        (folder / name).write_bytes(dumps(batch_dict(rows, labels, name), flavour))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta, flavour))
    return folder


def make_archive(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return target


SLOW_KINDS = ("browser", "realdata", "gpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser, real-data and GPU tests are slow by nature: ``-m "not slow"`` leaves them out too."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_auto_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app must not fetch 163 MB whenever a test starts it without data (tests of the
    download turn it back on, with a local archive)."""
    monkeypatch.setenv("CIFAR_AUTO_DOWNLOAD", "0")


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny cifar-10-batches-py (500 train, 100 test images)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root)
    return root


@pytest.fixture(scope="module")
def data(cifar_root: Path) -> CifarData:
    """The tiny dataset, read once per test module (a module may define its own subset)."""
    return load_cifar10(cifar_root, download=False)


@pytest.fixture()
def keep_torch_threads() -> Iterator[None]:
    """Jobs set torch's process-wide thread count; leave it as the test found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def cifar_env(cifar_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """CIFAR10_DIR points at the tiny dataset and CIFAR_RUNS_DIR at a fresh folder."""
    monkeypatch.setenv("CIFAR10_DIR", str(cifar_root))
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "runs"))
    return cifar_root


@pytest.fixture(scope="session")
def real_cifar_root() -> Path:
    """The real CIFAR-10, built once from ../shared/datasets; skipped where that is absent.

    The cache is rebuilt whenever the source files change (a stamp of their names, sizes and
    times beside it): a cache built from an earlier copy of the data is never used."""
    builder = SHARED_DATASETS / "build_cifar10.py"
    if not builder.exists():
        pytest.skip(f"real data absent: {builder} not found")
    cache = Path(os.environ.get("CIFAR_REAL_CACHE", Path.home() / ".cache" / "cifar10-lab-real"))
    stamp = "\n".join(f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}"
                      for p in sorted(SHARED_DATASETS.iterdir()) if p.is_file())
    stamp_file = cache / "source.stamp"
    fresh = stamp_file.exists() and stamp_file.read_text() == stamp
    if not fresh or not (cache / "cifar-10-batches-py" / "test_batch").exists():
        shutil.rmtree(cache / "cifar-10-batches-py", ignore_errors=True)
        subprocess.run([sys.executable, str(builder), str(cache)], check=True,
                       stdout=subprocess.DEVNULL)
        stamp_file.write_text(stamp)
    return cache


@pytest.fixture()
def no_jobs_left_running() -> Iterator[None]:
    """Stop every background job a test started, and restore torch's thread count (jobs
    change it process-wide)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    registry = get_registry()
    for snap in registry.active():
        registry.stop(snap.id)
        registry.wait(snap.id, timeout=30)
