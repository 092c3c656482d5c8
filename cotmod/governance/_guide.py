"""The human reviewers' labeling guide, compiled from the same policy files as the LLM prompts.

Every rule, exception, definition, example, the decision flow (the reasoning checklist, or for a
policy with decision logic its questions and the answer table that derives the rules), the
severity → action table and the escalation queues appear, with the policy version and a content
fingerprint, so humans and machines enforce the same rules and an audit can tie them together.
"""

from __future__ import annotations

import hashlib
import html
import json
from datetime import datetime, timezone

from ..policy._model import Policy, PolicySet

__all__ = ["guide_fingerprint", "guide_html", "guide_markdown"]


def guide_fingerprint(policies: PolicySet) -> str:
    blob = json.dumps([[p.id, p.version, p.content_hash()] for p in policies], sort_keys=True)
    return "guide-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _when_text(when: dict[str, str | list[str]] | None) -> str:
    """``target = protected_group and attack = dehumanizes`` (lists as ``a or b``)."""
    if not when:
        return ""
    return " and ".join(f"{q} = {v if isinstance(v, str) else ' or '.join(v)}" for q, v in when.items())


def _logic_md(p: Policy) -> list[str]:
    out = [
        "### Decision questions",
        "",
        "Answer each question about the item, quoting the words your answer rests on (answers marked",
        "*no quote* need none). The rules and exceptions below follow from the answers: the item",
        "violates when a rule's conditions all hold and no exception's do. With decision logic on",
        "(`decision_logic`, opt-in), the model answers the same questions and cotmod derives its decision",
        "with the same table; otherwise the model judges the rules above directly.",
        "",
    ]
    for i, q in enumerate(p.questions, 1):
        out.append(f"{i}. **{q.id}**: {q.ask}")
        for a in q.answers:
            out.append(f"   - `{a.value}`: {a.meaning}{'' if a.evidence else ' (*no quote*)'}")
    out += ["", "| outcome | when the answers are |", "|---|---|"]
    for r in p.rules:
        out.append(f"| VIOLATES {r.id} {r.title} | {_when_text(r.when) or '(not decided by the questions)'} |")
    for e in p.exceptions:
        if e.when:
            out.append(f"| SAFE {e.id} {e.title} (overrides the rules) | {_when_text(e.when)} |")
    out.append("")
    return out


def _policy_md(p: Policy) -> list[str]:
    out = [f"## {p.title} (`{p.id}` v{p.version})", "", p.summary, ""]
    if p.definitions:
        out += ["### Definitions", ""] + [f"- **{d.term}**: {d.meaning}" for d in p.definitions] + [""]
    out += ["### Violates (cite the rule ID)", "", "| rule | title | what violates | severity | action |", "|---|---|---|---|---|"]
    for r in p.rules:
        out.append(f"| {r.id} | {r.title} | {r.description} | {r.severity} | {p.tier(r.severity).action} |")
    out.append("")
    if p.exceptions:
        out += ["### Safe: exceptions (cite the exception ID)", ""] + [f"- **{e.id} {e.title}**: {e.description}" for e in p.exceptions] + [""]
    if p.questions:
        out += _logic_md(p)
    else:
        out += ["### Decision flow", ""] + [f"{i}. {step}" for i, step in enumerate(p.checklist, 1)] + [""]
    out += ["### Severity and enforcement", "", "| severity | meaning | action | always escalate |", "|---|---|---|---|"]
    for s in p.severities:
        out.append(f"| {s.id} | {s.description} | {s.action} | {'yes' if s.escalate else 'no'} |")
    out.append("")
    if p.escalation:
        out += ["### Escalation to specialist queues", "", "| id | when | queue | SLA (hours) |", "|---|---|---|---|"]
        for x in p.escalation:
            out.append(f"| {x.id} | {x.when} | {x.queue} | {x.sla_hours if x.sla_hours is not None else '-'} |")
        out.append("")
    if p.examples:
        out += ["### Examples", ""]
        for ex in p.examples:
            label = "VIOLATES" if ex.decision == "violates" else "SAFE"
            out.append(f"- > {ex.text}")
            out.append(f"  **{label}** ({', '.join(ex.rule_ids) or 'no rule'}): {ex.rationale}")
            if ex.answers and p.questions:
                for qid, ans in ex.answers.items():
                    value, quote = (ans, "") if isinstance(ans, str) else (ans.answer, ans.quote)
                    out.append(f"  - {qid}: `{value}`" + (f' ("{quote}")' if quote else ""))
            for i, step in enumerate(ex.reasoning or [], 1):
                out.append(f"  {i}. {step}")
        out.append("")
    return out


def guide_markdown(policies: PolicySet, *, title: str = "Content moderation labeling guide") -> str:
    out = [
        f"# {title}",
        "",
        f"Policies: {', '.join(f'{p.id} v{p.version}' for p in policies)}  ",
        f"Guide fingerprint: `{guide_fingerprint(policies)}`  ",
        f"Generated: {datetime.now(timezone.utc).date().isoformat()} by cotmod from the policy files that also drive the LLM prompts.",
        "",
        "Label each item against each policy: decide VIOLATES or SAFE, cite the rule IDs (or the exception",
        "IDs for SAFE look-alikes), and follow the policy's decision questions (or its decision flow).",
        "The action follows from the severity.",
        "",
    ]
    for p in policies:
        out += _policy_md(p)
    return "\n".join(out).rstrip() + "\n"


def guide_html(policies: PolicySet, *, title: str = "Content moderation labeling guide") -> str:
    """A self-contained HTML page (no external assets), rendered from the same structure."""
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}</title><style>body{{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 16px;color:#1d232a}}"
        "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #dde2e7;padding:4px 8px;vertical-align:top;text-align:left}"
        "th{background:#f4f6f8}h2{border-bottom:1px solid #dde2e7;margin-top:36px}.v{color:#b3261e;font-weight:600}.s{color:#1e7b34;font-weight:600}"
        "blockquote{margin:4px 0;padding:4px 10px;background:#f7f8fa;border-left:3px solid #b8c0c8}.meta{color:#56606b}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class=meta>Policies: {esc(', '.join(f'{p.id} v{p.version}' for p in policies))} · guide fingerprint "
        f"<code>{guide_fingerprint(policies)}</code> · generated {datetime.now(timezone.utc).date().isoformat()} by cotmod from the policy files that also drive the LLM prompts.</p>",
    ]
    for p in policies:
        parts.append(f"<h2 id='{esc(p.id)}'>{esc(p.title)} <small>(<code>{esc(p.id)}</code> v{esc(p.version)})</small></h2><p>{esc(p.summary)}</p>")
        if p.definitions:
            parts.append("<h3>Definitions</h3><ul>" + "".join(f"<li><b>{esc(d.term)}</b>: {esc(d.meaning)}</li>" for d in p.definitions) + "</ul>")
        parts.append("<h3>Violates</h3><table><tr><th>rule</th><th>title</th><th>what violates</th><th>severity</th><th>action</th></tr>")
        for r in p.rules:
            parts.append(f"<tr><td><b>{esc(r.id)}</b></td><td>{esc(r.title)}</td><td>{esc(r.description)}</td><td>{esc(r.severity)}</td><td>{esc(p.tier(r.severity).action)}</td></tr>")
        parts.append("</table>")
        if p.exceptions:
            parts.append("<h3>Safe: exceptions</h3><ul>" + "".join(f"<li><b>{esc(e.id)} {esc(e.title)}</b>: {esc(e.description)}</li>" for e in p.exceptions) + "</ul>")
        if p.questions:
            parts.append(
                "<h3>Decision questions</h3><p>Answer each question, quoting the words your answer rests on (answers "
                "marked <i>no quote</i> need none). The item violates when a rule's conditions all hold and no "
                "exception's do. With decision logic on (<code>decision_logic</code>, opt-in), the model answers the same "
                "questions and cotmod derives its decision with the same table; otherwise the model judges the rules above "
                "directly.</p><ol>"
            )
            for q in p.questions:
                opts = "".join(
                    f"<li><code>{esc(a.value)}</code>: {esc(a.meaning)}{'' if a.evidence else ' (<i>no quote</i>)'}</li>" for a in q.answers
                )
                parts.append(f"<li><b>{esc(q.id)}</b>: {esc(q.ask)}<ul>{opts}</ul></li>")
            parts.append("</ol><table><tr><th>outcome</th><th>when the answers are</th></tr>")
            for r in p.rules:
                parts.append(f"<tr><td class=v>VIOLATES {esc(r.id)} {esc(r.title)}</td><td>{esc(_when_text(r.when) or '(not decided by the questions)')}</td></tr>")
            for e in p.exceptions:
                if e.when:
                    parts.append(f"<tr><td class=s>SAFE {esc(e.id)} {esc(e.title)} (overrides the rules)</td><td>{esc(_when_text(e.when))}</td></tr>")
            parts.append("</table>")
        else:
            parts.append("<h3>Decision flow</h3><ol>" + "".join(f"<li>{esc(s)}</li>" for s in p.checklist) + "</ol>")
        parts.append("<h3>Severity and enforcement</h3><table><tr><th>severity</th><th>meaning</th><th>action</th><th>always escalate</th></tr>")
        for s in p.severities:
            parts.append(f"<tr><td>{esc(s.id)}</td><td>{esc(s.description)}</td><td>{esc(s.action)}</td><td>{'yes' if s.escalate else 'no'}</td></tr>")
        parts.append("</table>")
        if p.escalation:
            parts.append("<h3>Escalation</h3><table><tr><th>id</th><th>when</th><th>queue</th><th>SLA (hours)</th></tr>")
            for x in p.escalation:
                parts.append(f"<tr><td>{esc(x.id)}</td><td>{esc(x.when)}</td><td>{esc(x.queue)}</td><td>{x.sla_hours if x.sla_hours is not None else '-'}</td></tr>")
            parts.append("</table>")
        if p.examples:
            parts.append("<h3>Examples</h3>")
            for ex in p.examples:
                cls, label = ("v", "VIOLATES") if ex.decision == "violates" else ("s", "SAFE")
                parts.append(f"<blockquote>{esc(ex.text)}</blockquote><p><span class={cls}>{label}</span> ({esc(', '.join(ex.rule_ids) or 'no rule')}): {esc(ex.rationale)}</p>")
                if ex.answers and p.questions:
                    rows = []
                    for qid, ans in ex.answers.items():
                        value, quote = (ans, "") if isinstance(ans, str) else (ans.answer, ans.quote)
                        rows.append(f"<li>{esc(qid)}: <code>{esc(value)}</code>" + (f" (&ldquo;{esc(quote)}&rdquo;)" if quote else "") + "</li>")
                    parts.append("<ul>" + "".join(rows) + "</ul>")
                if ex.reasoning:
                    parts.append("<ol>" + "".join(f"<li>{esc(step)}</li>" for step in ex.reasoning) + "</ol>")
    parts.append("</body></html>")
    return "\n".join(parts)
