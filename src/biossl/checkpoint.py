"""Atomic files: a crash or a full disk mid-write never leaves a truncated checkpoint or
config; the previous complete file stays in place until the new one is complete."""
from __future__ import annotations

import errno
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_KEYS = ("rule", "view_generator", "epoch", "step_in_epoch", "global_step", "config")
"""What a training checkpoint must hold to be resumed or probed."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file exists but cannot be read back; the message says what is lost."""


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 minus the umask (mkstemp uses 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(path: Path) -> str:
    """Name prefix of the temporary files written next to ``path`` (``.NAME.``); what is
    left of them after a kill is removed by :func:`biossl.rundir.remove_stray_temp_files`."""
    return f".{path.name}."


def _write_atomic(path: str | Path, write: Callable[[Any], None], mode: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    _write_atomic(path, lambda f: torch.save(obj, f), "wb")


def write_text_atomic(text: str, path: str | Path) -> None:
    _write_atomic(path, lambda f: f.write(text), "w")


def is_disk_full(e: BaseException) -> bool:
    """True for 'no space left' and 'quota exceeded' errors (also when torch wraps them)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read a training checkpoint; a missing file and an unreadable one are clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first "
                                f"(biossl train CONFIG --out {shlex.quote(str(path.parent))})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
            raise ValueError("not a biossl training checkpoint (keys missing)")
    except Exception as e:  # truncated, overwritten by hand, or another program's file
        raise CorruptCheckpoint(
            f"checkpoint {path} is corrupt and cannot be read ({type(e).__name__}: {e}). Lost: the "
            f"training state it held (weights, optimizer state, position in the data); config.yaml "
            f"and metrics.jsonl in {path.parent} are intact. Fix: move it aside "
            f"(mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.corrupt')}) and retrain from step 0 "
            f"with the same config: biossl train --resume {shlex.quote(str(path.parent))}") from None
    return state
