"""Transports: how an error reaches a weight (bp, rf, urf, sign, targets, explicit)."""
from biossl.rules.transports.backprop import Backprop
from biossl.rules.transports.base import Transport, Update
from biossl.rules.transports.explicit import Explicit
from biossl.rules.transports.feedback import RandomFeedback, SignFeedback, UpdatedRandomFeedback
from biossl.rules.transports.targets import Targets

__all__ = ["Transport", "Update", "Backprop", "RandomFeedback", "UpdatedRandomFeedback",
           "SignFeedback", "Targets", "Explicit"]
