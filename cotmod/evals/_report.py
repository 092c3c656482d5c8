"""Reports of a run: a terminal table and a self-contained HTML page with inline SVG plots.

Both render an :class:`EvalResult` through ``result.model_dump(mode="json")``, the very
dictionary :func:`write_metrics` saves as ``metrics.json`` and ``--json`` prints: every number in
the HTML is the one in ``metrics.json``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ._results import EvalResult

__all__ = [
    "attribution_html",
    "attribution_lines",
    "html_report",
    "one_class_notes",
    "text_table",
    "triage_html",
    "triage_lines",
    "undecided_note",
    "unfinished_note",
    "write_report",
]


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(v: Any) -> str:
    return "" if not v else f" [{v[0]:.3f}, {v[1]:.3f}]"


def undecided_note(result: EvalResult) -> str:
    """One line on the items sent to the model that have no verdict (empty when none)."""
    if not result.undecided:
        return ""
    return (
        f"{result.undecided} of {result.items} items not decided ({result.errors} error verdicts in "
        f"verdicts.errors.jsonl, {result.missing} not judged yet); the metrics cover the decided items"
    )


def unfinished_note(result: EvalResult) -> str:
    """One line when the run is not fully decided: items without a verdict (error verdicts or not
    judged yet), or a run that never finished (``manifest.json``: ``complete`` false); empty
    when every item sent has a verdict."""
    if result.undecided:
        return undecided_note(result)
    if result.manifest.complete is False:
        return "the run did not finish (manifest.json: complete is false): resume it with the same cotmod eval command"
    return ""


def one_class_notes(result: EvalResult) -> list[str]:
    """One line per label whose decided items are all positive or all negative: its precision
    (or recall) says nothing and no score threshold can be chosen on it. A run made with
    ``--limit`` is told why that may be: the first N items of the golden set in file order."""
    out: list[str] = []
    for label, e in result.labels.items():
        if e.n == 0 or 0 < e.support < e.n:
            continue
        if e.support == e.n:
            what = f"no negative items (all {e.n} decided items are positive): its precision and FPR are meaningless"
        else:
            what = f"no positive items (all {e.n} decided items are negative): its recall and precision are meaningless"
        limit = result.manifest.limit
        why = (
            f"; --limit {limit} took the first {limit} items of the golden set in file order "
            f": a file sorted by label gives a single class, so draw a seeded sample instead (--sample {limit} --seed S)"
            if limit is not None else ""
        )
        out.append(f"label {label} has {what}, and no score threshold can be tuned on it{why}")
    return out


def text_table(result: EvalResult) -> str:
    """The terminal summary of a run: a row per label (with 95% CIs), averages and root causes."""
    m = result.model_dump(mode="json")
    man = m["manifest"]
    lines = [
        f"run {m['run']}  model {man.get('model')}  fingerprint {man.get('prompt_fingerprint')}",
        f"golden {man['golden']['path']} ({man['golden']['rows']} rows)  policies "
        + ", ".join(f"{k} {v}" for k, v in man.get("policies", {}).items()),
        "",
        *(["INCOMPLETE RUN: not every item has been judged yet; resume it with the same cotmod eval command", ""] if man.get("complete") is False else []),
        *([undecided_note(result), ""] if result.undecided else []),
        f"{'label':<16}{'n':>6}{'support':>9}{'precision':>26}{'recall':>26}{'F1':>26}{'FPR':>8}{'AUPRC':>8}{'ROC-AUC':>9}{'ECE':>7}{'err%':>7}",
    ]
    for label, e in m["labels"].items():
        ci = e["ci95"]
        cal = e.get("calibration") or {}
        lines.append(
            f"{label:<16}{e['n']:>6}{e['support']:>9}"
            f"{_f(e['precision']) + _ci(ci['precision']):>26}{_f(e['recall']) + _ci(ci['recall']):>26}"
            f"{_f(e['f1']) + _ci(ci['f1']):>26}{_f(e['fpr']):>8}{_f(e['auprc']):>8}{_f(e['roc_auc']):>9}"
            f"{_f(cal.get('ece')):>7}{100 * e['error_rate']:>6.1f}%"
        )
    mi, ma = m["micro"], m["macro"]
    lines.append(f"{'micro':<16}{'':>6}{'':>9}{_f(mi['precision']):>26}{_f(mi['recall']):>26}{_f(mi['f1']):>26}{_f(mi['fpr']):>8}")
    lines.append(f"{'macro':<16}{'':>6}{'':>9}{_f(ma['precision']):>26}{_f(ma['recall']):>26}{_f(ma['f1']):>26}{_f(ma['fpr']):>8}")
    for label, e in m["labels"].items():
        rca = e["rca"]
        lines.append("")
        lines.append(f"{label}: {rca['false_positives']} false positives, {rca['false_negatives']} false negatives")
        if rca["fp_by_rule"]:
            lines.append("  false positives by cited rule: " + ", ".join(f"{k} {v}" for k, v in rca["fp_by_rule"].items()))
        if len(e["policies"]) > 1 and e.get("per_policy"):
            lines.append(
                "  flagged by policy (true/false positives): "
                + ", ".join(f"{pid} {a['true_positive']}/{a['false_positive']}" for pid, a in e["per_policy"].items() if a["flagged"])
            )
        for stratum, table in rca["by_stratum"].items():
            worst = [(k, v) for k, v in table.items() if v["errors"]][:6]
            if worst:
                lines.append(f"  errors by {stratum}: " + ", ".join(f"{k} {v['fp']}fp/{v['fn']}fn of {v['n']}" for k, v in worst))
    lines.extend(attribution_lines(m.get("attribution")))
    lines.extend(triage_lines(m.get("triage")))
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _pci(v: Any) -> str:
    return "" if not v else f" [{100 * v[0]:.1f}, {100 * v[1]:.1f}]"


def _shows_attribution(a: dict[str, Any] | None) -> bool:
    """Attribution is worth showing when several policies are in play (with one, it repeats the label's figures)."""
    return a is not None and len(a["policies"]) > 1


def attribution_lines(a: dict[str, Any] | None) -> list[str]:
    """The compact terminal lines of the attribution figures (empty when one policy is in play)."""
    if a is None or not _shows_attribution(a):
        return []
    err = (
        f"; {a['errors']} error verdicts left out ({a['errors_harmful']} harmful, {a['errors_benign']} benign)"
        if a["errors"] else ""
    )
    miss = f"; {a['missing']} not judged yet" if a["missing"] else ""
    dist = a["blamed_distribution"]
    lines = [
        "",
        f"attribution: {len(a['policies'])} policies in play; {a['decided']} decided items "
        f"({a['harmful']} harmful, {a['benign']} benign){err}{miss}",
        f"  benign with no flag: {a['benign_no_flag']}/{a['benign']} = {_pct(a['benign_no_flag_share'])}{_pci(a['benign_no_flag_ci95'])}",
        f"  harmful items: flagged {_pct(a['harmful_flagged_share'])}, by one of their own labels' policies "
        f"{_pct(a['own_policy_share'])}{_pci(a['own_policy_ci95'])}; policies blamed per item "
        f"{_f(a['blamed_per_harmful'], 2)}{_ci(a['blamed_per_harmful_ci95'])} "
        f"(0: {dist['0']}, 1: {dist['1']}, 2: {dist['2']}, 3+: {dist['3+']})",
        f"  {'policy':<22}{'flagged':>8}{'correct':>8}{'benign':>7}{'other':>7}{'precision [95% CI]':>27}{'recall':>16}",
    ]
    for pid, b in a["per_policy"].items():
        if not b["flagged"] and not b["expected"]:
            continue
        rec = f"{_f(b['recall'])} of {b['expected']}"
        lines.append(
            f"  {pid:<22}{b['flagged']:>8}{b['correct']:>8}{b['benign']:>7}{b['other_harm']:>7}"
            f"{_f(b['precision']) + _ci(b['precision_ci95']):>27}{rec:>16}"
        )
    lines.append(
        "  label recall by own policy (own / other policy only / no flag): "
        + ", ".join(f"{lab} {_f(e['recall'])} ({e['own_policy']}/{e['other_policy_only']}/{e['no_flag']})" for lab, e in a["per_label"].items())
    )
    lines.append("  gold × flagged policy:")
    for row, r in a["matrix"].items():
        cells = ", ".join(f"{pid} {n}" for pid, n in sorted(r["flagged_by"].items(), key=lambda kv: -kv[1]) if n)
        lines.append(f"    {row} ({r['items']}): {cells or 'no flags'}; no flag {r['no_flag']}")
    return lines


def _triage_setting(t: dict[str, Any]) -> str:
    if not t.get("settings_recorded", True):
        return f"its threshold is not recorded (a run made before cotmod recorded it); at most {t['max_policies']} policies selected"
    how = f"P(yes) >= {t['threshold']:g}" if t.get("threshold") is not None else "the sampled yes/no"
    floor = f", at least {t['min_policies']} (the most likely)" if t.get("min_policies") else ""
    return f"at most {t['max_policies']} policies{floor}, selected by {how}"


def triage_lines(t: dict[str, Any] | None) -> list[str]:
    """The terminal lines on triage's reach (empty when triage did not run)."""
    if t is None:
        return []
    fb = f" ({t['fallbacks']} fell back to judging every policy, left out)" if t["fallbacks"] else ""
    lines = [
        "",
        f"triage: {t['ran']} decided items triaged{fb}; {_triage_setting(t)}",
        f"  harmful items sent to one of their own policies: {t['own_policy_reached']}/{t['harmful']} = "
        f"{_pct(t['own_policy_reached_share'])}{_pci(t['own_policy_reached_ci95'])}"
        + (f"; {t['missed']} never judged under their own policy" if t["missed"] else ""),
        f"  benign items sent to no policy call: {t['benign_none']}/{t['benign']} = "
        f"{_pct(t['benign_none_share'])}{_pci(t['benign_none_ci95'])}; policies selected per item {_f(t['selected_per_item'], 2)}",
    ]
    labs = [(lab, e) for lab, e in t["per_label"].items() if e["positives"]]
    if labs:
        lines.append("  per label (own policy selected): " + ", ".join(f"{lab} {e['reached']}/{e['positives']}" for lab, e in labs))
    if t["sweep"]:
        lines.append("  at other thresholds, from the recorded P(yes) (no new calls; what the added policy calls would decide is unknown):")
        lines.append(f"    {'P(yes) >=':<11}{'own policy':>11}{'benign none':>13}{'policies/item':>15}")
        for pt in t["sweep"]:
            lines.append(
                f"    {pt['threshold']:<11g}{_pct(pt['own_policy_reached']):>11}{_pct(pt['benign_none']):>13}{_f(pt['selected_per_item'], 2):>15}"
            )
    return lines


def triage_html(t: dict[str, Any] | None) -> str:
    """The HTML section on triage's reach (empty when triage did not run)."""
    if t is None:
        return ""
    esc = html.escape
    out = [
        "<h2>Triage: which policies got their call</h2>",
        f"<p>{t['ran']} decided items triaged; {esc(_triage_setting(t))}."
        + (f" {t['fallbacks']} fell back to judging every policy and are left out." if t["fallbacks"] else "")
        + " A policy triage leaves out is allowed without being judged, so triage caps recall.</p>",
        "<table><tr><th>figure</th><th>value [95% CI]</th><th>items</th></tr>",
        f"<tr><td class=l>harmful items sent to one of their own policies</td><td data-metric='triage.own_policy_reached_share'>"
        f"{_pct(t['own_policy_reached_share'])}{_pci(t['own_policy_reached_ci95'])}</td><td>{t['own_policy_reached']} of {t['harmful']}</td></tr>",
        f"<tr><td class=l>benign items sent to no policy call</td><td data-metric='triage.benign_none_share'>"
        f"{_pct(t['benign_none_share'])}{_pci(t['benign_none_ci95'])}</td><td>{t['benign_none']} of {t['benign']}</td></tr>",
        f"<tr><td class=l>policies selected per item</td><td data-metric='triage.selected_per_item'>{_f(t['selected_per_item'], 2)}</td>"
        f"<td>{t['ran']}</td></tr></table>",
    ]
    labs = [(lab, e) for lab, e in t["per_label"].items() if e["positives"]]
    if labs:
        out.append("<h3>Per label</h3><table><tr><th>label</th><th>positives</th><th>sent to its policy</th><th>share</th></tr>")
        for lab, e in labs:
            out.append(
                f"<tr><td class=l>{esc(lab)}</td><td>{e['positives']}</td><td data-metric='triage.{esc(lab)}.reached'>{e['reached']}</td>"
                f"<td>{_pct(e['share'])}</td></tr>"
            )
        out.append("</table>")
    if t["sweep"]:
        out.append(
            "<h3>At other thresholds</h3><p class=meta>Recomputed from the recorded P(yes) of each item (no new calls). "
            "The policy calls a lower threshold adds were not made, so what they would decide is unknown; "
            "threshold 0 always sends the most likely policies.</p>"
            "<table><tr><th>P(yes) &ge;</th><th>harmful items sent to their own policy</th><th>benign items sent to none</th>"
            "<th>policies per item</th></tr>"
        )
        for pt in t["sweep"]:
            mark = " class=here" if t.get("threshold") is not None and abs(pt["threshold"] - t["threshold"]) < 1e-9 else ""
            out.append(
                f"<tr{mark}><td>{pt['threshold']:g}</td><td data-metric='triage.sweep.{pt['threshold']:g}.own'>{_pct(pt['own_policy_reached'])}</td>"
                f"<td>{_pct(pt['benign_none'])}</td><td>{_f(pt['selected_per_item'], 2)}</td></tr>"
            )
        out.append("</table>")
    return "\n".join(out)


# -- SVG -------------------------------------------------------------------------------------------

W, H, PAD = 320, 240, 40


def _axes(title: str, xlabel: str, ylabel: str) -> list[str]:
    x0, y0, x1, y1 = PAD, H - PAD, W - 10, 20
    out = [
        f'<text x="{W / 2}" y="14" text-anchor="middle" class="t">{html.escape(title)}</text>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="ax"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="ax"/>',
        f'<text x="{(x0 + x1) / 2}" y="{H - 6}" text-anchor="middle" class="l">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{(y0 + y1) / 2}" text-anchor="middle" class="l" transform="rotate(-90 12 {(y0 + y1) / 2})">{html.escape(ylabel)}</text>',
    ]
    for v in (0, 0.5, 1):
        x, y = _sx(v), _sy(v)
        out.append(f'<text x="{x}" y="{y0 + 14}" text-anchor="middle" class="k">{v}</text>')
        out.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end" class="k">{v}</text>')
    return out


def _sx(v: float) -> float:
    return PAD + v * (W - 10 - PAD)


def _sy(v: float) -> float:
    return (H - PAD) - v * (H - PAD - 20)


def _svg(parts: list[str]) -> str:
    return f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">' + "".join(parts) + "</svg>"


def pr_svg(curve: list[dict[str, float]], point: tuple[float, float] | None) -> str:
    parts = _axes("Precision–recall", "recall", "precision")
    pts = [(0.0, curve[0]["precision"] if curve else 1.0)] + [(c["recall"], c["precision"]) for c in curve]
    if len(pts) > 1:
        d = " ".join(f"{_sx(r):.1f},{_sy(p):.1f}" for r, p in pts)
        parts.append(f'<polyline points="{d}" class="curve"/>')
    if point:
        parts.append(f'<circle cx="{_sx(point[0]):.1f}" cy="{_sy(point[1]):.1f}" r="4" class="pt"><title>operating point</title></circle>')
    return _svg(parts)


def calibration_svg(cal: dict[str, Any] | None) -> str:
    parts = _axes(f"Calibration (ECE {_f((cal or {}).get('ece'))})", "mean score", "fraction positive")
    parts.append(f'<line x1="{_sx(0)}" y1="{_sy(0)}" x2="{_sx(1)}" y2="{_sy(1)}" class="diag"/>')
    for b in (cal or {}).get("bins", []):
        parts.append(
            f'<circle cx="{_sx(b["mean_score"]):.1f}" cy="{_sy(b["fraction_positive"]):.1f}" r="{min(3 + b["n"] ** 0.5, 12):.1f}" class="bin">'
            f"<title>{b['n']} items, score {b['mean_score']:.2f}, positive {b['fraction_positive']:.2f}</title></circle>"
        )
    return _svg(parts)


def _confusion_html(c: dict[str, int]) -> str:
    return (
        '<table class="cm"><tr><th></th><th>predicted violates</th><th>predicted safe</th></tr>'
        f'<tr><th>gold violates</th><td class="good">TP {c["tp"]}</td><td class="bad">FN {c["fn"]}</td></tr>'
        f'<tr><th>gold safe</th><td class="bad">FP {c["fp"]}</td><td class="good">TN {c["tn"]}</td></tr></table>'
    )


def attribution_html(a: dict[str, Any] | None) -> str:
    """The HTML section on which policy was blamed: headline figures, the gold-category ×
    flagged-policy matrix, per-policy and per-label tables (empty when one policy is in play)."""
    if a is None or not _shows_attribution(a):
        return ""
    esc = html.escape
    labels = [row for row in a["matrix"] if row in a["per_label"]]
    pols = a["policies"]
    dist = a["blamed_distribution"]
    out = [
        "<h2>Attribution: which policy was blamed</h2>",
        f"<p>{len(pols)} policies in play; {a['decided']} decided items: {a['harmful']} harmful (a known label 1), "
        f"{a['benign']} benign (known labels all 0)."
        + (
            f" <b>{a['errors']} error verdicts</b> are left out of every figure ({a['errors_harmful']} harmful, "
            f"{a['errors_benign']} benign): an error is neither a flag nor a non-flag."
            if a["errors"] else ""
        )
        + (f" {a['missing']} items not judged yet." if a["missing"] else "")
        + "</p>",
        "<table><tr><th>figure</th><th>value [95% CI]</th><th>items</th></tr>",
        f"<tr><td class=l>benign items with no flag at all</td><td data-metric='attribution.benign_no_flag_share'>"
        f"{_pct(a['benign_no_flag_share'])}{_pci(a['benign_no_flag_ci95'])}</td><td>{a['benign_no_flag']} of {a['benign']}</td></tr>",
        f"<tr><td class=l>harmful items flagged by any policy</td><td data-metric='attribution.harmful_flagged_share'>"
        f"{_pct(a['harmful_flagged_share'])}</td><td>{a['harmful_flagged']} of {a['harmful']}</td></tr>",
        f"<tr><td class=l>harmful items flagged by one of their own labels' policies</td><td data-metric='attribution.own_policy_share'>"
        f"{_pct(a['own_policy_share'])}{_pci(a['own_policy_ci95'])}</td><td>{a['harmful']}</td></tr>",
        f"<tr><td class=l>policies blamed per harmful item (mean)</td><td data-metric='attribution.blamed_per_harmful'>"
        f"{_f(a['blamed_per_harmful'], 2)}{_ci(a['blamed_per_harmful_ci95'])}</td>"
        f"<td>0: {dist['0']} · 1: {dist['1']} · 2: {dist['2']} · 3+: {dist['3+']}</td></tr></table>",
        "<h3>Gold category × flagged policy</h3>",
        "<p class=meta>Rows: items gold-positive on each label (an item with two labels is in both rows), and the benign items. "
        "Cells: items of the row that the column's policy flagged (an item flagged by two policies counts in both). "
        "Green: a policy mapped to the row's label; red: a flag on a benign item; amber: another label's policy.</p>",
        '<table class="am"><tr><th>gold \\ flagged</th><th>items</th>'
        + "".join(f"<th>{esc(pid)}</th>" for pid in pols)
        + "<th>no flag</th></tr>",
    ]
    for row, r in a["matrix"].items():
        own = set()
        if row in a["per_label"]:
            own = {pid for pid in pols if pid in _label_policies(a, row)}
        cells = []
        for pid in pols:
            n = r["flagged_by"].get(pid, 0)
            cls = "" if not n else ("good" if pid in own else ("bad" if row not in labels else "warn"))
            share = f"{100 * n / r['items']:.0f}%" if r["items"] else "–"
            cells.append(f"<td class='{cls}' data-cell='{esc(row)}|{esc(pid)}' title='{n} of {r['items']} ({share})'>{n}</td>")
        out.append(
            f"<tr><th>{esc(row)}</th><td>{r['items']}</td>" + "".join(cells)
            + f"<td data-cell='{esc(row)}|no flag'>{r['no_flag']}</td></tr>"
        )
    out.append("</table>")
    out.append(
        "<h3>Per policy</h3><p class=meta>A flag is correct when the item is gold-positive on a label mapped to the policy "
        "(its most specific labels: a catch-all label next to a specific one does not count). Unverifiable: wrong flags on "
        "items where a label the policy decides is unknown.</p><table><tr><th>policy</th><th>flagged</th><th>correct</th>"
        "<th>on benign</th><th>on other harm</th><th>unverifiable</th><th>precision [95% CI]</th><th>expected</th><th>recall</th></tr>"
    )
    for pid, b in a["per_policy"].items():
        out.append(
            f"<tr><td class=l>{esc(pid)}</td><td>{b['flagged']}</td><td>{b['correct']}</td><td>{b['benign']}</td>"
            f"<td>{b['other_harm']}</td><td>{b['unverifiable']}</td>"
            f"<td data-metric='attribution.{esc(pid)}.precision'>{_f(b['precision'])}{_ci(b['precision_ci95'])}</td>"
            f"<td>{b['expected']}</td><td>{_f(b['recall'])}</td></tr>"
        )
    out.append(
        "</table><h3>Per gold label</h3><table><tr><th>label</th><th>positives</th><th>flagged by its own policy</th>"
        "<th>only another policy</th><th>no flag</th><th>recall [95% CI]</th></tr>"
    )
    for lab, e in a["per_label"].items():
        out.append(
            f"<tr><td class=l>{esc(lab)}</td><td>{e['positives']}</td><td>{e['own_policy']}</td><td>{e['other_policy_only']}</td>"
            f"<td>{e['no_flag']}</td><td>{_f(e['recall'])}{_ci(e['recall_ci95'])}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _label_policies(a: dict[str, Any], label: str) -> set[str]:
    """The policies that decide ``label`` (as the attribution figures record them)."""
    return set(a.get("label_policies", {}).get(label, []))


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d232a;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde2e7;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.meta{color:#56606b;font-size:13px}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #dde2e7;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f4f6f8;text-align:left}td.l{text-align:left}.cm td{min-width:110px;text-align:center}
.good{background:#e8f5ec}.bad{background:#fdecec}.plots{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
svg{background:#fff;border:1px solid #dde2e7;border-radius:4px}.t{font-size:12px;font-weight:600}svg .l,svg .k{font-size:10px;fill:#56606b}
.ax{stroke:#8a949e}.curve{fill:none;stroke:#2f6fb3;stroke-width:2}.pt{fill:#d1495b}.diag{stroke:#b8c0c8;stroke-dasharray:4 3}
.bin{fill:#2f6fb3;fill-opacity:.55}.warn{background:#fff4de}.am td{min-width:56px;text-align:center}details{margin:4px 0}summary{cursor:pointer}.ex{font-size:13px}.ex td{max-width:520px}
tr.here td{font-weight:600;background:#eef4fb}
"""


def write_report(result: EvalResult, run_dir: str | Path | None = None) -> Path:
    """Write :func:`html_report` as ``report.html`` into ``run_dir`` (default: the run it measures)."""
    path = Path(run_dir if run_dir is not None else result.run) / "report.html"
    path.write_text(html_report(result), encoding="utf-8")
    return path


def html_report(result: EvalResult) -> str:
    """A self-contained HTML page: summary table, plots, per-rule and per-policy tables, root causes."""
    m = result.model_dump(mode="json")
    man = m["manifest"]
    esc = html.escape
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>cotmod eval — {esc(str(man['mapping']['name']))}</title><style>{CSS}</style></head><body>",
        f"<h1>cotmod evaluation: {esc(str(man['mapping']['name']))}</h1>",
        *(["<p><b>Incomplete run</b>: not every item has been judged yet; resume it with the same <code>cotmod eval</code> command.</p>"] if man.get("complete") is False else []),
        *([f"<p><b>Undecided items</b>: {esc(undecided_note(result))}</p>"] if result.undecided else []),
        f'<p class="meta">model <b>{esc(str(man.get("model")))}</b> · prompt fingerprint <code>{esc(str(man.get("prompt_fingerprint")))}</code> · '
        f"policies {esc(', '.join(f'{k} {v}' for k, v in man.get('policies', {}).items()))} · golden set "
        f"<code>{esc(man['golden']['path'])}</code> ({man['golden']['rows']} rows, sha256 {man['golden']['sha256'][:12]}…) · "
        f"cotmod {esc(str(man.get('cotmod_version')))} · {esc(str(man.get('created_at')))}</p>",
        "<h2>Summary</h2><table><tr><th>label</th><th>policies</th><th>n</th><th>support</th><th>precision [95% CI]</th>"
        "<th>recall [95% CI]</th><th>F1 [95% CI]</th><th>FPR</th><th>AUPRC</th><th>ROC-AUC</th><th>ECE</th><th>errors</th></tr>",
    ]
    for label, e in m["labels"].items():
        ci = e["ci95"]
        out.append(
            f"<tr><td class=l>{esc(label)}</td><td class=l>{esc(', '.join(e['policies']))}</td><td>{e['n']}</td><td>{e['support']}</td>"
            f"<td data-metric='{esc(label)}.precision'>{_f(e['precision'])}{_ci(ci['precision'])}</td>"
            f"<td data-metric='{esc(label)}.recall'>{_f(e['recall'])}{_ci(ci['recall'])}</td>"
            f"<td data-metric='{esc(label)}.f1'>{_f(e['f1'])}{_ci(ci['f1'])}</td>"
            f"<td data-metric='{esc(label)}.fpr'>{_f(e['fpr'])}</td><td data-metric='{esc(label)}.auprc'>{_f(e['auprc'])}</td>"
            f"<td data-metric='{esc(label)}.roc_auc'>{_f(e['roc_auc'])}</td><td>{_f((e.get('calibration') or {}).get('ece'))}</td>"
            f"<td>{100 * e['error_rate']:.1f}%</td></tr>"
        )
    mi, ma = m["micro"], m["macro"]
    out.append(f"<tr><td class=l>micro</td><td></td><td></td><td></td><td>{_f(mi['precision'])}</td><td>{_f(mi['recall'])}</td><td>{_f(mi['f1'])}</td><td>{_f(mi['fpr'])}</td><td colspan=4></td></tr>")
    out.append(f"<tr><td class=l>macro</td><td></td><td></td><td></td><td>{_f(ma['precision'])}</td><td>{_f(ma['recall'])}</td><td>{_f(ma['f1'])}</td><td>{_f(ma['fpr'])}</td><td colspan=4></td></tr></table>")
    if m.get("thresholds"):
        out.append("<p class=meta>Thresholds applied: " + esc(str(m["thresholds"])) + "</p>")
    section = attribution_html(m.get("attribution"))
    if section:
        out.append(section)
    section = triage_html(m.get("triage"))
    if section:
        out.append(section)
    for label, e in m["labels"].items():
        out.append(f"<h2>{esc(label)}</h2><div class=plots>")
        out.append(_confusion_html(e["confusion"]))
        out.append(pr_svg(e["pr_curve"], (e["recall"], e["precision"])))
        out.append(calibration_svg(e.get("calibration")))
        out.append("</div>")
        if e["per_rule"]:
            out.append("<h3>Per rule</h3><table><tr><th>rule</th><th>cited</th><th>true positives</th><th>false positives</th><th>precision</th><th>expected</th><th>recall</th></tr>")
            for rule, r in e["per_rule"].items():
                out.append(
                    f"<tr><td class=l>{esc(rule)}</td><td>{r['cited']}</td><td>{r['true_positive']}</td><td>{r['false_positive']}</td>"
                    f"<td>{_f(r['precision'])}</td><td>{r['expected']}</td><td>{_f(r['recall'])}</td></tr>"
                )
            out.append("</table>")
        if len(e["policies"]) > 1 and e.get("per_policy"):
            out.append(
                "<h3>Per policy (which policy flagged the item)</h3><table><tr><th>policy</th><th>flagged</th>"
                "<th>true positives</th><th>false positives</th><th>precision</th><th>only this policy</th></tr>"
            )
            for pid, a in e["per_policy"].items():
                out.append(
                    f"<tr><td class=l>{esc(pid)}</td><td>{a['flagged']}</td><td>{a['true_positive']}</td><td>{a['false_positive']}</td>"
                    f"<td>{_f(a['precision'])}</td><td>{a['only_this_policy']}</td></tr>"
                )
            out.append("</table>")
        rca = e["rca"]
        out.append(f"<h3>Root causes: {rca['false_positives']} false positives, {rca['false_negatives']} false negatives</h3>")
        for stratum, table in rca["by_stratum"].items():
            out.append(f"<details open><summary>errors by {esc(stratum)}</summary><table><tr><th>{esc(stratum)}</th><th>n</th><th>FP</th><th>FN</th></tr>")
            for k, v in list(table.items())[:30]:
                out.append(f"<tr><td class=l>{esc(k)}</td><td>{v['n']}</td><td>{v['fp']}</td><td>{v['fn']}</td></tr>")
            out.append("</table></details>")
        for kind, key in (("False positives", "fp_examples"), ("False negatives", "fn_examples")):
            ex = rca[key]
            if not ex:
                continue
            out.append(f"<details><summary>{kind} ({len(ex)} shown)</summary><table class=ex><tr><th>id</th><th>text</th><th>score</th><th>rules</th><th>rationale / reasoning</th></tr>")
            for r in ex:
                reasoning = "<br>".join(esc(x) for x in r["reasoning"][:6])
                out.append(
                    f"<tr><td class=l>{esc(r['id'])}</td><td class=l>{esc(r['text'])}</td><td>{_f(r['score'], 2)}</td>"
                    f"<td class=l>{esc(', '.join(r['rules']))}</td><td class=l>{esc(r['rationale'])}<br><small>{reasoning}</small></td></tr>"
                )
            out.append("</table></details>")
    out.append("</body></html>")
    return "\n".join(out)
