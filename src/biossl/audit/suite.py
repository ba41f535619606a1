"""``biossl audit --suite NAME``: the audit of every cell of a suite (its first seed) in one
table, next to the conditions the rules' parts declare (``biossl.rules.base.plausibility``),
so that where the two disagree shows."""
from __future__ import annotations

from biossl.audit.report import format_report, mark, verdict_cell
from biossl.audit.run import AUDIT_BATCH, AuditReport, audit_config
from biossl.registry import OBJECTIVES, SCHEDULES, TRANSPORTS
from biossl.rules.base import CONDITIONS, plausibility


def declared(cfg) -> dict[str, bool]:
    """What the schedule, transport and objective declare about themselves."""
    return plausibility(SCHEDULES.get(cfg.schedule.name).factory, TRANSPORTS.get(cfg.transport.name).factory,
                        OBJECTIVES.get(cfg.objective.name).factory, cfg.objective.params)


def audit_suite(name: str, batch: int = AUDIT_BATCH) -> str:
    """Markdown: one summary row per cell, then the evidence of every condition that fails."""
    from biossl.compare import cell_config, load_suite
    suite = load_suite(name)
    rows, details, tables = [], [], []
    for cell in suite.cells:
        cfg = cell_config(suite, cell, suite.seeds[0])
        report = audit_config(cfg, batch=batch)
        said = declared(cfg)
        differ = [f"({c}) declared {mark(said[c])}" for c in CONDITIONS if said[c] != report.verdict()[c]]
        rows.append(f"| {cell.label} | {report.rule} | {report.objective} | {verdict_cell(report)} | "
                    f"{''.join(mark(said[c]) for c in CONDITIONS)} | {', '.join(differ) or '—'} | "
                    f"{report.seconds:.1f} |")
        details += [f"- **{cell.label}**: " + _failures(report)]
        tables += ["<details><summary>" + cell.label + "</summary>", "",
                   format_report(report, heading="####"), "</details>", ""]
    head = [f"Audit of every {suite.name} cell (`biossl audit --suite {suite.name}`): one instrumented "
            f"step per schedule position on {batch} images. (i)–(iv) as observed (✓ holds, ✗ fails; +BN: a "
            "stage computes batch statistics); declared: what the schedule, transport and objective say "
            "about themselves (the column `biossl compare` showed before the audit).", "",
            "| cell | rule | objective | audit (i)–(iv) | declared | disagreement | s |",
            "|---|---|---|---|---|---|---|"]
    return "\n".join(head + rows + ["", "Evidence of every failing condition (first updated group that fails):", ""]
                     + details + ["", "Every cell's audit table (per parameter group, with what its updates read):",
                                  ""] + tables).rstrip() + "\n"


def _failures(report: AuditReport) -> str:
    out = []
    for c in CONDITIONS:
        cond = report.conditions[c]
        if not cond.holds:
            out.append(f"({c}) {cond.evidence[0]}")
    return "; ".join(out).replace("|", "\\|") or "all four hold"
