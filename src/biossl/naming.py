"""How the apps name a run's learning rule in tables, probe labels and bench rows: the one
place that reads the rule's name from a config, so a change of the config's rule keys
renames it everywhere at once."""
from __future__ import annotations

from biossl.config import RunConfig

UNTRAINED = "none"
"""The rule name of a random-init (never trained) encoder's row."""
RANDOM_INIT = "random-init"
"""Row label (and ``evaluate_run`` baseline name) of the random-init encoder."""


def rule_name(cfg: RunConfig) -> str:
    """The rule ``cfg`` trains with, as tables show it: 'schedule-transport' (e.g. 'greedy-urf')."""
    return f"{cfg.schedule.name}-{cfg.transport.name}"


def encoder_label(cfg: RunConfig) -> str:
    """The probe table's label of the encoder ``cfg`` trains: rule + objective."""
    return f"{rule_name(cfg)}+{cfg.objective.name}"
