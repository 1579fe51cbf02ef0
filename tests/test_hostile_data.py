"""Hostile datasets and weights: archives, pickled batches and checkpoints built to attack the
reader. Each must end in DataError (or RunError for weights) and nothing else: no code run, no
file extracted or written outside the data folder, a good dataset already installed left
byte-identical, no staging folders left behind, and bounded time and memory.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import batch_dict, dumps, make_archive, synthetic_images, write_cifar
from safetensors.torch import save_file

from cifar_core import data as cdata
from cifar_core import runs
from cifar_core.config import ModelConfig, TrainConfig
from cifar_core.data import (
    BATCH_FILES,
    FOLDER_NAME,
    META_FILE,
    DataError,
    install_archive,
    load_cifar10,
    parse_batch,
    parse_meta,
    read_archive,
    safe_unpickle,
)
from cifar_core.model import build_model
from cifar_core.record import RunConfig, RunError
from cifar_core.runs import RunWriter, load_run

TINY = ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.25), dense_units=(16,),
                   dense_dropout=(0.25,))


# --- building archives by hand -----------------------------------------------------------

def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "",
           fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 5  # /dev/zero
    return info.tobuf(format=fmt)


def padded(payload: bytes) -> bytes:
    return payload + b"\x00" * (-len(payload) % tarfile.BLOCKSIZE)


def member(name: str, payload: bytes) -> bytes:
    return header(name, len(payload)) + padded(payload)


def sparse_member(name: str, real_size: int, stored: bytes = b"\x01" * 512) -> bytes:
    """An old-GNU sparse file: ``stored`` bytes in the archive that read as ``real_size`` bytes."""
    block = bytearray(header(name, len(stored), tarfile.GNUTYPE_SPARSE))
    block[386:398] = b"%011o\x00" % 0  # one data region: offset 0 ...
    block[398:410] = b"%011o\x00" % len(stored)  # ... of len(stored) bytes
    block[482] = 0  # no extension headers
    block[483:495] = b"%011o\x00" % real_size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block) + padded(stored)


def tar_gz(*blocks: bytes) -> bytes:
    return gzip.compress(b"".join(blocks) + b"\x00" * (2 * tarfile.BLOCKSIZE), compresslevel=1)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = write_cifar(tmp_path_factory.mktemp("good"), per_batch=10)
    return {name: (folder / name).read_bytes() for name in BATCH_FILES}


def good_members(files: dict[str, bytes], skip: tuple[str, ...] = ()) -> list[bytes]:
    return [member(f"{FOLDER_NAME}/{name}", raw) for name, raw in files.items() if name not in skip]


def snapshot(path: Path) -> dict[str, str]:
    """Every entry under ``path`` (links not followed) with a digest of its content."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = f"link->{os.readlink(p)}"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture()
def installed(good_files: dict[str, bytes], tmp_path: Path) -> Iterator[Path]:
    """A good dataset installed at tmp_path/outer/data; the test's attack must leave all of
    tmp_path exactly as it was, with no staging folders and no marker file."""
    dest = tmp_path / "outer" / "data"
    install_archive(tar_gz(*good_members(good_files)), dest)
    (tmp_path / "outer" / "neighbour.txt").write_text("do not touch")
    before = snapshot(tmp_path)
    yield dest
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in dest.iterdir()) == [FOLDER_NAME]
    assert not Path("/tmp/cifar-lab-pwned").exists()


def attack(archive: bytes, dest: Path, pattern: str) -> str:
    started = time.process_time()
    with pytest.raises(DataError) as info:
        install_archive(archive, dest)
    assert time.process_time() - started < 5
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    assert pattern.lower() in message.lower(), message
    return message


# --- archives that are not archives -------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda files: b"",
    lambda files: b"definitely not gzip" * 50,
    lambda files: b"PK\x03\x04" + b"\x00" * 200,
    lambda files: b"".join(good_members(files)) + b"\x00" * 1024,  # a good tar, not gzipped
    lambda files: gzip.compress(b"a gzipped text file, not a tar\n" * 100),
    lambda files: tar_gz(*good_members(files))[:20],
    lambda files: tar_gz(*good_members(files))[:5000],
    lambda files: tar_gz(*good_members(files))[:-10],
    lambda files: bytearray(tar_gz(*good_members(files))[:-4]) + b"\xff\xff\xff\xff",  # size
], ids=["empty", "text", "zip", "plain-tar", "gzipped-text", "gzip-header-only", "cut-early",
        "cut-late", "bad-trailer"])
def test_unreadable_archives_are_refused(make: Callable, good_files: dict[str, bytes],
                                         installed: Path) -> None:
    attack(bytes(make(good_files)), installed, "")


def test_flipped_bytes_in_the_compressed_stream_are_refused(good_files: dict[str, bytes],
                                                            installed: Path) -> None:
    archive = bytearray(tar_gz(*good_members(good_files)))
    for i in range(100, len(archive) - 100, len(archive) // 7):
        archive[i] ^= 0x55
    attack(bytes(archive), installed, "")


# --- paths and member kinds ---------------------------------------------------------------

@pytest.mark.parametrize("evil", [
    "../escaped", "../../outer/neighbour.txt", "/tmp/cifar-lab-pwned", f"{FOLDER_NAME}/../escaped",
    f"{FOLDER_NAME}/../../neighbour.txt", f"../{FOLDER_NAME}/data_batch_1",
    f"./{FOLDER_NAME}/../../escaped", f"{FOLDER_NAME}/sub/data_batch_1", f"/{FOLDER_NAME}/data_batch_1",
    f"{FOLDER_NAME}//data_batch_1", f"./../{FOLDER_NAME}/data_batch_1", f".//{FOLDER_NAME}/data_batch_1",
    f"./{FOLDER_NAME}/./data_batch_1", f"./{FOLDER_NAME}/../data_batch_1", f"../.{FOLDER_NAME}/data_batch_1",
    f"./.{FOLDER_NAME}/data_batch_1", f"./{FOLDER_NAME}/sub/data_batch_1",
])
def test_path_traversal_members_are_never_written(evil: str, good_files: dict[str, bytes],
                                                  installed: Path) -> None:
    # Alone (with the real batches missing) the archive is refused ...
    attack(tar_gz(member(evil, b"gotcha")), installed, "missing")
    # ... and next to the good batches the evil member is ignored: the install succeeds with the
    # good data only, so compare the result with a plain good install instead of the fixture.
    fresh = installed.parent.parent / "fresh"
    install_archive(tar_gz(member(evil, b"gotcha"), *good_members(good_files)), fresh)
    assert {p.name: p.read_bytes() for p in (fresh / FOLDER_NAME).iterdir()} == good_files
    assert sorted(p.name for p in fresh.iterdir()) == [FOLDER_NAME]
    for p in fresh.parent.rglob("*"):
        assert p.is_dir() or p.read_bytes() != b"gotcha"
    shutil.rmtree(fresh)


LINK_KINDS = {
    "symlink-to-passwd": (tarfile.SYMTYPE, "/etc/passwd"),
    "symlink-relative": (tarfile.SYMTYPE, "../../outer/neighbour.txt"),
    "hardlink": (tarfile.LNKTYPE, "/etc/passwd"),
    "hardlink-to-member": (tarfile.LNKTYPE, f"{FOLDER_NAME}/data_batch_2"),
    "char-device": (tarfile.CHRTYPE, ""),
    "block-device": (tarfile.BLKTYPE, ""),
    "fifo": (tarfile.FIFOTYPE, ""),
    "directory": (tarfile.DIRTYPE, ""),
    "contiguous-but-link": (tarfile.SYMTYPE, "data_batch_2"),
}


@pytest.mark.parametrize("kind", list(LINK_KINDS))
@pytest.mark.parametrize("target", ["data_batch_1", "test_batch", META_FILE])
def test_batch_that_is_not_a_regular_file_is_refused(kind: str, target: str, good_files: dict[str, bytes],
                                                     installed: Path) -> None:
    code, link = LINK_KINDS[kind]
    evil = header(f"{FOLDER_NAME}/{target}", 0, code, link)
    attack(tar_gz(evil, *good_members(good_files, skip=(target,))), installed, "not a regular file")


@pytest.mark.parametrize("kind", ["symlink-to-passwd", "char-device", "fifo"])
def test_links_and_devices_elsewhere_in_the_archive_are_ignored(kind: str, good_files: dict[str, bytes],
                                                                tmp_path: Path) -> None:
    code, link = LINK_KINDS[kind]
    evil = [header(FOLDER_NAME, 0, code, link), header(f"{FOLDER_NAME}/readme", 0, code, link),
            header("pwn", 0, code, link)]
    files = read_archive(tar_gz(*evil[1:], *good_members(good_files)))
    assert files == good_files
    # A link in place of the folder itself: the batches under it are still read from the
    # archive, never through the link.
    assert read_archive(tar_gz(evil[0], *good_members(good_files))) == good_files


def test_later_duplicate_cannot_sneak_in_a_bad_batch(good_files: dict[str, bytes], installed: Path,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = member(f"{FOLDER_NAME}/data_batch_3", pickle.dumps(RunsShell(marker), protocol=2))
    attack(tar_gz(*good_members(good_files), evil), installed, "refused")
    assert not marker.exists()


# --- sizes, counts and bombs ---------------------------------------------------------------

def test_member_declaring_a_huge_size_is_refused_before_reading(good_files: dict[str, bytes],
                                                                installed: Path) -> None:
    evil = header(f"{FOLDER_NAME}/data_batch_1", 2**40)  # 1 TB declared, no data follows
    attack(tar_gz(evil), installed, "too large")


def test_sparse_member_is_judged_by_its_real_size(good_files: dict[str, bytes], installed: Path) -> None:
    evil = sparse_member(f"{FOLDER_NAME}/data_batch_1", 10 * cdata.MAX_MEMBER_BYTES)
    message = attack(tar_gz(evil, *good_members(good_files, skip=("data_batch_1",))), installed,
                     "too large")
    assert str(10 * cdata.MAX_MEMBER_BYTES) in message


def test_oversized_real_member_with_a_lowered_cap(good_files: dict[str, bytes], installed: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cdata, "MAX_MEMBER_BYTES", 2000)
    attack(tar_gz(*good_members(good_files)), installed, "too large")


def test_compressed_archive_over_the_cap_is_refused_unopened(good_files: dict[str, bytes], installed: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cdata, "MAX_ARCHIVE_BYTES", 1000)
    attack(tar_gz(*good_members(good_files)), installed, "larger than")
    path = installed.parent / "upload.tar.gz"
    path.write_bytes(tar_gz(*good_members(good_files)))
    try:
        with pytest.raises(DataError, match="larger than"):
            read_archive(path)
    finally:
        path.unlink()


@pytest.mark.parametrize("kind", ["skipped-member", "pax-header", "gnu-longname", "batch-member"])
def test_gzip_bomb_stops_at_the_unpacked_cap(kind: str, good_files: dict[str, bytes], installed: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Several MB of zeros that tar would unpack (or, for pax and long-name headers, read whole
    into memory) are cut off at MAX_UNPACKED_BYTES, lowered here so the file stays small."""
    monkeypatch.setattr(cdata, "MAX_UNPACKED_BYTES", 1 << 20)
    zeros = b"\x00" * (4 << 20)
    code, name = {"skipped-member": (tarfile.REGTYPE, "readme.html"),
                  "pax-header": (tarfile.XHDTYPE, "././@PaxHeader"),
                  "gnu-longname": (tarfile.GNUTYPE_LONGNAME, "././@LongLink"),
                  "batch-member": (tarfile.REGTYPE, f"{FOLDER_NAME}/data_batch_1")}[kind]
    bomb = header(name, len(zeros), code, fmt=tarfile.USTAR_FORMAT if code == tarfile.XHDTYPE
                  else tarfile.GNU_FORMAT) + zeros
    attack(tar_gz(bomb, *good_members(good_files)), installed, "unpacks to more than 1 MB")


def test_real_cap_stops_a_big_bomb_quickly(good_files: dict[str, bytes], installed: Path) -> None:
    """A 600 MB skipped member (600 KB compressed) is refused at 512 MB, not unpacked to the end."""
    size = 600 << 20
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    chunk = b"\x00" * (1 << 20)
    body = [packer.compress(header("readme.html", size))]
    body += [packer.compress(chunk) for _ in range(size >> 20)]
    body.append(packer.compress(b"".join(good_members(good_files)) + b"\x00" * 1024) + packer.flush())
    attack(b"".join(body), installed, "unpacks to more than 512 MB")


def test_too_many_members_are_refused(good_files: dict[str, bytes], installed: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cdata, "MAX_MEMBERS", 20)
    filler = [member(f"junk/{i}", b"") for i in range(30)]
    attack(tar_gz(*filler, *good_members(good_files)), installed, "more than 20 entries")


@pytest.mark.parametrize("missing", list(BATCH_FILES))
def test_archive_missing_a_batch_is_refused(missing: str, good_files: dict[str, bytes],
                                            installed: Path) -> None:
    message = attack(tar_gz(*good_members(good_files, skip=(missing,))), installed, "missing")
    assert missing in message


# --- pickles that try to run code ------------------------------------------------------------

class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsExec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def hand_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles written opcode by opcode, each reaching for a different way to call code."""
    cmd = f"touch {marker}".encode()
    py = f"open({str(marker)!r}, 'w').close()".encode()
    return {
        "GLOBAL posix.system": b"cposix\nsystem\n(V" + cmd + b"\ntR.",
        "GLOBAL os.system": b"cos\nsystem\n(V" + cmd + b"\ntR.",
        "GLOBAL builtins.eval": b"cbuiltins\neval\n(V" + py + b"\ntR.",
        "GLOBAL __builtin__.exec (py2)": b"c__builtin__\nexec\n(V" + py + b"\ntR.",
        "INST subprocess.call": b"(V" + cmd.split()[0] + b"\nV" + cmd.split()[1] + b"\nisubprocess\ncall\n.",
        "STACK_GLOBAL": (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c" + bytes([len(cmd)])
                         + cmd + b"\x94\x85\x94R\x94."),
        "OBJ": b"\x80\x02(cos\nsystem\nV" + cmd + b"\no.",
        "EXT1 via copyreg": b"\x80\x02\x82\x01V" + cmd + b"\n\x85R.",
        "numpy.load": b"cnumpy\nload\n(V" + str(marker).encode() + b"\ntR.",
        "_codecs.encode as a codec call": b"c_codecs\nencode\n(Vx\nVrot13\ntR.",
        "BUILD __setstate__ via reduce": b"\x80\x02cnumpy\nndarray\n)R}(V__class__\ncos\nsystem\nsb.",
        "numpy ctypes": b"cnumpy.ctypeslib\nload_library\n(Vlibc\nV/lib\ntR.",
    }


@pytest.mark.parametrize("flavour", ["py2", "py3"])
@pytest.mark.parametrize("payload", [RunsShell, RunsExec])
@pytest.mark.parametrize("where", ["batch", "labels", "meta"])
def test_reduce_payloads_never_run(flavour: str, payload: type, where: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rows, labels = synthetic_images(10, seed=2)
    obj = {"batch": payload(marker), "labels": batch_dict(rows, labels, "x") | {b"labels": payload(marker)},
           "meta": {b"label_names": [payload(marker)] * 10}}[where]
    parse = parse_meta if where == "meta" else parse_batch
    with pytest.raises(DataError, match="refused"):
        parse(dumps(obj, flavour), "evil")
    assert not marker.exists()


@pytest.mark.parametrize("case", list(hand_pickles(Path("/x"))))
def test_hand_written_payloads_never_run(case: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    raw = hand_pickles(marker)[case]
    with pytest.raises(DataError):
        parse_batch(raw, "evil")
    with pytest.raises(DataError):
        safe_unpickle(raw, "evil")
    assert not marker.exists()


def test_the_allow_list_is_only_numpy_reconstruction() -> None:
    allowed = set(cdata._NumpyOnlyUnpickler._allowed)
    assert {module.split(".")[0] for module, _ in allowed} <= {"numpy", "_codecs"}
    assert {name for _, name in allowed} <= {"_reconstruct", "scalar", "_frombuffer", "ndarray",
                                             "dtype", "encode"}


def test_codecs_encode_only_does_latin1() -> None:
    raw = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match="refused encoding"):
        safe_unpickle(raw, "codec")


# --- forged contents ------------------------------------------------------------------------

def forged_batches() -> dict[str, tuple[object, str]]:
    rows, labels = synthetic_images(10, seed=5)
    good = batch_dict(rows, labels, "forged")
    listed = [int(v) for v in labels]
    nested = [0] * 10
    for _ in range(9):  # 10**10 labels once numpy expands the shared lists
        nested = [nested] * 10
    return {
        "rows do not match labels": (good | {b"data": rows[:7]}, "labels"),
        "width 3071": (good | {b"data": rows[:, :-1].copy()}, "shape"),
        "one-dimensional": (good | {b"data": rows.reshape(-1)}, "shape"),
        "image-shaped": (good | {b"data": rows.reshape(10, 3, 32, 32)}, "shape"),
        "no images": (good | {b"data": rows[:0], b"labels": np.zeros(0, np.int64)}, "no images"),
        "float64 data": (good | {b"data": rows.astype(np.float64)}, "uint8"),
        "uint16 data": (good | {b"data": rows.astype(np.uint16)}, "uint16"),
        "big-endian uint16 data": (good | {b"data": rows.astype(">u2")}, "uint8"),
        "int8 data": (good | {b"data": rows.astype(np.int8)}, "uint8"),
        "bool data": (good | {b"data": rows > 100}, "uint8"),
        "object data": (good | {b"data": rows.astype(object)}, "uint8"),
        "structured data": (good | {b"data": np.zeros(10, [("a", "u1", (3072,))])}, "uint8"),
        "bytes as data": (good | {b"data": rows.tobytes()}, "uint8"),
        "label 10": (good | {b"labels": [10] + listed[1:]}, "0..9"),
        "label 255": (good | {b"labels": np.array([255] + listed[1:], np.uint8)}, "0..9"),
        "label -1": (good | {b"labels": [-1] + listed[1:]}, "0..9"),
        "label 2**70": (good | {b"labels": [2**70] + listed[1:]}, "labels"),
        "too many labels": (good | {b"labels": listed + [0]}, "labels"),
        "too few labels": (good | {b"labels": listed[:-1]}, "labels"),
        "float labels": (good | {b"labels": [0.0] * 10}, "labels"),
        "float label array": (good | {b"labels": np.zeros(10)}, "labels"),
        "bool labels": (good | {b"labels": [True] * 10}, "labels"),
        "string labels": (good | {b"labels": [b"cat"] * 10}, "labels"),
        "labels as text": (good | {b"labels": b"0123456789"}, "labels"),
        "labels as a dict": (good | {b"labels": dict.fromkeys(range(10), 0)}, "labels"),
        "2-D label array": (good | {b"labels": np.zeros((10, 1), np.int64)}, "labels"),
        "nested label lists": (good | {b"labels": nested}, "labels"),
        "no labels": ({b"data": rows}, "labels"),
        "no data": ({b"labels": listed}, "data"),
        "a list": ([rows, listed], "dict"),
        "a tuple": ((rows, listed), "dict"),
        "a set": ({1, 2, 3}, "dict|refused"),  # py2 pickles call builtins.set
        "an int": (42, "dict"),
        "None": (None, "dict"),
        "a bare array": (rows, "dict"),
        "a string": ("data", "dict"),
    }


@pytest.mark.parametrize("case, flavour", [
    (case, flavour) for case in forged_batches() for flavour in ("py2", "py3")
    if not (flavour == "py2" and case == "structured data")])  # the py2 fixture pickler can't
def test_forged_batches_are_refused_with_their_name(case: str, flavour: str) -> None:
    batch, expected = forged_batches()[case]
    started = time.process_time()
    with pytest.raises(DataError, match=expected) as info:
        parse_batch(dumps(batch, flavour), "data_batch_4")
    assert str(info.value).startswith("data_batch_4: ")
    assert time.process_time() - started < 2


@pytest.mark.parametrize("names, expected", [
    ([b"a"] * 9, "10 class names"),
    (b"0123456789", "label_names"),
    ("0123456789", "label_names"),
    (list(range(10)), "class names"),
    ([b"x" * 1000] * 10, "class names"),
    ([b""] * 10, "class names"),
    ([b"\xff\xfe"] * 10, "label_names"),
    (None, "label_names"),
])
def test_forged_meta_is_refused(names: object, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        parse_meta(pickle.dumps({b"label_names": names}), META_FILE)


class ForgedArray:
    """Pickles as numpy's own array reconstruction, but with a shape its 3 bytes cannot fill."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype("u1"), False, b"abc")


def huge_length_pickles() -> dict[str, bytes]:
    return {
        "BINBYTES8 2**62": b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.",
        "BINUNICODE8 2**62": b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"abc.",
        "BINBYTES 2**31": b"\x80\x03B" + struct.pack("<I", 2**31 - 1) + b"abc.",
        "LONG4 2**31": b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01.",
        "LONG decimal 10**5 digits": b"L" + b"9" * 100_000 + b"L\n.",
        "FRAME 2**62": b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"N.",
        "memo GET missing": b"\x80\x02h\x07.",
        # C's unpickler sizes its memo table from the index: 2**27 slots would take 2 GB.
        "LONG_BINPUT 2**27": b"\x80\x02]r" + struct.pack("<I", 2**27) + b".",
        "PUT 2**27 (protocol 0)": b"(lp134217728\n.",
        "LONG_BINGET 2**32-1": b"\x80\x02j\xff\xff\xff\xff.",
        "array claiming 2**40 bytes": pickle.dumps({b"data": ForgedArray((2**40 // 3072, 3072)),
                                                    b"labels": [0]}, protocol=2),
        "array claiming a negative shape": pickle.dumps({b"data": ForgedArray((-1, 3072)), b"labels": [0]}),
        "200,000 nested lists": b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".",
        "unterminated": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94(",
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
    }


@pytest.mark.parametrize("case", list(huge_length_pickles()))
def test_huge_or_broken_lengths_are_refused_quickly(case: str) -> None:
    raw = huge_length_pickles()[case]
    with PeakMemory() as peak:
        with pytest.raises(DataError):
            parse_batch(raw, "data_batch_2")
    assert peak.seconds < 2 and peak.grown_mb < 100


class PeakMemory:
    """CPU time (immune to a busy machine) and growth of this process's peak resident memory
    over a block (Linux only; elsewhere the growth reads 0)."""

    def __enter__(self) -> PeakMemory:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak
            self.base = self._peak()
        except OSError:
            self.base = None
        self.started = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.process_time() - self.started
        self.grown_mb = self._peak() - self.base if self.base is not None else 0

    @staticmethod
    def _peak() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmHWM:"))


def test_a_real_batch_fixture_pickle_is_what_the_forgeries_start_from() -> None:
    rows, labels = synthetic_images(10, seed=5)
    data, got = parse_batch(dumps(batch_dict(rows, labels, "ok"), "py3"), "ok")
    np.testing.assert_array_equal(data, rows)
    np.testing.assert_array_equal(got, labels)
    opcodes = {op.name for op, _, _ in pickletools.genops(dumps(batch_dict(rows, labels, "x"), "py2"))}
    assert "GLOBAL" in opcodes  # the py2 flavour really names its numpy functions


# --- a bad dataset never replaces a good one ----------------------------------------------

def bad_archives(files: dict[str, bytes], marker: Path) -> dict[str, bytes]:
    rows, labels = synthetic_images(10, seed=1)
    swap = lambda name, raw: tar_gz(*good_members(files, skip=(name,)),  # noqa: E731
                                    member(f"{FOLDER_NAME}/{name}", raw))
    return {
        "code in a batch": swap("data_batch_2", pickle.dumps(RunsShell(marker), protocol=2)),
        "float batch": swap("data_batch_5", dumps(batch_dict(rows.astype(np.float64), labels, "f"), "py3")),
        "label 12": swap("test_batch", dumps(batch_dict(rows, labels + 12, "l"), "py3")),
        "short meta": swap(META_FILE, pickle.dumps({b"label_names": [b"a"]})),
        "truncated batch": swap("data_batch_1", files["data_batch_1"][:500]),
        "missing test batch": tar_gz(*good_members(files, skip=("test_batch",))),
        "symlinked batch": tar_gz(*good_members(files, skip=("data_batch_3",)),
                                  header(f"{FOLDER_NAME}/data_batch_3", 0, tarfile.SYMTYPE, "/etc/passwd")),
        "not gzip": b"nope" * 100,
    }


@pytest.mark.parametrize("case", list(bad_archives({n: b"" for n in BATCH_FILES}, Path("/x"))))
def test_bad_archive_leaves_the_installed_dataset_byte_identical(case: str, good_files: dict[str, bytes],
                                                                installed: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attack(bad_archives(good_files, marker)[case], installed, "")
    assert not marker.exists()
    # The data still loads, and is the good data.
    assert load_cifar10(installed, download=False).x_test.shape == (10, 32, 32, 3)


def test_install_of_a_bad_archive_into_an_empty_place_creates_nothing(good_files: dict[str, bytes],
                                                                      tmp_path: Path) -> None:
    dest = tmp_path / "fresh" / "data"
    with pytest.raises(DataError):
        install_archive(bad_archives(good_files, tmp_path / "m")["label 12"], dest)
    assert not (tmp_path / "fresh").exists()


def test_failed_swap_puts_the_old_dataset_back(good_files: dict[str, bytes], installed: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(src).name.startswith(".incoming-"):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(cdata.os, "replace", replace)
    different = {**good_files, "test_batch": dumps(batch_dict(*synthetic_images(10, seed=77), "t"), "py3")}
    attack(tar_gz(*good_members(different)), installed, "cannot install")


def test_disk_full_while_staging_keeps_the_old_dataset(good_files: dict[str, bytes], installed: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = Path.write_bytes
    calls = []

    def write_bytes(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    attack(tar_gz(*good_members(good_files)), installed, "No space left on device")


def test_unwritable_destination_is_a_data_error(good_files: dict[str, bytes], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(DataError, match="cannot write"):
        install_archive(tar_gz(*good_members(good_files)), blocker / "data")
    assert blocker.read_text() == "in the way"


def test_good_archive_replaces_a_good_dataset_without_leftovers(good_files: dict[str, bytes],
                                                                tmp_path: Path) -> None:
    dest = tmp_path / "data"
    install_archive(tar_gz(*good_members(good_files)), dest)
    other = {**good_files, "test_batch": dumps(batch_dict(*synthetic_images(10, seed=78), "t"), "py3")}
    install_archive(tar_gz(*good_members(other)), dest)
    assert sorted(p.name for p in dest.iterdir()) == [FOLDER_NAME]
    assert {p.name: p.read_bytes() for p in (dest / FOLDER_NAME).iterdir()} == other


def test_archive_made_by_tarfile_from_a_folder_still_installs(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path / "src", per_batch=10)
    archive = make_archive(folder, tmp_path / "cifar-10-python.tar.gz")
    assert install_archive(archive, tmp_path / "dest") == tmp_path / "dest" / FOLDER_NAME


def test_members_under_a_leading_dot_slash_install(good_files: dict[str, bytes], tmp_path: Path) -> None:
    # `tar czf x.tar.gz ./cifar-10-batches-py` names every member ./cifar-10-batches-py/...
    archive = tar_gz(header(f"./{FOLDER_NAME}", 0, tarfile.DIRTYPE),
                     *(member(f"./{FOLDER_NAME}/{name}", raw) for name, raw in good_files.items()))
    assert read_archive(archive) == good_files
    assert install_archive(archive, tmp_path / "dest") == tmp_path / "dest" / FOLDER_NAME
    assert {p.name: p.read_bytes() for p in (tmp_path / "dest" / FOLDER_NAME).iterdir()} == good_files


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command on this machine")
@pytest.mark.parametrize("source", [f"./{FOLDER_NAME}", FOLDER_NAME])
def test_archive_made_by_the_tar_command_installs(source: str, good_files: dict[str, bytes],
                                                  tmp_path: Path) -> None:
    src = tmp_path / "src" / FOLDER_NAME
    src.mkdir(parents=True)
    for name, raw in good_files.items():
        (src / name).write_bytes(raw)
    archive = tmp_path / "x.tar.gz"
    subprocess.run(["tar", "czf", str(archive), source], cwd=tmp_path / "src", check=True)
    with tarfile.open(archive) as tar:  # what the command really wrote
        assert all(n.startswith(source) for n in tar.getnames())
    dest = tmp_path / "dest"
    assert install_archive(archive, dest) == dest / FOLDER_NAME
    assert load_cifar10(dest, download=False).x_test.shape == (10, 32, 32, 3)


# --- folders on disk ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "directory", "oversized"])
def test_odd_files_in_a_batch_folder_are_refused_without_hanging(kind: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cifar(tmp_path, per_batch=10)
    target = folder / "data_batch_2"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink-to-dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"\x00" * 50_000)  # the other batches are 31 KB
        monkeypatch.setattr(cdata, "MAX_MEMBER_BYTES", 40_000)
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(tmp_path, download=False)


# --- weights --------------------------------------------------------------------------------

class TorchPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def run_folder(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    writer = RunWriter(path, RunConfig(TINY, TrainConfig(epochs=1, device="cpu")))
    torch.manual_seed(0)
    writer.save_weights(build_model(TINY).state_dict())
    writer.finish("finished")
    load_run(path).load_model()  # the untouched folder loads
    return path


@pytest.fixture()
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be used on a run's weights")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def weights_attacks(run: Path, marker: Path) -> dict[str, Callable[[Path], None]]:
    state = build_model(TINY).state_dict()

    def torch_pickle(path: Path) -> None:
        torch.save({**state, "x": TorchPayload(marker)}, path)

    def legacy_pickle(path: Path) -> None:
        torch.save({**state, "x": TorchPayload(marker)}, path, _use_new_zipfile_serialization=False)

    def plain_pickle(path: Path) -> None:
        path.write_bytes(pickle.dumps(TorchPayload(marker)))

    def header_bytes(path: Path, head: bytes, tail: bytes = b"") -> None:
        path.write_bytes(struct.pack("<Q", len(head)) + head + tail)

    def wrong_shapes(path: Path) -> None:
        save_file({k: torch.zeros(3) for k in state}, str(path))

    def wrong_names(path: Path) -> None:
        save_file({f"evil.{k}": v for k, v in state.items()}, str(path))

    def directory(path: Path) -> None:
        path.mkdir()

    return {
        "torch zip pickle": torch_pickle,
        "torch legacy pickle": legacy_pickle,
        "plain pickle": plain_pickle,
        "empty": lambda p: p.write_bytes(b""),
        "garbage": lambda p: p.write_bytes(os.urandom(4096)),
        "header claims 2**62 bytes": lambda p: p.write_bytes(struct.pack("<Q", 2**62) + b"{}"),
        "header not json": lambda p: header_bytes(p, b"{not json"),
        "offsets past the end": lambda p: header_bytes(
            p, b'{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}', b"\x00" * 16),
        "shape and size disagree": lambda p: header_bytes(
            p, b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}', b"\x00" * 12),
        "unknown dtype": lambda p: header_bytes(
            p, b'{"a":{"dtype":"PICKLE","shape":[1],"data_offsets":[0,1]}}', b"\x00"),
        "wrong shapes": wrong_shapes,
        "wrong names": wrong_names,
        "a directory": directory,
        "a symlink to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
    }


@pytest.mark.parametrize("case", list(weights_attacks(Path("/x"), Path("/x"))))
def test_hostile_weights_are_refused_never_unpickled(case: str, run_folder: Path, tmp_path: Path,
                                                     no_torch_load: None) -> None:
    marker = tmp_path / "pwned"
    weights = run_folder / runs.WEIGHTS_FILE
    weights.unlink()
    weights_attacks(run_folder, marker)[case](weights)
    run = load_run(run_folder)  # the folder itself still reads
    started = time.process_time()
    with pytest.raises(RunError) as info:
        run.load_model()
    assert time.process_time() - started < 5
    assert str(info.value).startswith(str(run_folder)) and info.value.__cause__ is None
    assert not marker.exists()
