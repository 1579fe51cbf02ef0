"""Reading CIFAR-10: both pickle flavours, every way of pointing at the data, the split,
and everything a hostile or broken dataset can throw at the reader."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, batch_dict, dumps, make_archive, synthetic_images, write_cifar
from sklearn.model_selection import train_test_split

from cifar_core import data as cdata
from cifar_core.data import (
    ARCHIVE_NAME,
    ARCHIVE_URL,
    FOLDER_NAME,
    DataError,
    install_archive,
    load_cifar10,
    parse_batch,
    read_archive,
    subset,
    to_images,
)

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def reference_rows(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch read with plain pickle: trusted here only because the test wrote the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core is a deprecated alias under numpy 2
        batch = pickle.loads((folder / name).read_bytes(), encoding="bytes")
    return np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])


def reference_images(rows: np.ndarray) -> np.ndarray:
    """Planar rows -> (N, 32, 32, 3) by explicit indexing: pixel (y, x, c) is row[c*1024 + y*32 + x]."""
    y, x, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return rows[:, c * 1024 + y * 32 + x]


def assert_same_data(a: cdata.CifarData, b: cdata.CifarData) -> None:
    for name in ("train", "val", "test"):
        xa, ya = a.split(name)
        xb, yb = b.split(name)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert a.classes == b.classes


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_cifar(root, per_batch=40)
    return root


# --- pickle flavours -------------------------------------------------------------

def test_py2_fixture_really_is_python2_style(tmp_path: Path) -> None:
    py2 = write_cifar(tmp_path / "py2", per_batch=10, flavour="py2")
    py3 = write_cifar(tmp_path / "py3", per_batch=10, flavour="py3")
    raw2, raw3 = (py2 / "data_batch_1").read_bytes(), (py3 / "data_batch_1").read_bytes()
    assert raw2[:2] == b"\x80\x02" and raw3[:2] == b"\x80\x04"
    assert b"numpy.core.multiarray" in raw2 and b"numpy._core" not in raw2
    assert pickle.BINSTRING in raw2 or pickle.SHORT_BINSTRING in raw2


def test_both_pickle_flavours_read_identically(tmp_path: Path) -> None:
    a = load_cifar10(write_cifar(tmp_path / "py2", per_batch=30, flavour="py2", seed=5).parent,
                     download=False)
    b = load_cifar10(write_cifar(tmp_path / "py3", per_batch=30, flavour="py3", seed=5).parent,
                     download=False)
    assert_same_data(a, b)
    assert len(a.y_train) == 120


@pytest.mark.parametrize("flavour", ["py2", "py3"])
def test_parse_batch_matches_plain_pickle(tmp_path: Path, flavour: str) -> None:
    folder = write_cifar(tmp_path, per_batch=25, flavour=flavour)
    rows, labels = parse_batch((folder / "data_batch_2").read_bytes(), "data_batch_2")
    ref_rows, ref_labels = reference_rows(folder, "data_batch_2")
    assert rows.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(labels, ref_labels)


def test_class_names_come_from_batches_meta(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path, per_batch=10)
    names = [f"thing-{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(dumps({b"label_names": [n.encode() for n in names]}, "py2"))
    assert load_cifar10(tmp_path, download=False).classes == tuple(names)


# --- where the data is -------------------------------------------------------------

@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same dataset as an extracted folder and as a .tar.gz."""
    base = tmp_path_factory.mktemp("layouts")
    folder = write_cifar(base / "extracted", per_batch=20, seed=3)
    (base / "archived").mkdir()
    archive = make_archive(folder, base / "archived" / ARCHIVE_NAME)
    return {"parent": folder.parent, "folder": folder, "archive": archive,
            "archive_parent": archive.parent}


@pytest.mark.parametrize("how", ["argument", "env", "cwd"])
@pytest.mark.parametrize("layout", ["parent", "folder", "archive", "archive_parent"])
def test_every_location_reads_the_same_data(layouts: dict[str, Path], layout: str, how: str,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = load_cifar10(layouts["folder"], download=False)
    target = layouts[layout]
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    if how == "argument":
        got = load_cifar10(target, download=False)
    elif how == "env":
        monkeypatch.setenv("CIFAR10_DIR", str(target))
        got = load_cifar10(download=False)
    else:
        (tmp_path / "data").symlink_to(target)
        monkeypatch.chdir(tmp_path)
        got = load_cifar10(download=False)
    assert_same_data(expected, got)
    assert got.source.is_file() == ("archive" in layout)


def test_argument_beats_env_and_env_beats_cwd(layouts: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # an empty ./data: used only when nothing else is given
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "missing"))
    assert load_cifar10(layouts["parent"], download=False).source == layouts["folder"]
    with pytest.raises(DataError, match="missing"):
        load_cifar10(download=False)
    monkeypatch.setenv("CIFAR10_DIR", str(layouts["archive"]))
    assert load_cifar10(download=False).source == layouts["archive"]


# --- channel order -----------------------------------------------------------------

def test_correct_order_reproduces_the_colour_planes() -> None:
    rows, _ = synthetic_images(4, seed=1)
    images = to_images(rows, "correct")
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    for i in range(4):
        assert tuple(images[i, 0, 0]) == (rows[i, 0], rows[i, 1024], rows[i, 2048])
    np.testing.assert_array_equal(images, reference_images(rows))


def test_as_presented_is_the_raw_interleaved_reshape() -> None:
    rows, _ = synthetic_images(4, seed=2)
    np.testing.assert_array_equal(to_images(rows, "as_presented"), rows.reshape(-1, 32, 32, 3))
    assert not np.array_equal(to_images(rows, "as_presented"), to_images(rows, "correct"))


def test_load_honours_channel_order(small_root: Path) -> None:
    folder = small_root / FOLDER_NAME
    rows, labels = reference_rows(folder, "test_batch")
    wrong = load_cifar10(small_root, channel_order="as_presented", download=False)
    right = load_cifar10(small_root, download=False)
    np.testing.assert_array_equal(wrong.x_test, rows.reshape(-1, 32, 32, 3))
    np.testing.assert_array_equal(right.x_test, reference_images(rows))
    np.testing.assert_array_equal(right.y_test, labels)


def test_unknown_channel_order_is_refused() -> None:
    with pytest.raises(DataError, match="channel_order"):
        to_images(np.zeros((1, 3072), np.uint8), "bgr")  # type: ignore[arg-type]


# --- the split ----------------------------------------------------------------------

def test_split_is_80_20_and_test_untouched(small_root: Path) -> None:
    data = load_cifar10(small_root, download=False)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (160, 40, 40)
    assert data.x_train.shape == (160, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.y_train.dtype == np.int64
    rows, labels = reference_rows(small_root / FOLDER_NAME, "test_batch")
    np.testing.assert_array_equal(data.x_test, reference_images(rows))
    np.testing.assert_array_equal(data.y_test, labels)


def test_split_equals_sklearn_train_test_split(small_root: Path) -> None:
    folder = small_root / FOLDER_NAME
    parts = [reference_rows(folder, name) for name in BATCHES]
    images = reference_images(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    x_tr, x_va, y_tr, y_va = train_test_split(images, labels, test_size=0.2, random_state=42)
    data = load_cifar10(small_root, download=False)
    np.testing.assert_array_equal(data.x_train, x_tr)
    np.testing.assert_array_equal(data.x_val, x_va)
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.y_val, y_va)


def test_split_is_deterministic_and_follows_the_seed(small_root: Path) -> None:
    a = load_cifar10(small_root, download=False)
    assert_same_data(a, load_cifar10(small_root, download=False))
    other = load_cifar10(small_root, split_seed=7, download=False)
    assert not np.array_equal(a.y_val, other.y_val)
    np.testing.assert_array_equal(a.y_test, other.y_test)


def test_stratified_split_keeps_class_proportions(small_root: Path) -> None:
    # 200 training images, 20 per class: a stratified 20% holds exactly 4 of each class.
    data = load_cifar10(small_root, stratify=True, download=False)
    assert np.bincount(data.y_val, minlength=10).tolist() == [4] * 10
    assert np.bincount(data.y_train, minlength=10).tolist() == [16] * 10
    folder = small_root / FOLDER_NAME
    labels = np.concatenate([reference_rows(folder, n)[1] for n in BATCHES])
    _, y_va = train_test_split(labels, test_size=0.2, random_state=42, stratify=labels)
    np.testing.assert_array_equal(data.y_val, y_va)


def test_subset_shrinks_every_split_proportionally(small_root: Path) -> None:
    data = load_cifar10(small_root, download=False)
    small = subset(data, 80, seed=1)
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (80, 20, 20)
    again = subset(data, 80, seed=1)
    np.testing.assert_array_equal(small.x_train, again.x_train)
    # Every subset image is one of the originals, with its own label.
    index = {img.tobytes(): lab for img, lab in zip(data.x_train, data.y_train)}
    assert all(index[img.tobytes()] == lab for img, lab in zip(small.x_train, small.y_train))
    assert subset(data, 10_000).x_train is data.x_train


# --- bad input ----------------------------------------------------------------------

def test_missing_folder_says_what_to_download_and_where(tmp_path: Path) -> None:
    where = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_cifar10(where, download=False)
    message = str(err.value)
    assert ARCHIVE_URL in message and ARCHIVE_NAME in message and str(where) in message


def test_failed_download_says_what_to_download_and_where(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy on a closed local port makes the download fail at once, with or without a network.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    where = tmp_path / "offline"
    with pytest.raises(DataError) as err:
        load_cifar10(where)
    assert ARCHIVE_URL in str(err.value) and str(where) in str(err.value)
    assert not list(where.glob("*.part")) and not (where / ARCHIVE_NAME).exists()


def test_truncated_batch_is_refused(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path, per_batch=20)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, download=False)


class RunsShell:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsPython:
    """Unpickling this would run Python code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("flavour", ["py2", "py3"])
@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
@pytest.mark.parametrize("where", ["whole batch", "inside filenames"])
def test_pickle_that_runs_code_is_refused_not_run(tmp_path: Path, flavour: str, payload: type,
                                                  where: str) -> None:
    folder = write_cifar(tmp_path / "cifar", per_batch=10)
    marker = tmp_path / "pwned"
    evil = payload(marker)
    if where == "inside filenames":
        rows, labels = synthetic_images(10, seed=9)
        evil = batch_dict(rows, labels, "test_batch") | {b"filenames": [evil]}
    (folder / "test_batch").write_bytes(dumps(evil, flavour))
    with pytest.raises(DataError, match="refused"):
        load_cifar10(tmp_path / "cifar", download=False)
    assert not marker.exists()


def _bad_batches() -> dict[str, tuple[dict, str]]:
    rows, labels = synthetic_images(10, seed=4)
    good = batch_dict(rows, labels, "bad")
    return {
        "wrong width": (good | {b"data": rows[:, :1024].copy()}, "shape"),
        "three-dimensional": (good | {b"data": rows.reshape(10, 3, 1024)}, "shape"),
        "float data": (good | {b"data": rows.astype(np.float32)}, "uint8"),
        "int64 data": (good | {b"data": rows.astype(np.int64)}, "uint8"),
        "data as a list": (good | {b"data": rows.tolist()}, "uint8"),
        "label 10": (good | {b"labels": [10] + list(labels[1:])}, "0..9"),
        "label -1": (good | {b"labels": [-1] + list(labels[1:])}, "0..9"),
        "too few labels": (good | {b"labels": list(labels[:9])}, "labels"),
        "float labels": (good | {b"labels": [0.5] * 10}, "labels"),
        "no data": ({b"labels": list(labels)}, "data"),
        "not a dict": ([rows, labels], "dict"),
    }


@pytest.mark.parametrize("case", list(_bad_batches()))
def test_malformed_batch_is_refused(tmp_path: Path, case: str) -> None:
    batch, expected = _bad_batches()[case]
    folder = write_cifar(tmp_path, per_batch=10)
    (folder / "data_batch_4").write_bytes(dumps(batch, "py3"))
    with pytest.raises(DataError, match=expected) as err:
        load_cifar10(tmp_path, download=False)
    assert "data_batch_4" in str(err.value)


def test_meta_without_ten_names_is_refused(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path, per_batch=10)
    (folder / "batches.meta").write_bytes(dumps({b"label_names": [b"a", b"b"]}, "py3"))
    with pytest.raises(DataError, match="10 class names"):
        load_cifar10(tmp_path, download=False)


# --- archives -------------------------------------------------------------------------

def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return out.getvalue()


def file_member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def good_members(folder: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [file_member(f"{FOLDER_NAME}/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture()
def good_folder(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "source", per_batch=10)


def test_install_archive_installs_a_good_archive(good_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    archive = make_archive(good_folder, tmp_path / ARCHIVE_NAME)
    assert install_archive(archive, dest) == dest / FOLDER_NAME
    assert tree(dest) == {f"{FOLDER_NAME}/{k}": v for k, v in tree(good_folder).items()}
    # Replacing an installed copy leaves no staging or backup folders behind.
    install_archive(archive.read_bytes(), dest)
    assert sorted(p.name for p in dest.iterdir()) == [FOLDER_NAME]


@pytest.mark.parametrize("evil_name", [
    f"{FOLDER_NAME}/../../escaped.txt", "../escaped.txt", "/tmp/cifar-lab-escaped.txt",
    f"{FOLDER_NAME}/../{FOLDER_NAME}/data_batch_1"])
def test_traversal_members_are_ignored_and_nothing_lands_outside(good_folder: Path, tmp_path: Path,
                                                                  evil_name: str) -> None:
    dest = tmp_path / "deep" / "dest"
    archive = tar_bytes([file_member(evil_name, b"gotcha"), *good_members(good_folder)])
    before = {p for p in tmp_path.rglob("*")}
    install_archive(archive, dest)
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p == dest or dest in p.parents or p == dest.parent for p in created)
    assert tree(dest) == {f"{FOLDER_NAME}/{k}": v for k, v in tree(good_folder).items()}
    assert not Path("/tmp/cifar-lab-escaped.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_members_are_refused_and_a_good_install_survives(good_folder: Path, tmp_path: Path,
                                                               kind: bytes) -> None:
    dest = tmp_path / "dest"
    install_archive(make_archive(good_folder, tmp_path / ARCHIVE_NAME), dest)
    before = tree(dest)
    members = [m for m in good_members(good_folder) if not m[0].name.endswith("data_batch_1")]
    archive = tar_bytes([link_member(f"{FOLDER_NAME}/data_batch_1", "/etc/passwd", kind), *members])
    with pytest.raises(DataError, match="not a regular file"):
        install_archive(archive, dest)
    assert tree(dest) == before
    assert sorted(p.name for p in dest.iterdir()) == [FOLDER_NAME]


def test_bad_archive_never_replaces_a_good_dataset(good_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    install_archive(make_archive(good_folder, tmp_path / ARCHIVE_NAME), dest)
    before = tree(dest)
    members = good_members(good_folder)
    truncated = [(info, raw[: len(raw) // 3] if info.name.endswith("test_batch") else raw)
                 for info, raw in members]
    for archive in (tar_bytes(truncated), tar_bytes(members[:-1]), b"not a tarball at all",
                    tar_bytes(members)[:2000]):
        with pytest.raises(DataError):
            install_archive(archive, dest)
        assert tree(dest) == before
        assert sorted(p.name for p in dest.iterdir()) == [FOLDER_NAME]


def test_oversized_member_is_refused_before_reading(good_folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cdata, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(DataError, match="too large"):
        read_archive(tar_bytes(good_members(good_folder)))


def test_archive_with_malicious_batch_is_refused(good_folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    members = [(info, dumps(RunsShell(marker), "py2") if info.name.endswith("data_batch_2") else raw)
               for info, raw in good_members(good_folder)]
    with pytest.raises(DataError, match="refused"):
        install_archive(tar_bytes(members), tmp_path / "dest")
    assert not marker.exists() and not (tmp_path / "dest" / FOLDER_NAME).exists()


def test_the_fixture_classes_are_the_cifar_names(cifar_root: Path) -> None:
    assert load_cifar10(cifar_root, download=False).classes == tuple(CLASSES) == cdata.DEFAULT_CLASSES
