"""CIFAR-10: find it, fetch it, read it safely, split it.

The python version of CIFAR-10 is a folder ``cifar-10-batches-py/`` holding six pickled
batches and a metadata file:

- ``data_batch_1`` .. ``data_batch_5`` (10,000 training images each) and ``test_batch``
  (10,000 test images). Each is a dict with ``b"data"``, a uint8 array of shape
  (N, 3072) whose rows are three 32x32 planes, red then green then blue, each row-major;
  ``b"labels"``, N integers in 0..9; and ``b"filenames"``, ``b"batch_label"``.
- ``batches.meta``: a dict whose ``b"label_names"`` lists the ten class names.

The official files are protocol-2 pickles written by Python 2 (numpy ``numpy.core``
module names, ``str`` keys that load as bytes); copies re-pickled under Python 3 use
protocol 4 and ``numpy._core`` names. Both are read by an allow-list unpickler that
only rebuilds numpy arrays, so a batch that tries to run code is refused, not executed.

Images come out as uint8 arrays of shape (N, 32, 32, 3) (height, width, RGB).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.model_selection import train_test_split

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH, META_FILE)
DEFAULT_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
IMAGE_BYTES = 32 * 32 * 3
# An official batch is 30.7 MB; anything far larger is not a CIFAR batch.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_ARCHIVE_BYTES = 400 * 1024 * 1024
# The official archive unpacks to 178 MB in 9 members. The caps hold for the whole tar stream,
# skipped members and tar's own pax/long-name headers included, so a gzip bomb stops there.
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 64
MAX_CLASS_NAME = 64

ChannelOrder = Literal["correct", "as_presented"]
ProgressFn = Callable[[int, int], None]


class DataError(Exception):
    """The dataset is missing, malformed or unsafe; the message says what to do."""


@dataclass(frozen=True)
class CifarData:
    """The three splits as uint8 (N, 32, 32, 3) images and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: Path

    @cached_property
    def test_digests(self) -> np.ndarray:
        """``image_digests`` of the test images, computed once per dataset in memory."""
        return image_digests(self.x_test)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of ``train``, ``val`` or ``test``."""
        try:
            return {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                    "test": (self.x_test, self.y_test)}[name]
        except KeyError:
            raise DataError(f"unknown split {name!r}; choose train, val or test") from None


def image_digests(images: np.ndarray) -> np.ndarray:
    """A 64-bit BLAKE2b digest of each image's pixels, as (N,) uint64.

    It names an image by its content, not its position: predictions stored beside a model
    find their images in any copy of the test set, whatever its order or file layout
    (about 0.1 s for 10,000 images)."""
    rows = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


# --- the allow-list unpickler -------------------------------------------------

def _allowed_globals() -> dict[tuple[str, str], object]:
    from numpy._core import multiarray, numeric

    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes bytes in protocol 2 as _codecs.encode(str, "latin1").
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused encoding {encoding!r}")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle._Unpickler):
    # The pure-Python unpickler, as fast here as the C one (a batch is one big bytes object):
    # the C one sizes its memo table from the index a PUT opcode names, so ten bytes asking for
    # slot 2**30 would allocate 16 GB; this one keeps its memo in a dict.
    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def safe_unpickle(raw: bytes, what: str) -> object:
    """Unpickle CIFAR-style data, allowing nothing but numpy array reconstruction."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{what}: not a CIFAR-10 batch ({err})") from None
    except Exception as err:  # truncated or garbled pickles raise almost anything
        raise DataError(f"{what}: unreadable or truncated ({type(err).__name__})") from None


def _field(batch: dict, key: str) -> object:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def parse_batch(raw: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one pickled batch and return (data uint8 (N, 3072), labels int64 (N,))."""
    batch = safe_unpickle(raw, what)
    if not isinstance(batch, dict):
        raise DataError(f"{what}: expected a dict, found {type(batch).__name__}")
    try:
        data, labels = _field(batch, "data"), _field(batch, "labels")
    except KeyError as err:
        raise DataError(f"{what}: missing the {err.args[0]!r} entry") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{what}: data must be a uint8 array, found {found}")
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise DataError(f"{what}: data must have shape (N, 3072), found {data.shape}")
    if data.shape[0] == 0:
        raise DataError(f"{what}: holds no images")
    if not isinstance(labels, np.ndarray) and not (
            isinstance(labels, list | tuple) and len(labels) == data.shape[0]
            and all(isinstance(v, int | np.integer) for v in labels)):
        # Checked before numpy sees them: nested lists that share one another (a few KB of
        # pickle) would expand into gigabytes inside np.asarray.
        raise DataError(f"{what}: labels must be a list of {data.shape[0]} integers")
    try:
        labels = np.asarray(labels)
    except Exception:
        raise DataError(f"{what}: labels are not a list of integers") from None
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataError(f"{what}: expected {data.shape[0]} integer labels, "
                        f"found {labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{what}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def parse_meta(raw: bytes, what: str) -> tuple[str, ...]:
    meta = safe_unpickle(raw, what)
    try:
        names = _field(meta, "label_names") if isinstance(meta, dict) else None
        if not isinstance(names, list | tuple):
            raise TypeError
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except (KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"{what}: no list of label_names") from None
    if len(classes) != NUM_CLASSES:
        raise DataError(f"{what}: expected 10 class names, found {len(classes)}")
    if not all(isinstance(n, bytes | str) and 0 < len(n) <= MAX_CLASS_NAME for n in names):
        raise DataError(f"{what}: class names must be text of 1 to {MAX_CLASS_NAME} characters")
    return classes


def to_images(rows: np.ndarray, channel_order: ChannelOrder = "correct") -> np.ndarray:
    """(N, 3072) planar rows -> (N, 32, 32, 3) images.

    ``"as_presented"`` repeats the presentation's ``reshape(-1, 32, 32, 3)``, which reads
    the R, G, B planes as if they were interleaved pixels and scrambles every image; it
    exists to show that mistake, never to train on by default.
    """
    if channel_order == "correct":
        return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    if channel_order == "as_presented":
        return rows.reshape(-1, 32, 32, 3)
    raise DataError(f"unknown channel_order {channel_order!r}; use 'correct' or 'as_presented'")


def as_presented_images(images: np.ndarray) -> np.ndarray:
    """Correct images (N, 32, 32, 3) as the presentation read them: their planar rows
    reshaped as if the values were interleaved (see ``to_images``)."""
    return to_images(images.transpose(0, 3, 1, 2).reshape(len(images), -1), "as_presented")


# --- finding, downloading and installing --------------------------------------

def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where to look, first that is given: the argument, $CIFAR10_DIR, ./data."""
    if data_dir:
        return [Path(data_dir)]
    if os.environ.get("CIFAR10_DIR"):
        return [Path(os.environ["CIFAR10_DIR"])]
    return [Path("data")]


def _batch_folder(path: Path) -> Path | None:
    for folder in (path, path / FOLDER_NAME):
        if folder.is_dir() and (folder / TRAIN_BATCHES[0]).exists():
            return folder
    return None


def locate(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The batch folder or archive that ``data_dir`` (or its fallbacks) names, if any."""
    path = candidate_dirs(data_dir)[0]
    if path.is_file():
        return path
    if folder := _batch_folder(path):
        return folder
    if (path / ARCHIVE_NAME).is_file():
        return path / ARCHIVE_NAME
    return None


def missing_message(path: Path) -> str:
    return (f"CIFAR-10 not found in {path}: download {ARCHIVE_URL} and put "
            f"{ARCHIVE_NAME} (or its extracted {FOLDER_NAME}/ folder) in {path}, "
            "or pass --data-dir / set CIFAR10_DIR")


def download_archive(dest_dir: Path, progress: ProgressFn | None = None,
                     url: str = ARCHIVE_URL, timeout: float = 15.0, md5: str = ARCHIVE_MD5) -> Path:
    """Fetch the official archive into ``dest_dir`` and check its md5; returns its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / ARCHIVE_NAME
    digest = hashlib.md5()
    with tempfile.NamedTemporaryFile(dir=dest_dir, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(1 << 20):
                    tmp.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, OSError) as err:
            Path(tmp.name).unlink(missing_ok=True)
            raise DataError(f"download failed ({err}). {missing_message(dest_dir)}") from None
    if digest.hexdigest() != md5:
        Path(tmp.name).unlink(missing_ok=True)
        raise DataError(f"downloaded archive has md5 {digest.hexdigest()}, "
                        f"expected {md5}; try again")
    os.replace(tmp.name, target)
    return target


DownloadState = Literal["idle", "downloading", "checking", "done", "failed"]


@dataclass(frozen=True)
class DownloadStatus:
    """Where a background download stands: bytes so far, and how it ended."""

    state: DownloadState = "idle"
    done: int = 0
    total: int = 0
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ("downloading", "checking")

    @property
    def share(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0


class BackgroundDownload:
    """One download and install of the archive into ``folder`` for the whole process.

    The app starts it when it finds no data, so the first visitor need not find a button
    and wait, and every later visitor watches the same download instead of starting one.
    It is ``download_archive`` (md5-checked, renamed into place only when complete) then
    ``install_archive`` (every batch checked before the folder is renamed into place), in
    a thread of its own; ``start`` again after a failure tries again.
    """

    def __init__(self, folder: Path, url: str = ARCHIVE_URL, md5: str = ARCHIVE_MD5,
                 fetch: Callable[..., Path] | None = None) -> None:
        self.folder, self.url, self.md5 = folder, url, md5
        self._fetch = fetch or download_archive
        self._lock = threading.Lock()
        self._status = DownloadStatus()
        self._thread: threading.Thread | None = None

    def status(self) -> DownloadStatus:
        with self._lock:
            return self._status

    def start(self) -> bool:
        """Start unless a download is under way or done; True when this call started one."""
        with self._lock:
            if self._status.active or self._status.state == "done":
                return False
            self._status = DownloadStatus("downloading")
            self._thread = threading.Thread(target=self._run, daemon=True, name="cifar-download")
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> DownloadStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def _set(self, **changes: object) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def _run(self) -> None:
        try:
            archive = self._fetch(self.folder, lambda done, total: self._set(done=done, total=total),
                                  url=self.url, md5=self.md5)
            self._set(state="checking")
            install_archive(archive, self.folder)
        except DataError as err:
            self._set(state="failed", error=str(err))
        except Exception as err:  # a thread must not die silently: the pages show the reason
            self._set(state="failed", error=f"{type(err).__name__}: {err}")
        else:
            self._set(state="done")


class _CappedGzip(gzip.GzipFile):
    """A gzip stream that raises DataError instead of unpacking more than ``cap`` bytes."""

    def __init__(self, fileobj: io.IOBase, cap: int, what: str) -> None:
        super().__init__(fileobj=fileobj, mode="rb")
        self.cap, self.what = cap, what

    def _check(self, end: int) -> None:
        if end > self.cap:
            raise DataError(f"{self.what}: unpacks to more than {self.cap >> 20} MB, not CIFAR-10")

    def read(self, size: int | None = -1) -> bytes:
        room = self.cap + 1 - self.tell()
        data = super().read(room if size is None or size < 0 else min(size, room))
        self._check(self.tell())
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:  # tell() is seek(0, SEEK_CUR)
            offset, whence = super().seek(0, io.SEEK_CUR) + offset, io.SEEK_SET
        self._check(offset)
        return super().seek(offset, whence)


def _member_path(name: str) -> str:
    """A member's name without the leading ``./`` that ``tar czf x.tar.gz ./folder`` writes.

    Only that prefix goes; whatever follows is judged as usual, so ``./cifar-10-batches-py/../x``
    still has more than two parts and is skipped.
    """
    while name.startswith("./"):
        name = name[2:]
    return name


def read_archive(archive: Path | bytes) -> dict[str, bytes]:
    """The batch files inside a ``cifar-10-python.tar.gz``, read into memory.

    Only regular files named ``cifar-10-batches-py/<batch>`` (or ``./cifar-10-batches-py/<batch>``)
    are read, each capped in size; links, devices, absolute or ``..`` paths are never
    touched, and nothing is written to disk.
    """
    what = "archive" if isinstance(archive, bytes) else str(archive)
    size = len(archive) if isinstance(archive, bytes) else archive.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise DataError(f"{what}: larger than {MAX_ARCHIVE_BYTES >> 20} MB, not CIFAR-10")
    fileobj = io.BytesIO(archive) if isinstance(archive, bytes) else open(archive, "rb")
    files: dict[str, bytes] = {}
    try:
        with (fileobj, _CappedGzip(fileobj, MAX_UNPACKED_BYTES, what) as stream,
              tarfile.open(fileobj=stream, mode="r:") as tar):
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise DataError(f"{what}: more than {MAX_MEMBERS} entries, not CIFAR-10")
                parts = _member_path(member.name).split("/")
                if len(parts) != 2 or parts[0] != FOLDER_NAME or parts[1] not in BATCH_FILES:
                    continue
                if not member.isreg():
                    raise DataError(f"{what}: {member.name} is not a regular file")
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{what}: {member.name} is {member.size} bytes, too large")
                files[parts[1]] = tar.extractfile(member).read(MAX_MEMBER_BYTES + 1)
            while stream.read(1 << 20):  # to the end, so that gzip checks its CRC and length
                pass
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{what}: not a readable .tar.gz ({err})") from None
    missing = [name for name in BATCH_FILES if name not in files]
    if missing:
        raise DataError(f"{what}: missing {', '.join(missing)} under {FOLDER_NAME}/")
    return files


def read_folder(folder: Path) -> dict[str, bytes]:
    files = {}
    for name in BATCH_FILES:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder}: missing {name}")
        if path.stat().st_size > MAX_MEMBER_BYTES:
            raise DataError(f"{path}: {path.stat().st_size} bytes, too large for a batch")
        files[name] = path.read_bytes()
    return files


def validate_files(files: dict[str, bytes]) -> tuple[tuple[str, ...], dict[str, tuple]]:
    """Parse every batch; returns (class names, {batch name: (rows, labels)})."""
    classes = parse_meta(files[META_FILE], META_FILE)
    batches = {name: parse_batch(files[name], name) for name in (*TRAIN_BATCHES, TEST_BATCH)}
    return classes, batches


def install_archive(archive: Path | bytes, dest_dir: Path) -> Path:
    """Check an archive completely, then write its batches to ``dest_dir/cifar-10-batches-py``.

    The batches are written to a temporary folder inside ``dest_dir`` and renamed into
    place only after every one has parsed, so a bad archive never replaces a good
    dataset, and nothing lands outside ``dest_dir``.
    """
    files = read_archive(archive)
    validate_files(files)
    final = dest_dir / FOLDER_NAME
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".incoming-"))
    except OSError as err:
        raise DataError(f"cannot write to {dest_dir}: {err.strerror or err}") from None
    try:
        for name, raw in files.items():
            (staging / name).write_bytes(raw)
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".replaced-"))
            os.replace(final, old)
            try:
                os.replace(staging, final)
            except OSError:
                os.replace(old, final)  # the dataset that was there stays in place
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except OSError as err:
        raise DataError(f"cannot install the dataset in {dest_dir}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def ensure_dataset(data_dir: str | os.PathLike | None = None, download: bool = True,
                   progress: ProgressFn | None = None) -> Path:
    """The batch folder or archive to read, downloading the archive if allowed and absent."""
    found = locate(data_dir)
    if found:
        return found
    path = candidate_dirs(data_dir)[0]
    if not download:
        raise DataError(missing_message(path))
    return download_archive(path, progress)


# --- loading and splitting ----------------------------------------------------

def read_batches(source: Path) -> tuple[tuple[str, ...], dict[str, tuple]]:
    files = read_archive(source) if source.is_file() else read_folder(source)
    return validate_files(files)


def load_cifar10(data_dir: str | os.PathLike | None = None, *,
                 channel_order: ChannelOrder = "correct", val_fraction: float = 0.2,
                 split_seed: int = 42, stratify: bool = False, download: bool = True,
                 progress: ProgressFn | None = None) -> CifarData:
    """Read all six batches and split the 50,000 training images into train/validation.

    The split is scikit-learn's ``train_test_split(test_size=0.2, random_state=42)``, as
    in the presentation; the test batch is left untouched.
    """
    source = ensure_dataset(data_dir, download, progress)
    classes, batches = read_batches(source)
    test_rows, test_labels = batches.pop(TEST_BATCH)
    x_test = to_images(test_rows, channel_order)
    del test_rows
    labels = np.concatenate([batches[name][1] for name in TRAIN_BATCHES])
    rows = np.concatenate([batches.pop(name)[0] for name in TRAIN_BATCHES])
    # Split the indices, then copy each image once into its split: the same result as
    # train_test_split on the arrays, without holding the 50,000 images three times over
    # (rows, reordered images, split copies); the peak of loading is about 260 MB lower.
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=val_fraction,
                                          random_state=split_seed, stratify=labels if stratify else None)
    x_train, x_val = (_images_at(rows, idx, channel_order) for idx in (train_idx, val_idx))
    return CifarData(x_train, labels[train_idx], x_val, labels[val_idx], x_test, test_labels,
                     classes, source)


def _images_at(rows: np.ndarray, index: np.ndarray, channel_order: ChannelOrder,
               chunk: int = 4096) -> np.ndarray:
    """``to_images(rows[index])``, converted a chunk at a time into one preallocated array."""
    out = np.empty((len(index), 32, 32, 3), dtype=np.uint8)
    for start in range(0, len(index), chunk):
        part = index[start:start + chunk]
        out[start:start + len(part)] = to_images(rows[part], channel_order)
    return out


def subset(data: CifarData, n_train: int, seed: int = 0) -> CifarData:
    """The same data with ``n_train`` training images and proportionally fewer others."""
    rng = np.random.default_rng(seed)

    def take(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n >= len(y):
            return x, y
        idx = np.sort(rng.choice(len(y), n, replace=False))
        return x[idx], y[idx]

    share = min(1.0, n_train / len(data.y_train))
    x_tr, y_tr = take(data.x_train, data.y_train, n_train)
    x_va, y_va = take(data.x_val, data.y_val, max(1, round(len(data.y_val) * share)))
    x_te, y_te = take(data.x_test, data.y_test, max(1, round(len(data.y_test) * share)))
    return CifarData(x_tr, y_tr, x_va, y_va, x_te, y_te, data.classes, data.source)
