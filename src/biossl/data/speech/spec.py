"""What every speech source declares (:class:`AudioSpec`): its splits, its phone count and
:meth:`AudioSpec.load`. (The registered datasets, biossl.data.speech.sources, say which
split each phase reads.)"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from biossl.data.speech.audioset import AudioSet


class AudioSpec:
    """One speech dataset: facts as class attributes plus :meth:`load` → :class:`AudioSet`.

    Subclasses implement :meth:`_load`; :meth:`load` checks the split name before and
    the result's class counts after.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    num_phones: ClassVar[int] = 0

    def load(self, split: str, root: str | Path | None = None, download: bool = False,
             **sizes: Any) -> AudioSet:
        """Read (or make) ``split`` → :class:`AudioSet`.

        root: a directory to look in first (see :mod:`biossl.data.locate`). download:
        whether a source that can fetch files may do so. sizes: source-specific size
        settings (e.g. the generated corpus's number of speakers).
        """
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; "
                             f"its splits are: {', '.join(self.splits)}")
        out = self._load(split, Path(root).expanduser() if root is not None else None, download, **sizes)
        if out.num_phones != self.num_phones:
            raise ValueError(f"{self.name}/{split}: {out.num_phones} phone classes, "
                             f"expected {self.num_phones}")
        return out

    def _load(self, split: str, root: Path | None, download: bool, **sizes: Any) -> AudioSet:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, splits={self.splits})"
