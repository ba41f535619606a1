"""Getting dataset files onto disk safely: download with progress, MD5 check, atomic
write, and archive extraction.

Every write goes to a temporary name in the destination directory and is moved into
place with ``os.replace`` only once complete and verified, so an interrupted run or
two ranks downloading at once never leave a half-written file under the final name.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from biossl.data.base import DatasetError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One official file: saved as ``filename``, fetched from ``url``, checked against ``md5``."""

    filename: str
    url: str
    md5: str


def open_url(url: str, timeout: float = 30.0) -> tuple[BinaryIO, int | None]:
    """Open ``url`` for reading → (stream, total bytes or None when unknown).

    The only function here that touches the network; tests replace it.
    """
    resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (official https/http URLs)
    length = resp.headers.get("Content-Length")
    return resp, int(length) if length else None


def md5_file(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks (a 2.6 GB archive never sits in memory)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download(remote: Remote, dest_dir: Path, *, progress: bool = True) -> Path:
    """Download ``remote`` into ``dest_dir/remote.filename``, verified, written atomically.

    Raises DatasetError when the transfer fails, ends short of its announced length,
    or the MD5 differs; no partial file is left behind in any of these cases.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / remote.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                stream, total = open_url(remote.url)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, DNS, bad replies
                raise DatasetError(f"could not download {remote.url}: {e}") from e
            received, got = _copy_with_progress(stream, out, total, remote, progress)
        if total is not None and received != total:
            raise DatasetError(f"download of {remote.url} stopped after {received} of {total} bytes "
                               f"(truncated {remote.filename}); run again to re-download.")
        if got != remote.md5:
            raise DatasetError(f"{remote.filename} downloaded from {remote.url} fails its checksum "
                               f"(md5 {got}, expected {remote.md5}); it was discarded. Run again to "
                               f"re-download, or fetch it by hand and check it with md5sum.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy_with_progress(stream: BinaryIO, out: BinaryIO, total: int | None,
                        remote: Remote, progress: bool) -> tuple[int, str]:
    """Copy ``stream`` to ``out`` → (bytes copied, their hex MD5), hashed on the way so a
    2.6 GB archive is not read a second time."""
    from tqdm import tqdm  # imported here: only downloads need it

    print(f"biossl: downloading {remote.url}", file=sys.stderr)
    received = 0
    h = hashlib.md5(usedforsecurity=False)
    try:
        with stream, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=remote.filename, disable=not progress, leave=False) as bar:
            while block := stream.read(CHUNK):
                out.write(block)
                h.update(block)
                received += len(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as e:  # reset or IncompleteRead mid-transfer
        raise DatasetError(f"download of {remote.url} failed after {received} bytes: {e}") from e
    return received, h.hexdigest()


def extract_tar(archive: Path, dest_dir: Path, top: str) -> Path:
    """Extract the directory ``top`` of a .tar.gz ``archive`` → ``dest_dir/top``.

    Extracts into a temporary directory next to the target and renames it into place,
    so ``dest_dir/top`` exists only when complete. ``filter="data"`` refuses absolute
    paths, links out of the tree and device files (archives are untrusted input).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / top
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", suffix=".part", dir=dest_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise DatasetError(f"{archive}: cannot extract ({e}); the archive is truncated or corrupt. "
                               f"Delete it and download it again.") from e
        if not (tmp / top).is_dir():
            raise DatasetError(f"{archive}: holds no directory {top!r}; it is not the official archive. "
                               f"Delete it and download it again.")
        try:
            os.replace(tmp / top, final)
        except OSError:
            # Another process finished the same extraction first; keep its copy.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
