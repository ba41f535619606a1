"""The plausibility audit (``biossl audit``): conditions (i)–(iv) observed in one
instrumented training step, with the evidence. See docs/audit.md."""
from biossl.audit.run import AUDIT_BATCH, AuditReport, audit_config

__all__ = ["AUDIT_BATCH", "AuditReport", "audit_config"]
