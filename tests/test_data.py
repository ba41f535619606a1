"""Dataset sources: readers of the official formats (on small files written here in
those formats), file lookup, error messages, and downloads with a fake network."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from biossl.data import (CIFAR10, CIFAR100, STL10, DatasetError, FashionMNIST, get_spec,
                         load_dataset)
from biossl.data import fetch, locate
from biossl.data.cifar import read_cifar_batch
from biossl.data.fetch import Remote
from biossl.data.idx import read_idx
from biossl.data.stl10 import read_stl10_images
from biossl.registry import DATASETS

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("isolated_data")  # tests/conftest.py


def fake_network(monkeypatch, files: dict[str, bytes], *, announce: dict[str, int] | None = None,
                 fail_after: int | None = None):
    """Serve ``files`` (url → bytes); optionally lie about the length or break mid-transfer."""
    served = []

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= fail_after:
                raise ConnectionResetError("connection reset by peer")
            return super().read(min(n, fail_after - self.tell()) if n > 0 else fail_after)

    def open_url(url, timeout=30.0):
        if url not in files:
            raise OSError(f"404 {url}")
        served.append(url)
        data = files[url]
        stream = Broken(data) if fail_after is not None else io.BytesIO(data)
        return stream, (announce or {}).get(url, len(data))

    monkeypatch.setattr(fetch, "open_url", open_url)
    return served


# --------------------------------------------------------------------------- writers
def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array, written by hand from the format description."""
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx_split(d: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True):
    d.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(arr)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)


def small_idx(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 28, 28), dtype=np.uint8), g.integers(0, 10, n, dtype=np.uint8)


def cifar_batch(images_chw: np.ndarray, labels, label_key: str) -> bytes:
    """A batch as the official python version stores it: dict with bytes keys, rows of 3072."""
    batch = {b"batch_label": b"testing batch", b"data": images_chw.reshape(len(images_chw), -1),
             label_key.encode(): list(map(int, labels)), b"filenames": [b"x.png"] * len(labels)}
    return pickle.dumps(batch, protocol=2)


def write_cifar10(d: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    top = d / "cifar-10-batches-py"
    top.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(1)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = g.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = g.integers(0, 10, per_batch)
        (top / name).write_bytes(cifar_batch(x, y, "labels"))
        out[name] = (x, y)
    return out


def tar_gz(src_dir: Path, top: str, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_dir / top, arcname=top)
    return dest


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- real Fashion-MNIST
@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian_package():
    tracemalloc.start()
    try:
        train = load_dataset("fashion-mnist", "train", root=FMNIST_SYSTEM, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    test = load_dataset("fashion-mnist", "test", root=FMNIST_SYSTEM, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.labels[:3].tolist() == [9, 0, 0]  # the published first labels: ankle boot, T-shirt, T-shirt
    assert 0 < train.images.float().mean() < 255
    # Read straight into the final array (no whole-payload intermediate copy): the peak of
    # Python/numpy allocations stays near the 47 MB of images (measured 1.025×), not 2×.
    nbytes = train.images.numel() + 8 * train.labels.numel()
    assert peak < 1.1 * nbytes, f"peak {peak / 2**20:.0f} MiB for {nbytes / 2**20:.0f} MiB of data"


def test_real_fashion_mnist_found_via_system_dir(monkeypatch):
    if not FMNIST_SYSTEM.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(locate, "SYSTEM_DIRS", (FMNIST_SYSTEM.parent,))
    assert len(load_dataset("fashion-mnist", "test", download=False)) == 10000


# --------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_gz_and_raw(tmp_path, gz):
    x, y = small_idx(7)
    write_idx_split(tmp_path, "train", x, y, gz=gz)
    write_idx_split(tmp_path, "t10k", x[:2], y[:2], gz=gz)
    s = FashionMNIST().load("train", root=tmp_path, download=False)
    assert s.images.shape == (7, 1, 28, 28) and s.images.dtype == torch.uint8
    assert torch.equal(s.images[:, 0], torch.from_numpy(x))
    assert s.labels.tolist() == y.astype(int).tolist() and s.split == "train"
    assert len(FashionMNIST().load("test", root=tmp_path, download=False)) == 2


def test_idx_big_endian_dims_and_other_dtypes(tmp_path):
    arr = np.arange(2 * 300, dtype=">i4").reshape(2, 300)  # dims > 255 need all 4 header bytes
    head = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 300)
    p = tmp_path / "ints-idx2-int"
    p.write_bytes(head + arr.tobytes())
    assert np.array_equal(read_idx(p), arr)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_names_the_file(tmp_path, gz):
    x, y = small_idx(5)
    data = idx_bytes(x)[:-100]
    p = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*truncated"):
        read_idx(p)


def test_idx_truncated_gzip_stream(tmp_path):
    x, _ = small_idx(50)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(x))[:-2000])  # the gzip stream itself is cut
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*(truncated|corrupt)"):
        read_idx(p)


def test_idx_bad_magic_and_trailing_bytes(tmp_path):
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"\x01\x02\x03")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte: not an IDX file"):
        read_idx(p)
    p.write_bytes(idx_bytes(np.zeros(3, np.uint8)) + b"junk")
    with pytest.raises(DatasetError, match="bytes past"):
        read_idx(p)


def test_idx_label_count_must_match_images(tmp_path):
    x, y = small_idx(5)
    write_idx_split(tmp_path, "t10k", x, y[:4])
    with pytest.raises(DatasetError, match="expected 5 labels"):
        FashionMNIST().load("test", root=tmp_path, download=False)


# --------------------------------------------------------------------------- CIFAR
def test_cifar10_batches_directory(tmp_path):
    written = write_cifar10(tmp_path)
    train = CIFAR10().load("train", root=tmp_path, download=False)
    assert train.images.shape == (15, 3, 32, 32) and train.num_classes == 10
    x = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    y = np.concatenate([written[f"data_batch_{k}"][1] for k in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(x)) and train.labels.tolist() == y.tolist()
    test = CIFAR10().load("test", root=tmp_path / "cifar-10-batches-py", download=False)
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"][0]))


def test_cifar_row_layout_is_planes_of_rows(tmp_path):
    # One row = 1024 red, 1024 green, 1024 blue, each row-major 32×32.
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0 * 1024 + 1 * 32 + 2] = 11   # red, row 1, column 2
    row[0, 2 * 1024 + 30 * 32 + 5] = 22  # blue, row 30, column 5
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({b"data": row, b"labels": [3]}, protocol=2))
    x, y = read_cifar_batch(p, "labels")
    assert x[0, 0, 1, 2] == 11 and x[0, 2, 30, 5] == 22 and x.sum() == 33 and y.tolist() == [3]


def test_cifar10_from_tar_gz_extracts_into_cache(tmp_path, monkeypatch):
    src = tmp_path / "src"
    written = write_cifar10(src)
    data = tmp_path / "data"
    data.mkdir()
    tar_gz(src, "cifar-10-batches-py", data / "cifar-10-python.tar.gz")
    monkeypatch.setenv("BIOSSL_DATA", str(data))
    test = load_dataset("cifar10", "test", download=False)
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"][0]))
    extracted = locate.cache_dir("cifar10") / "cifar-10-batches-py" / "test_batch"
    assert extracted.is_file()
    assert not [p for p in locate.cache_dir("cifar10").iterdir() if p.name.startswith(".")]
    # The second load reads the extraction: a broken archive is not opened again.
    (data / "cifar-10-python.tar.gz").write_bytes(b"not a tar.gz")
    train = load_dataset("cifar10", "train", download=False)
    assert len(train) == 15 and train.source == str(extracted.parent)


def test_cifar100_fine_labels(tmp_path):
    top = tmp_path / "cifar-100-python"
    top.mkdir()
    g = np.random.default_rng(2)
    for name, n in (("train", 6), ("test", 4)):
        x = g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        batch = {b"data": x.reshape(n, -1), b"fine_labels": [99, 0, 50, 7, 1, 2][:n],
                 b"coarse_labels": [0] * n}
        (top / name).write_bytes(pickle.dumps(batch, protocol=2))
    s = CIFAR100().load("train", root=tmp_path, download=False)
    assert s.images.shape == (6, 3, 32, 32) and s.num_classes == 100
    assert s.labels.tolist() == [99, 0, 50, 7, 1, 2]
    assert len(CIFAR100().load("test", root=tmp_path, download=False)) == 4


def test_cifar_truncated_and_malicious_pickles(tmp_path):
    p = tmp_path / "data_batch_1"
    x = np.zeros((2, 3, 32, 32), np.uint8)
    p.write_bytes(cifar_batch(x, [0, 1], "labels")[:-500])
    with pytest.raises(DatasetError, match="data_batch_1.*truncated or corrupt"):
        read_cifar_batch(p, "labels")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load global"):
        read_cifar_batch(p, "labels")


def test_cifar_wrong_shape(tmp_path):
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match="expected uint8 \\(N, 3072\\)"):
        read_cifar_batch(p, "labels")


def test_corrupt_local_archive_names_it(tmp_path):
    src = tmp_path / "src"
    write_cifar10(src)
    blob = tar_gz(src, "cifar-10-batches-py", tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz.*truncated or corrupt"):
        CIFAR10().load("test", root=tmp_path, download=False)


def test_archive_with_unsafe_member_is_refused(tmp_path):
    evil = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        CIFAR10().load("test", root=tmp_path, download=False)
    assert not (locate.cache_dir("cifar10").parent / "outside.txt").exists()


# --------------------------------------------------------------------------- STL-10
def test_stl10_column_major_orientation(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    # Image 0: a single bright pixel in the green plane at row 3, column 70. Column-major
    # storage puts it at plane offset column * 96 + row.
    raw = np.zeros((2, 3 * 96 * 96), np.uint8)
    raw[0, 1 * 9216 + 70 * 96 + 3] = 200
    # Image 1: a known (C, H, W) image written the way the official file stores it.
    img = np.random.default_rng(3).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    raw[1] = img.transpose(0, 2, 1).reshape(-1)
    (d / "train_X.bin").write_bytes(raw.tobytes())
    (d / "train_y.bin").write_bytes(bytes([1, 10]))
    s = STL10().load("train", root=tmp_path, download=False)
    assert s.images.shape == (2, 3, 96, 96)
    assert s.images[0, 1, 3, 70] == 200 and int(s.images[0].sum()) == 200
    assert torch.equal(s.images[1], torch.from_numpy(img))
    assert s.labels.tolist() == [0, 9]  # 1..10 → 0..9
    assert s.images.is_contiguous()  # labelled splits are copied into memory


def test_stl10_unlabeled_is_memory_mapped(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    raw = np.random.default_rng(4).integers(0, 256, (5, 3, 96, 96), dtype=np.uint8)
    (d / "unlabeled_X.bin").write_bytes(raw.tobytes())
    arr = read_stl10_images(d / "unlabeled_X.bin", mmap=True)
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap), "unlabeled images must be a view of a memory map"
    s = STL10().load("unlabeled", root=d, download=False)
    assert s.labels.tolist() == [-1] * 5 and not s.labeled
    # A transposed view of the mapped file, not a copy: byte strides (27648, 9216, 1, 96).
    assert s.images.stride() == (27648, 9216, 1, 96)
    assert torch.equal(s.images, torch.from_numpy(raw.transpose(0, 1, 3, 2).copy()))
    s.images[0, 0, 0, 0] = 0  # copy-on-write: the file is never modified
    s.images[0, 0, 0, 0] = 255
    assert (d / "unlabeled_X.bin").read_bytes() == raw.tobytes()
    assert STL10.ssl_split == "unlabeled" and STL10.probe_train_split == "train"


def test_stl10_truncated_and_label_mismatch(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    (d / "test_X.bin").write_bytes(bytes(2 * 27648 - 10))
    (d / "test_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(DatasetError, match="test_X.bin: size .* truncated"):
        STL10().load("test", root=tmp_path, download=False)
    (d / "test_X.bin").write_bytes(bytes(3 * 27648))
    with pytest.raises(DatasetError, match="test_y.bin: 2 labels for 3 images"):
        STL10().load("test", root=tmp_path, download=False)


# --------------------------------------------------------------------------- digits, registry
def test_digits_offline_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert set(train.labels.tolist()) == set(range(10))
    assert torch.equal(train.images, load_dataset("digits", "train").images)  # deterministic


def test_registry_names_and_spec_attributes():
    for name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "digits"):
        assert name in DATASETS
        spec = get_spec(name)
        assert spec.name == name and spec.ssl_split in spec.splits
        assert {spec.probe_train_split, spec.test_split} <= set(spec.splits)
        assert len(spec.image_shape) == 3 and spec.num_classes >= 10
    with pytest.raises(ValueError, match="no split 'unlabeled'"):
        get_spec("cifar10").load("unlabeled")
    with pytest.raises(KeyError, match="unknown dataset"):
        get_spec("imagenet")


# --------------------------------------------------------------------------- lookup
def test_missing_dataset_lists_dirs_and_fixes(tmp_path):
    with pytest.raises(DatasetError) as e:
        FashionMNIST().load("train", download=False)
    msg = str(e.value)
    for d in (tmp_path / "cache" / "biossl" / "fashion-mnist", tmp_path / "system" / "fashion-mnist"):
        assert f"  {d}  [" in msg and "does not exist]" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "BIOSSL_DATA=" in msg
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in msg
    assert "download=False" in msg


def test_search_order_root_then_env_then_cache_and_system(tmp_path, monkeypatch):
    """An explicit location is the whole search; the default search is cache, then system."""
    monkeypatch.setenv("BIOSSL_DATA", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert [d for d, _ in locate.search_dirs("cifar10", tmp_path / "r")] == [
        tmp_path / "r", tmp_path / "r" / "cifar10"]
    assert [d for d, _ in locate.search_dirs("cifar10")] == [
        tmp_path / "a" / "cifar10", tmp_path / "a", tmp_path / "b" / "cifar10", tmp_path / "b"]
    monkeypatch.delenv("BIOSSL_DATA")
    assert [d for d, _ in locate.search_dirs("cifar10")] == [
        tmp_path / "cache" / "biossl" / "cifar10", tmp_path / "system" / "cifar10"]
    # The first directory holding every file wins, and the set says where it was read.
    for where, n in (("b/fashion-mnist", 3), ("cache/biossl/fashion-mnist", 4), ("system/fashion-mnist", 5)):
        x, y = small_idx(n)
        write_idx_split(tmp_path / where, "t10k", x, y)
    got = FashionMNIST().load("test", download=False)
    assert len(got) == 4 and got.source == str(tmp_path / "cache" / "biossl" / "fashion-mnist")
    monkeypatch.setenv("BIOSSL_DATA", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    got = FashionMNIST().load("test", download=False)
    assert len(got) == 3 and got.source == str(tmp_path / "b" / "fashion-mnist")
    got = FashionMNIST().load("test", root=tmp_path / "system", download=False)
    assert len(got) == 5 and got.source == str(tmp_path / "system" / "fashion-mnist")


@pytest.mark.parametrize("how", ["root-missing", "root-empty", "env-missing", "env-empty"])
def test_explicit_location_without_the_files_is_refused_not_replaced(tmp_path, monkeypatch, how):
    """data.root or $BIOSSL_DATA naming a missing or empty folder is an error even though
    the cache holds the dataset and a download would work: nothing else is read instead."""
    x, y = small_idx(4)
    write_idx_split(tmp_path / "cache" / "biossl" / "fashion-mnist", "t10k", x, y)
    _, blobs = _fmnist_test_blobs()
    served = fake_network(monkeypatch, _fmnist_remotes_for(monkeypatch, blobs))
    given = tmp_path / "given"
    if how.endswith("empty"):
        given.mkdir()
    root = given if how.startswith("root") else None
    if how.startswith("env"):
        monkeypatch.setenv("BIOSSL_DATA", str(given))
    with pytest.raises(DatasetError) as e:
        FashionMNIST().load("test", root=root, download=True)
    msg = str(e.value)
    where = "data.root" if root is not None else "$BIOSSL_DATA"
    state = "empty" if how.endswith("empty") else "does not exist"
    assert f"  {given}  [{where}, {state}]" in msg
    assert "t10k-images-idx3-ubyte.gz or t10k-images-idx3-ubyte" in msg  # what was expected there
    assert f"{where} is set, so biossl reads only there and downloads nothing" in msg
    assert ("drop data.root" if root is not None else "unset BIOSSL_DATA") in msg  # the fix
    assert str(tmp_path / "cache") not in msg.split("Not downloaded:")[0]  # not searched
    assert served == []


# --------------------------------------------------------------------------- downloads (fake network)
def _fmnist_remotes_for(monkeypatch, blobs: dict[str, bytes], md5s: dict[str, str] | None = None):
    """Point FashionMNIST's remotes at fake URLs whose MD5s match ``blobs`` (or ``md5s``)."""
    remotes = tuple(Remote(name, f"https://example.invalid/{name}", (md5s or {}).get(name, md5(b)))
                    for name, b in blobs.items())
    monkeypatch.setattr(FashionMNIST, "source", dataclasses.replace(FashionMNIST.source, remotes=remotes))
    return {r.url: blobs[r.filename] for r in remotes}


def _fmnist_test_blobs(n=6):
    x, y = small_idx(n)
    return x, {"t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(x)),
               "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(y))}


def test_download_verifies_and_writes_into_cache(monkeypatch):
    x, blobs = _fmnist_test_blobs()
    served = fake_network(monkeypatch, _fmnist_remotes_for(monkeypatch, blobs))
    s = FashionMNIST().load("test", download=True)
    assert torch.equal(s.images[:, 0], torch.from_numpy(x))
    cache = locate.cache_dir("fashion-mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(blobs)  # no temp files left
    assert len(served) == 2
    FashionMNIST().load("test", download=True)  # cached now: nothing fetched again
    assert len(served) == 2


def test_official_remotes_are_the_published_ones():
    fm = {r.filename: r for r in FashionMNIST.source.remotes}
    assert fm["train-images-idx3-ubyte.gz"].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert fm["t10k-labels-idx1-ubyte.gz"].url.startswith("http://fashion-mnist.s3-website.eu-central-1")
    assert CIFAR10.source.remotes[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR100.source.remotes[0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert STL10.source.remotes[0].md5 == "91f7769df0f17e558f3565bffb0c7dfb"


def test_download_checksum_mismatch_leaves_nothing(monkeypatch):
    _, blobs = _fmnist_test_blobs()
    urls = _fmnist_remotes_for(monkeypatch, blobs, md5s={"t10k-images-idx3-ubyte.gz": "0" * 32})
    fake_network(monkeypatch, urls)
    with pytest.raises(DatasetError) as e:
        FashionMNIST().load("test", download=True)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "checksum" in msg and "re-download" in msg
    assert "Looked in:" in msg  # the full 'how to get it' message comes with it
    cache = locate.cache_dir("fashion-mnist")
    assert not (cache / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_truncated_transfer(monkeypatch):
    _, blobs = _fmnist_test_blobs()
    urls = _fmnist_remotes_for(monkeypatch, blobs)
    fake_network(monkeypatch, urls, announce={u: len(b) + 1000 for u, b in urls.items()})
    with pytest.raises(DatasetError, match="truncated t10k-images-idx3-ubyte.gz"):
        FashionMNIST().load("test", download=True)
    assert not list(locate.cache_dir("fashion-mnist").iterdir())


def test_download_interrupted_mid_stream_is_atomic(monkeypatch, tmp_path):
    blob = os.urandom(3 * fetch.CHUNK)
    remote = Remote("big.bin", "https://example.invalid/big.bin", md5(blob))
    fake_network(monkeypatch, {remote.url: blob}, fail_after=fetch.CHUNK + 5)
    with pytest.raises(DatasetError, match="failed after"):
        fetch.download(remote, tmp_path / "dl", progress=False)
    assert not list((tmp_path / "dl").iterdir())
    fake_network(monkeypatch, {remote.url: blob})
    path = fetch.download(remote, tmp_path / "dl", progress=False)
    assert path.read_bytes() == blob and [p.name for p in (tmp_path / "dl").iterdir()] == ["big.bin"]


def test_offline_download_failure_explains(monkeypatch):
    fake_network(monkeypatch, {})  # every URL fails like an unreachable host
    with pytest.raises(DatasetError) as e:
        FashionMNIST().load("train", download=True)
    msg = str(e.value)
    assert "downloading failed" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "Looked in:" in msg


def test_download_archive_and_extract(monkeypatch, tmp_path):
    src = tmp_path / "src"
    written = write_cifar10(src)
    blob = tar_gz(src, "cifar-10-batches-py", tmp_path / "a.tar.gz").read_bytes()
    remote = Remote("cifar-10-python.tar.gz", "https://example.invalid/cifar-10-python.tar.gz", md5(blob))
    monkeypatch.setattr(CIFAR10, "source", dataclasses.replace(CIFAR10.source, remotes=(remote,)))
    fake_network(monkeypatch, {remote.url: blob})
    s = load_dataset("cifar10", "test")
    assert torch.equal(s.images, torch.from_numpy(written["test_batch"][0]))
    assert (locate.cache_dir("cifar10") / "cifar-10-python.tar.gz").is_file()
