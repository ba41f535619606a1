"""Name → component registries, one per axis (datasets, views, encoders, objectives,
schedules, transports).

A new rule, loss or encoder is one file plus one ``register`` line. Each entry
carries a typed ``Config`` dataclass so that its own keys are validated
(solo-learn style per-method validation, without a base class hierarchy).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    config: type | None  # dataclass of the component's own hyper-parameters
    summary: str


class Registry(Generic[T]):
    """A named table of factories for one axis."""

    def __init__(self, axis: str):
        self.axis = axis
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T] | None = None, *,
                 config: type | None = None, summary: str = ""):
        """Register ``factory`` under ``name``; usable as a decorator."""

        def add(f: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.axis} {name!r} is registered twice")
            cfg = config if config is not None else getattr(f, "Config", None)
            if cfg is not None and not dataclasses.is_dataclass(cfg):
                raise TypeError(f"{self.axis} {name!r}: Config must be a dataclass")
            doc = summary or ((f.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, f, cfg, doc)
            return f

        return add(factory) if factory is not None else add

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.axis} {name!r}; registered {self.axis}s: "
                f"{', '.join(sorted(self._entries))}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def name_of(self, factory: Callable[..., T]) -> str:
        """The first name ``factory`` is registered under."""
        for e in self._entries.values():
            if e.factory is factory:
                return e.name
        raise KeyError(f"{factory!r} is not a registered {self.axis}")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name).factory(*args, **kwargs)


DATASETS: Registry = Registry("dataset")
VIEWS: Registry = Registry("view recipe")
ENCODERS: Registry = Registry("encoder")
OBJECTIVES: Registry = Registry("objective")
SCHEDULES: Registry = Registry("schedule")
TRANSPORTS: Registry = Registry("transport")

AXES = {"dataset": DATASETS, "views": VIEWS, "encoder": ENCODERS,
        "objective": OBJECTIVES, "schedule": SCHEDULES, "transport": TRANSPORTS}


def load_all() -> None:
    """Import every module that registers components (idempotent)."""
    import biossl.data  # noqa: F401
    import biossl.views  # noqa: F401
    import biossl.encoders  # noqa: F401
    import biossl.objectives  # noqa: F401
    import biossl.rules  # noqa: F401
