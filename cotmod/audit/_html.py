"""The audit report as one self-contained HTML page: inline CSS and SVG, no script, no network.

Every number on the page comes from :meth:`AuditReport.to_dict` (what ``--json`` prints): per
policy the estimates with their 95% CIs as a dot-and-whisker plot, agreement and kappa, the
strata table and the disagreements with both rationales.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

__all__ = ["audit_html", "write_audit_html"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;vertical-align:top}
th{background:#f3f3f3}.num{text-align:right}.muted{color:#777}h2{border-bottom:2px solid #ddd}"""


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("value") is None:
        return "-" if not iv else f"- ({html.escape(str(iv.get('reason', '')))})"
    return f"{_f(iv['value'])} [{_f(iv['low'])}, {_f(iv['high'])}]"


def _plot(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Dots with 95% CI whiskers on a 0..1 axis, one row per estimate."""
    W, row_h, x0, x1 = 560, 22, 190, 540
    h = row_h * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" role="img">']
    for t in (0, 0.25, 0.5, 0.75, 1):
        x = x0 + t * (x1 - x0)
        parts.append(f'<line x1="{x}" y1="5" x2="{x}" y2="{h - 20}" stroke="#eee"/><text x="{x}" y="{h - 6}" font-size="10" text-anchor="middle">{t:g}</text>')
    for i, (name, iv) in enumerate(rows):
        y = 15 + i * row_h
        parts.append(f'<text x="{x0 - 8}" y="{y + 4}" font-size="11" text-anchor="end">{html.escape(name)}</text>')
        if iv and iv.get("value") is not None and iv.get("low") is not None:
            lo, hi, v = (x0 + iv[k] * (x1 - x0) for k in ("low", "high", "value"))
            parts.append(f'<line x1="{lo}" y1="{y}" x2="{hi}" y2="{y}" stroke="#36c" stroke-width="2"/>')
            parts.append(f'<circle cx="{v}" cy="{y}" r="4" fill="#36c"><title>{html.escape(_ci(iv))}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def audit_html(data: dict[str, Any]) -> str:
    """The page for a report's ``to_dict()``."""
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cotmod audit</title>",
        f"<style>{_CSS}</style></head><body><h1>cotmod audit</h1>",
        f"<p>decisions <code>{e(str(data['decisions_file']))}</code> (sha256 {e(str(data['decisions_sha256'])[:12])}…), "
        f"plan <code>{e(str(data['plan']))}</code>, auditor <b>{e(str(data['auditor_model']))}</b>, {e(str(data['created_at']))}</p>",
    ]
    for p in data["policies"]:
        out.append(f"<h2>{e(p['policy'])} {e(p['version'])}</h2>")
        out.append(
            f"<p>population {p['population']}, flagged {p['flagged']} (flag rate {_f(p['flag_rate'])}, a census); "
            f"sampled {p['planned']}, audited {p['audited']}, auditor errors {p['auditor_errors']}, not audited {p['not_audited']}; "
            f"human labels {p['human_labels']} (control {p['control_labels']}). Headline truth: <b>{e(p['headline'])}</b>.</p>"
        )
        out.append("<table><tr><th>statistic</th><th>value [95% CI]</th></tr>")
        out.append(f"<tr><td>agreement (production vs auditor, weighted)</td><td>{_ci(p['agreement'])}</td></tr>")
        out.append(f"<tr><td>Cohen's kappa (production vs auditor)</td><td>{_ci(p['kappa'])}</td></tr>")
        if p.get("auditor_vs_human"):
            out.append(f"<tr><td>kappa auditor vs human (all labelled)</td><td>{_ci(p['auditor_vs_human'])}</td></tr>")
        if p.get("auditor_vs_human_control"):
            out.append(f"<tr><td>kappa auditor vs human (control sample)</td><td>{_ci(p['auditor_vs_human_control'])}</td></tr>")
        out.append("</table>")
        rows = []
        out.append("<table><tr><th>truth</th><th>precision</th><th>recall</th><th>prevalence</th></tr>")
        for kind, est in p["estimates"].items():
            out.append(f"<tr><td>{e(kind)}</td>" + "".join(f"<td>{_ci(est[k])}</td>" for k in ("precision", "recall", "prevalence")) + "</tr>")
            rows += [(f"{k} ({kind})", est[k]) for k in ("precision", "recall", "prevalence")]
        out.append("</table>" + _plot(rows))
        for fname, vals in (p.get("by_field") or {}).items():
            out.append(f"<h3>by {e(fname)} (auditor as truth)</h3><table><tr><th>{e(fname)}</th><th>precision</th><th>recall</th><th>prevalence</th></tr>")
            for val, kinds in vals.items():
                est = kinds["auditor"]
                out.append(f"<tr><td>{e(val)}</td>" + "".join(f"<td>{_ci(est[k])}</td>" for k in ("precision", "recall", "prevalence")) + "</tr>")
            out.append("</table>")
        out.append("<h3>strata</h3><table><tr><th>stratum</th><th>N_h</th><th>n_h</th><th>inclusion</th><th>audited</th><th>auditor violates</th><th>agree</th></tr>")
        for s in p["strata"]:
            out.append(
                f"<tr><td>{e(s['stratum'])}</td><td class=num>{s['N_h']}</td><td class=num>{s['n_h']}</td><td class=num>{s['inclusion']:.4f}</td>"
                f"<td class=num>{s['audited']}</td><td class=num>{s['auditor_violates']}</td><td class=num>{s['agree']}</td></tr>"
            )
        out.append("</table>")
        out.append(f"<h3>disagreements ({len(p['disagreements'])})</h3><table><tr><th>id</th><th>text</th><th>production</th><th>auditor</th><th>human</th></tr>")
        for dg in p["disagreements"]:
            prod = f"{'violates' if dg['production_flagged'] else 'safe'} {_f(dg['production_score'], 2)} {e(', '.join(dg['production_rules']))}<br><span class=muted>{e(dg['production_rationale'])}</span>"
            aud = f"{'violates' if dg['auditor_violates'] else 'safe'} {_f(dg['auditor_score'], 2)} {e(', '.join(dg['auditor_rules']))}<br><span class=muted>{e(dg['auditor_rationale'])}</span>"
            hum = "-" if dg["human"] is None else ("violates" if dg["human"] else "safe")
            out.append(f"<tr><td>{e(dg['id'])}</td><td>{e(dg['text'][:300])}</td><td>{prod}</td><td>{aud}</td><td>{hum}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_audit_html(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(audit_html(data), encoding="utf-8")
