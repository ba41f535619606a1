"""The audit as markdown: the config's verdict with its evidence, then one row per
parameter group (its JSON form is ``AuditReport.to_json``)."""
from __future__ import annotations

from biossl.audit.run import AuditReport
from biossl.rules.base import CONDITION_TEXT, CONDITIONS


def mark(holds: bool) -> str:
    return "✓" if holds else "✗"


def verdict_cell(report: AuditReport) -> str:
    """'✓✗✓✓' (i)–(iv), with '+BN' when a stage computes batch statistics."""
    cell = "".join(mark(report.conditions[c].holds) for c in CONDITIONS)
    return cell + (" +BN" if report.batch_stats else "")


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def format_report(report: AuditReport, heading: str = "##") -> str:
    r = report
    lines = [f"{heading} audit: {r.name} — {r.rule}, {r.objective}, {r.encoder}", "",
             f"{len(r.epochs)} instrumented step(s) (schedule epochs {r.epochs}) on {r.batch} images "
             f"({r.data}); {r.ops} ops recorded, {r.backward_calls} backward/grad call(s), {r.seconds:.1f} s.",
             "", "| condition | holds | evidence |", "|---|---|---|"]
    for c in CONDITIONS:
        cond = r.conditions[c]
        lines.append(f"| ({c}) {CONDITION_TEXT[c]} | {mark(cond.holds)} | {_md('; '.join(cond.evidence))} |")
    stats = "; ".join(f"{b.context}: {b.module} ({b.op})" for b in r.batch_stats)
    lines.append(f"| batch statistics (outputs depend on other samples) | {'⚑' if stats else '—'} | "
                 f"{_md(stats) if stats else 'none computed in any forward'} |")
    lines.append(f"| labels | | the {r.batch} labels of the audited images were loaded into a tagged tensor; "
                 f"{r.label_reads} op(s) read it |")
    lines += ["", "| group | updated | (i) | (ii) | (iii) | (iv) | its updates read | evidence against |",
              "|---|---|---|---|---|---|---|---|"]
    for g in r.groups:
        if not g.updated:
            lines.append(f"| {g.group} | no | | | | | | |")
            continue
        marks = [mark(g.conditions[c].holds) for c in CONDITIONS]
        against = [f"({c}) " + "; ".join(g.conditions[c].evidence) for c in CONDITIONS
                   if not g.conditions[c].holds]
        name = g.group if g.network else f"{g.group} (own learning; not in the verdict)"
        lines.append(f"| {name} | yes | " + " | ".join(marks) + f" | {_md('; '.join(g.reads))} | "
                     f"{_md(' '.join(against)) or '—'} |")
    return "\n".join(lines) + "\n"
