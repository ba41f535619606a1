"""What every video source declares (:class:`VideoSpec`): its splits and a typed config of
its sizes, overridable per ``load`` call. (The registered datasets,
biossl.data.video.sources, say which split each phase reads.)"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from biossl.data.video.clipset import ClipSet


class VideoSpec:
    """One video dataset: facts as class attributes, sizes in ``Config``, plus :meth:`load`.

    Subclasses set ``Config`` (a dataclass with a ``validate()`` method) and implement
    :meth:`_load`; :meth:`load` checks the split name and the size keys before.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    num_classes: ClassVar[int] = 0              # action classes
    Config: ClassVar[type]

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        self.config.validate()

    def load(self, split: str, root: str | Path | None = None, download: bool = False,
             **sizes: Any) -> ClipSet:
        """Read ``split`` → :class:`ClipSet`; ``sizes`` override fields of ``self.config``.

        root: a directory to look in first (see :mod:`biossl.data.locate`).
        download: allow fetching missing files where the source can.
        """
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; "
                             f"its splits are: {', '.join(self.splits)}")
        fields = [f.name for f in dataclasses.fields(self.Config)]
        unknown = sorted(set(sizes) - set(fields))
        if unknown:
            raise ValueError(f"dataset {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options are: {', '.join(fields)}")
        cfg = dataclasses.replace(self.config, **sizes)
        cfg.validate()
        out = self._load(split, Path(root).expanduser() if root is not None else None, download, cfg)
        if out.num_classes != self.num_classes:
            raise ValueError(f"{self.name}/{split}: {out.num_classes} action classes, "
                             f"expected {self.num_classes}")
        return out

    def _load(self, split: str, root: Path | None, download: bool, cfg: Any) -> ClipSet:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
