"""A run directory as something one process owns: who trains it (an flock'ed lock file),
what of a run is already in it, the temporary files a kill left behind, and its
config.yaml (written, read with errors that say the fix, compared key by key).

The lock is ``RUN_DIR/.lock`` held with ``flock``: the kernel drops it when the holder
exits or is killed, so a stale lock never blocks; the file's text (pid, host, command,
start time) only names the holder in the error a second process gets.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import yaml

from biossl.checkpoint import temp_prefix, write_text_atomic
from biossl.config import ConfigError, RunConfig, build_config

LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
RUN_CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
DIVERGED = "diverged.json"
DATA_SOURCE = "data_source.txt"  # the folder the training images were read from
RUN_FILES = (CHECKPOINT, RUN_CONFIG, METRICS, TENSORBOARD, DIVERGED, DATA_SOURCE, "result.json")
"""Names that make a directory hold (part of) a run; probe tables are ``probe*.csv/md/png``."""
TRAIN_WRITES = (CHECKPOINT, RUN_CONFIG, METRICS)
"""Files only the lock holder writes: their temporary files can be removed under the lock."""


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked; the message names the problem and the fix."""


class RunLocked(RunDirError):
    """Another live process trains this run directory."""


def note(text: str) -> None:
    """A line for the user on stderr, prefixed like every biossl message."""
    print(f"biossl: {text}", file=sys.stderr, flush=True)


def q(path: str | Path) -> str:
    """A path as it must be typed in a shell (spaces, quotes)."""
    return shlex.quote(str(path))


def _os_problem(e: OSError) -> str:
    names = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system", errno.ENOSPC: "disk full",
             errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a parent is not a directory"}
    return names.get(e.errno, e.strerror or str(e))


def make_writable_dir(run_dir: Path, flag: str = "--out") -> None:
    """Create ``run_dir`` (and parents) or say why it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write the run directory {run_dir} ({_os_problem(e)}); give a "
                          f"{flag} directory you can write, e.g. {flag} runs/NAME") from None


@contextlib.contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the ``with`` block, or raise :class:`RunLocked`
    naming the holder (pid, host, command, since when)."""
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirError(f"cannot create the lock file {path} ({_os_problem(e)}); give a "
                          f"directory you can write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is being trained by another process ({_holder(fd)}); two "
                            f"runs in one directory would interleave their files. Wait for it to "
                            f"finish, stop it (kill -TERM PID: it saves a checkpoint), or give "
                            f"another --out directory") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(q(a) for a in sys.argv) or "python",
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "it has not written its details yet"
    return (f"pid {info.get('pid')} on {info.get('host')}, running {info.get('command')!s}, "
            f"since {info.get('since')}")


def run_contents(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` that belong to a run (sorted); empty for a new directory."""
    if not run_dir.is_dir():
        return []
    names = []
    for p in run_dir.iterdir():
        if p.name in RUN_FILES or (p.name.startswith("probe") and p.suffix in (".csv", ".md", ".png")):
            names.append(p.name)
    return sorted(names)


def remove_run_files(run_dir: Path, names: list[str]) -> None:
    for name in names:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def remove_stray_temp_files(run_dir: Path) -> list[str]:
    """Delete the temporary files a killed writer left (``.checkpoint.pt.*.tmp`` …); only
    call it while holding the lock, so no live writer's file is taken."""
    removed = []
    for name in TRAIN_WRITES:
        for p in run_dir.glob(f"{temp_prefix(Path(name))}*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def run_config_text(cfg: RunConfig) -> str:
    """The resolved config as a run directory stores it (every default written out)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_run_config(cfg: RunConfig, run_dir: str | Path) -> None:
    write_text_atomic(run_config_text(cfg), Path(run_dir) / RUN_CONFIG)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config.yaml of a run; a missing, unreadable or invalid one is a clear error."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); "
                          f"create one with: biossl train CONFIG --out {q(run_dir)}")
    fix = (f"fix it by hand, or delete it and run biossl train --resume {q(run_dir)}, which "
           f"rewrites it from the config stored in the checkpoint")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(e).split())}); {fix}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections; {fix}")
    try:
        return build_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple]:
    """{key: (old, new)} for every key whose value differs (flattened, 'train.lr')."""
    a, b = flat_config(old.to_dict()), flat_config(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
