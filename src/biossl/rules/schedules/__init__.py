"""Schedules: which stages learn when (e2e, greedy, random, simultaneous)."""
from biossl.rules.schedules.base import Schedule
from biossl.rules.schedules.e2e import EndToEnd
from biossl.rules.schedules.greedy import Greedy
from biossl.rules.schedules.random import RandomStage
from biossl.rules.schedules.simultaneous import Simultaneous

__all__ = ["Schedule", "EndToEnd", "Greedy", "RandomStage", "Simultaneous"]
