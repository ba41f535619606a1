"""Corrupt dataset files end in a DatasetError that names the file and says what to do,
never in a traceback from numpy/pickle/tarfile or in wrong data: labels out of range,
CIFAR batches with missing keys, IDX files cut inside the header, archives whose
extraction is incomplete. Files are written by hand into a tmp dir; nothing outside it is
searched and nothing is downloaded."""
import gzip
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from biossl.data import CIFAR10, CIFAR100, STL10, DatasetError, FashionMNIST, load_dataset, locate

FIX = "Delete it and download it again."


pytestmark = pytest.mark.usefixtures("isolated_data")  # tests/conftest.py


def idx(arr: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: 0, 0, type 0x08, ndim, big-endian sizes, values."""
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fmnist_test(d: Path, labels: bytes | None = None, images: bytes | None = None) -> None:
    """A 4-image Fashion-MNIST test split in ``d`` (gzip'd), with optional replacement bytes."""
    d.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    y = np.array([0, 3, 9, 1], np.uint8)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images if images is not None else idx(x)))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels if labels is not None else idx(y)))


def cifar_batch(n: int, labels, key: bytes = b"labels", data: bool = True) -> bytes:
    g = np.random.default_rng(1)
    batch = {b"batch_label": b"x", key: list(labels)}
    if data:
        batch[b"data"] = g.integers(0, 256, (n, 3072), dtype=np.uint8)
    return pickle.dumps(batch, protocol=2)


def write_cifar10(top: Path, skip: tuple[str, ...] = (), bad: dict[str, bytes] | None = None) -> None:
    top.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        if name not in skip:
            (top / name).write_bytes((bad or {}).get(name, cifar_batch(2, [0, 9])))


# --------------------------------------------------------------------------- labels out of range
def test_idx_label_out_of_range_names_the_label_file(tmp_path):
    write_fmnist_test(tmp_path, labels=idx(np.array([0, 3, 10, 1], np.uint8)))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: label 10 is outside 0..9") + ".*" + re.escape(FIX)):
        FashionMNIST().load("test", root=tmp_path, download=False)


def test_cifar10_label_out_of_range_names_the_batch(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", bad={"data_batch_3": cifar_batch(2, [0, 12])})
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: label 12 is outside 0..9") + ".*" + re.escape(FIX)):
        CIFAR10().load("train", root=tmp_path, download=False)
    assert len(CIFAR10().load("test", root=tmp_path, download=False)) == 2  # the other split is fine


def test_cifar100_negative_label_names_the_file(tmp_path):
    top = tmp_path / "cifar-100-python"
    top.mkdir()
    (top / "test").write_bytes(cifar_batch(2, [99, -1], key=b"fine_labels"))
    with pytest.raises(DatasetError, match=re.escape(f"{top / 'test'}: label -1 is outside 0..99")):
        CIFAR100().load("test", root=tmp_path, download=False)


def test_stl10_label_out_of_range_names_the_file(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    (d / "test_X.bin").write_bytes(bytes(2 * 3 * 96 * 96))
    (d / "test_y.bin").write_bytes(bytes([1, 11]))
    with pytest.raises(DatasetError, match=re.escape(f"{d / 'test_y.bin'}: labels outside 1..10")):
        STL10().load("test", root=tmp_path, download=False)


# --------------------------------------------------------------------------- CIFAR missing keys
@pytest.mark.parametrize("batch,missing", [
    (cifar_batch(2, [0, 1], data=False), "data"),
    (cifar_batch(2, [0, 1], key=b"fine_labels"), "labels"),   # a CIFAR-100 batch among CIFAR-10's
])
def test_cifar_batch_without_a_key_names_file_and_key(tmp_path, batch, missing):
    write_cifar10(tmp_path / "cifar-10-batches-py", bad={"test_batch": batch})
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: no '{missing}' entry") +
                       r".*not a batch of this dataset\. Delete it and download the official archive again"):
        CIFAR10().load("test", root=tmp_path, download=False)


def test_cifar_batch_that_is_not_a_dict(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", bad={"test_batch": pickle.dumps([1, 2, 3])})
    with pytest.raises(DatasetError, match=r"test_batch: holds a list, not a CIFAR batch dict"):
        CIFAR10().load("test", root=tmp_path, download=False)


# --------------------------------------------------------------------------- truncated IDX header
@pytest.mark.parametrize("cut", [6, 10, 15])   # inside the 3 dimension sizes of an image file
def test_idx_header_cut_inside_the_dimensions(tmp_path, cut):
    x = np.zeros((4, 28, 28), np.uint8)
    write_fmnist_test(tmp_path, images=idx(x)[:cut])
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: truncated IDX header. {FIX}")):
        FashionMNIST().load("test", root=tmp_path, download=False)


@pytest.mark.parametrize("head", [b"", b"\x00\x00", b"\x00\x00\x08"])
def test_idx_header_cut_inside_the_magic(tmp_path, head):
    write_fmnist_test(tmp_path, labels=head)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError, match=re.escape(f"{path}: not an IDX file") + ".*delete it and download it again"):
        FashionMNIST().load("test", root=tmp_path, download=False)


def test_raw_idx_cut_inside_the_header(tmp_path):
    """Not gzip'd: the same checks on a plain file."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(np.zeros((4, 28, 28), np.uint8))[:9])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 't10k-images-idx3-ubyte'}: truncated IDX header")):
        load_dataset("fashion-mnist", "test", root=tmp_path, download=False)


# --------------------------------------------------------------------------- incomplete extraction
def archive(tmp_path: Path, skip: tuple[str, ...] = ()) -> Path:
    src = tmp_path / "src"
    write_cifar10(src / "cifar-10-batches-py", skip=skip)
    (tmp_path / "data").mkdir(exist_ok=True)
    out = tmp_path / "data" / "cifar-10-python.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return out


def test_archive_missing_a_batch_names_archive_member_and_fix(tmp_path):
    arc = archive(tmp_path, skip=("data_batch_5",))
    top = locate.cache_dir("cifar10") / "cifar-10-batches-py"
    with pytest.raises(DatasetError, match=re.escape(f"{arc} was extracted to {top} but lacks "
                                                     f"cifar-10-batches-py/data_batch_5") +
                       ".*incomplete or not the official archive.*download the archive again"):
        CIFAR10().load("train", root=tmp_path / "data", download=False)


def test_extracted_cache_missing_a_file_says_to_delete_it_not_the_archive(tmp_path):
    arc = archive(tmp_path)
    assert len(CIFAR10().load("train", root=tmp_path / "data", download=False)) == 10
    top = locate.cache_dir("cifar10") / "cifar-10-batches-py"
    (top / "data_batch_2").unlink()   # e.g. removed by hand or by a cache cleaner
    with pytest.raises(DatasetError, match=re.escape(f"{top} (extracted earlier from {arc}) lacks "
                                                     f"cifar-10-batches-py/data_batch_2; delete {top}")):
        CIFAR10().load("train", root=tmp_path / "data", download=False)
    import shutil
    shutil.rmtree(top)                 # the fix the message gives works
    assert len(CIFAR10().load("train", root=tmp_path / "data", download=False)) == 10


def test_truncated_archive_leaves_no_partial_extraction(tmp_path):
    arc = archive(tmp_path)
    blob = arc.read_bytes()
    arc.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=re.escape(f"{arc}: cannot extract") + ".*truncated or corrupt.*" +
                       re.escape(FIX)):
        CIFAR10().load("test", root=tmp_path / "data", download=False)
    cache = locate.cache_dir("cifar10")
    assert not (cache / "cifar-10-batches-py").exists()          # no half-extracted directory …
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # … and no temp left
