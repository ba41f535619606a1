"""Finding a dataset's files on disk, downloading them when allowed, and saying
exactly what is missing when neither works.

An explicit location is used or refused, never silently replaced by another copy:

1. ``root`` (config key ``data.root``) given: only ``root``, then ``root/<name>``;
2. else ``$BIOSSL_DATA`` set: only its entries (``os.pathsep``-separated), each
   ``<entry>/<name>``, then ``<entry>`` itself;
3. else the default search: the user cache ``$XDG_CACHE_HOME/biossl/<name>`` (default
   ``~/.cache/biossl/<name>``), where downloads and extracted archives go, then the system
   directories ``/usr/share/datasets/<name>`` (Debian ``dataset-*`` packages, e.g.
   ``dataset-fashion-mnist``) and ``/usr/local/share/datasets/<name>``.

Then an official archive (``.tar.gz``) found in one of those directories is extracted
into the cache (the extraction is reused while the archive is there). Only in the default
search, with ``download=True``, are the official files downloaded into the cache and
verified against their published MD5: an explicit location that lacks the files is an
error naming what was expected there.

Only downloaded files are checked against the MD5: files found on disk are checked
by their readers (magic numbers, sizes), because repackaged copies are legitimate —
the Debian package recompresses the Fashion-MNIST ``.gz`` files, so their MD5 differs
from Zalando's while their content is identical.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from biossl.data import fetch
from biossl.data.base import DatasetError
from biossl.data.fetch import Remote

# A module attribute (not inlined) so that tests can point it at an empty directory.
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))

Members = Sequence[Sequence[str]]
"""Files a load needs, relative to a dataset directory; each entry lists alternative
names for one file, preferred first (e.g. ``("x-idx3-ubyte.gz", "x-idx3-ubyte")``)."""


@dataclass(frozen=True)
class Source:
    """Where one dataset's files come from.

    name: directory name used under root, $BIOSSL_DATA, the cache and system dirs.
    remotes: official downloads. When ``archive_dir`` is set they are ``.tar.gz``
        archives whose top directory ``archive_dir`` holds the members.
    apt_package: Debian/Ubuntu package installing ``/usr/share/datasets/<name>``.
    """

    name: str
    remotes: tuple[Remote, ...] = ()
    archive_dir: str | None = None
    apt_package: str | None = None
    homepage: str = ""


def cache_dir(name: str) -> Path:
    """The user cache directory for dataset ``name`` (created on first download)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "biossl" / name


def explicit_location(root: str | Path | None = None) -> str | None:
    """Which explicit location the search is confined to: 'data.root', '$BIOSSL_DATA' or None."""
    if root is not None:
        return "data.root"
    if any(os.environ.get("BIOSSL_DATA", "").split(os.pathsep)):
        return "$BIOSSL_DATA"
    return None


def search_dirs(name: str, root: str | Path | None = None) -> list[tuple[Path, str]]:
    """Candidate directories for dataset ``name`` in search order → [(dir, where it came from)].
    An explicit ``root`` or ``$BIOSSL_DATA`` is the whole search (see the module doc)."""
    if root is not None:
        r = Path(root).expanduser()
        return [(r, "data.root"), (r / name, "data.root")]
    out: list[tuple[Path, str]] = []
    for entry in filter(None, os.environ.get("BIOSSL_DATA", "").split(os.pathsep)):
        e = Path(entry).expanduser()
        out += [(e / name, "$BIOSSL_DATA"), (e, "$BIOSSL_DATA")]
    if out:
        return out
    out.append((cache_dir(name), "user cache"))
    out += [(d / name, "system") for d in SYSTEM_DIRS]
    return out


def find_members(directory: Path, members: Members) -> list[Path] | None:
    """Paths of all ``members`` inside ``directory``, or None if any one is absent."""
    found = []
    for alternatives in members:
        hit = next((directory / a for a in alternatives if (directory / a).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def resolve(source: Source, members: Members, root: str | Path | None = None,
            download: bool = True) -> list[Path]:
    """Paths of ``members`` for ``source``: found, extracted from a local archive, or downloaded.

    Returns one path per entry of ``members``, all from one directory. Raises
    DatasetError listing every directory searched, the expected files and the fixes.
    """
    dirs = search_dirs(source.name, root)
    for d, _ in dirs:
        if (found := find_members(d, members)) is not None:
            return found

    cache = cache_dir(source.name)
    if source.archive_dir:
        for r in source.remotes:
            for d, _ in dirs:
                if (d / r.filename).is_file():
                    return _from_archive(d / r.filename, source, members, cache)

    explicit = explicit_location(root)
    if explicit is not None:
        problem = (f"{explicit} is set, so biossl reads only there and downloads nothing "
                   f"(downloads go to the user cache, searched only when neither data.root nor "
                   f"$BIOSSL_DATA is set).")
    elif not download:
        problem = "download=False, so nothing was downloaded."
    else:
        try:
            for r in _needed_remotes(source, members):
                if not (cache / r.filename).is_file():
                    fetch.download(r, cache)
            if source.archive_dir:
                return _from_archive(cache / source.remotes[0].filename, source, members, cache)
            if (found := find_members(cache, members)) is not None:
                return found
            problem = "the downloaded files do not include every expected file."
        except DatasetError as e:
            problem = f"downloading failed: {e}"
    raise DatasetError(missing_message(source, members, dirs, problem))


def _needed_remotes(source: Source, members: Members) -> list[Remote]:
    if source.archive_dir:
        return list(source.remotes[:1])
    wanted = {a for alternatives in members for a in alternatives}
    return [r for r in source.remotes if r.filename in wanted]


def _from_archive(archive: Path, source: Source, members: Members, cache: Path) -> list[Path]:
    assert source.archive_dir is not None
    top = cache / source.archive_dir
    extracted_before = top.is_dir()
    if not extracted_before:
        fetch.extract_tar(archive, cache, source.archive_dir)
    found = find_members(cache, members)
    if found is None:
        missing = ", ".join(alts[0] for alts in members if find_members(cache, [alts]) is None)
        if extracted_before:  # not this archive's fault: files were removed from the cache
            raise DatasetError(f"{top} (extracted earlier from {archive}) lacks {missing}; delete "
                               f"{top} and biossl extracts the archive again.")
        raise DatasetError(f"{archive} was extracted to {top} but lacks {missing}; "
                           f"it is incomplete or not the official archive. Delete {archive} and "
                           f"{top} and download the archive again.")
    return found


def _state(d: Path) -> str:
    if not d.is_dir():
        return ", does not exist"
    return "" if any(d.iterdir()) else ", empty"


def missing_message(source: Source, members: Members, dirs: list[tuple[Path, str]],
                    problem: str) -> str:
    """The text of the 'files not found' error: what, where looked, why not fetched, fixes."""
    expected = [" or ".join(alts) for alts in members]
    lines = [f"dataset {source.name!r}: files not found.",
             "Expected (relative to the dataset directory): " + ", ".join(expected)]
    if source.archive_dir:
        names = ", ".join(r.filename for r in source.remotes)
        lines.append(f"  (or the official archive {names}, which biossl extracts into the cache)")
    lines.append("Looked in:")
    lines += [f"  {d}  [{why}{_state(d)}]" for d, why in dirs]
    explicit = next((why for _, why in dirs if why in ("data.root", "$BIOSSL_DATA")), None)
    if explicit is None and not os.environ.get("BIOSSL_DATA"):
        lines.append("  ($BIOSSL_DATA is not set)")
    lines.append(f"Not downloaded: {problem}")
    lines.append("To fix, do one of:")
    if explicit == "data.root":
        lines.append("  - put the files above in data.root, correct the path, or drop data.root "
                     "to use $BIOSSL_DATA or the default search (user cache, system, download)")
    elif explicit == "$BIOSSL_DATA":
        lines.append("  - put the files above in a $BIOSSL_DATA entry, correct it, or unset "
                     "BIOSSL_DATA to use the default search (user cache, system, download)")
    if source.apt_package:
        lines.append(f"  - sudo apt-get install {source.apt_package}   "
                     f"(installs /usr/share/datasets/{source.name})")
    lines.append(f"  - put the files in a directory DIR and set BIOSSL_DATA=DIR (or DIR/{source.name} "
                 f"under it), or pass root=DIR (config key data.root)")
    if source.remotes:
        lines.append("  - download the official files, then place them as above:")
        lines += [f"      {r.url}  (md5 {r.md5})" for r in source.remotes]
        lines.append(f"    or let biossl do it: download=True, a network, and neither data.root nor "
                     f"$BIOSSL_DATA set (saved to {cache_dir(source.name)})")
    if source.homepage:
        lines.append(f"Dataset home page: {source.homepage}")
    return "\n".join(lines)
