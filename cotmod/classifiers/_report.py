"""The HTML report of ``cotmod monitor``: a self-contained page (inline CSS and SVG; no script, no
network) with a summary table of the alerts at the top and, per label and stratum group, one
time-series plot per statistic (PSI, Jensen-Shannon, KS, Wasserstein, flag rate).

It renders ``report.model_dump(mode="json")``, the very dictionary ``cotmod monitor --json``
prints: every number on the page is one of that dictionary's (a plot's band is the reference flag
rate plus the difference's 95% CI, both from it). In each plot:

* a blue line and dots: the statistic per chunk, in chunk order; a chunk alerting on this
  statistic is a red dot, one alerting on another statistic a blue dot ringed in red (tooltips
  name the statistics that alerted);
* a dashed red line: the alert limit (data-driven limits may differ between chunks of different
  sizes, so the line steps; for the flag rate there is a lower and an upper limit);
* with constant limits, the KS plot shows ``-log10(p)`` and its limit ``-log10(ks_p limit)``
  (the constant KS limit is on the p-value); the flag-rate limit is on the test's p-value, so
  that plot shows no limit line: the band leaving the reference line is the significant change;
* flag rate: the shaded band is the reference flag rate + the 95% CI of the difference (chunk
  minus reference), the grey line the reference flag rate.

A group whose flag rate is None (value series of a verdict log, such as tokens per item) gets no
flag-rate plot.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["monitor_html", "write_monitor_html"]

W, H = 340, 200
X0, X1, Y0, Y1 = 54, W - 10, H - 34, 34  # plot area: x from X0 to X1, y from Y0 (bottom) to Y1 (top)

_TITLES = {
    "psi": "PSI",
    "js": "Jensen-Shannon distance",
    "ks": "Kolmogorov-Smirnov statistic",
    "wasserstein": "Wasserstein distance",
    "flag_rate": "Flag rate",
}
_STATS = ("psi", "js", "ks", "wasserstein", "flag_rate")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1160px;color:#1d232a;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #dde2e7;padding-bottom:4px}
.meta{color:#56606b;font-size:13px}.note{color:#8a5a00;font-size:13px}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #dde2e7;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f4f6f8;text-align:left}td.l{text-align:left}tr.alerting td{background:#fdecec}
.plots{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}
svg.plot{background:#fff;border:1px solid #dde2e7;border-radius:4px}.t{font-size:12px;font-weight:600}.k{font-size:10px;fill:#56606b}
.ax{stroke:#8a949e}.grid{stroke:#eef1f4}.series{fill:none;stroke:#2f6fb3;stroke-width:1.6}.pt{fill:#2f6fb3}
.alert{fill:#d1242f;stroke:#fff;stroke-width:1}.alert-other{fill:#2f6fb3;stroke:#d1242f;stroke-width:1.5}.limit{fill:none;stroke:#d1242f;stroke-width:1.2;stroke-dasharray:5 3}
.refline{stroke:#6b7580;stroke-width:1.2}.band{fill:#2f6fb3;fill-opacity:.16;stroke:none}.ok{color:#1a7f37}.bad{color:#d1242f;font-weight:600}
"""


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}g}"
    return str(v)


def _num(v: Any) -> float | None:
    """A finite float, or None (missing, NaN, infinite)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def _chunk_name(c: Mapping[str, Any]) -> str:
    if c.get("start"):
        return str(c["start"])[:16].replace("T", " ")
    return f"#{c['index']} (lines {c['first_line']}-{c['last_line']})"


def _group_name(g: Mapping[str, Any]) -> str:
    return str(g["label"]) + (f" [{g['stratum']}]" if g.get("stratum") else "")


def _anchor(i: int) -> str:
    return f"g{i}"


def _neglog10(p: Any) -> float | None:
    x = _num(p)
    if x is None:
        return None
    return -math.log10(max(x, 1e-300))


class _Scale:
    def __init__(self, n: int, lo: float, hi: float) -> None:
        self.n, self.lo, self.hi = n, lo, hi if hi > lo else lo + 1.0

    def x(self, i: float) -> float:
        return X0 + (i + 0.5) * (X1 - X0) / max(self.n, 1)

    def y(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)
        return Y0 - (v - self.lo) / (self.hi - self.lo) * (Y0 - Y1)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    e = math.pow(10.0, math.floor(math.log10(v)))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _steps(sc: _Scale, values: Sequence[float | None]) -> list[str]:
    """A step line (one flat segment per chunk) through ``values``; None breaks it."""
    out: list[str] = []
    run: list[str] = []
    for i, v in enumerate(values):
        if v is None:
            if run:
                out.append(f'<polyline points="{" ".join(run)}" class="limit"/>')
            run = []
            continue
        y = sc.y(v)
        run += [f"{sc.x(i - 0.5):.1f},{y:.1f}", f"{sc.x(i + 0.5):.1f},{y:.1f}"]
    if run:
        out.append(f'<polyline points="{" ".join(run)}" class="limit"/>')
    return out


def _plot(g: Mapping[str, Any], gi: int, stat: str, report: Mapping[str, Any]) -> str:
    chunks: list[Mapping[str, Any]] = g["chunks"]
    constant = report.get("alert_method") == "constant"
    climits: Mapping[str, Any] = report.get("limits") or {}
    esc = html.escape
    title = _TITLES[stat]
    ylabel = stat
    values: list[float | None] = []
    upper: list[float | None] = []
    lower: list[float | None] = []
    band: list[tuple[float, float] | None] = []
    ref_rate: float | None = None
    caption = ""
    for c in chunks:
        lim = (c.get("limits") or {}).get(stat)
        if stat == "ks" and constant:
            values.append(_neglog10(c.get("ks_p")))
            p = _num(climits.get("ks_p"))
            upper.append(None if p is None or p <= 0 else -math.log10(p))
            lower.append(None)
        else:
            values.append(_num(c.get(stat)))
            if constant:
                upper.append(_num(climits.get(stat)) if stat != "flag_rate" else None)
                lower.append(None)
            else:
                upper.append(_num(lim[1]) if lim else None)
                lower.append(_num(lim[0]) if lim else None)
        if stat == "flag_rate":
            r = _num(c.get("ref_flag_rate"))
            ci = c.get("flag_rate_diff_ci95") or (None, None)
            lo, hi = _num(ci[0]), _num(ci[1])
            band.append(None if r is None or lo is None or hi is None else (max(0.0, r + lo), min(1.0, r + hi)))
    if stat == "ks" and constant:
        title, ylabel = "KS test: -log10(p)", "-log10 p"
        caption = f"alert: p < {_f(climits.get('ks_p'))}"
    if stat == "flag_rate":
        ref_rate = _num(g.get("ref_flag_rate"))
        caption = f"threshold {_f(g.get('threshold'))}"
        if constant:
            caption += f"; alert: test p < {_f(climits.get('flag_rate_p'))}"
    finite = [v for v in values + upper + lower if v is not None]
    finite += [b for pair in band if pair is not None for b in pair]
    if ref_rate is not None:
        finite.append(ref_rate)
    ymax = _nice_max(max(finite, default=1.0) * 1.05)
    ymin = 0.0
    if stat == "flag_rate":
        # a lower limit below 0 (mean - 3 sd of small chunks) cannot be crossed: not drawn
        lower = [None if v is not None and v <= 0 else v for v in lower]
    elif any(v < 0 for v in finite):
        ymin = -_nice_max(-min(finite) * 1.05)
    sc = _Scale(len(chunks), ymin, ymax)
    parts = [
        f'<svg class="plot" data-group="{gi}" data-stat="{stat}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{esc(title)} of {esc(_group_name(g))} per chunk">',
        f'<text x="{W / 2}" y="13" text-anchor="middle" class="t">{esc(title)}</text>',
    ]
    if caption:
        parts.append(f'<text x="{X1}" y="27" text-anchor="end" class="k">{esc(caption)}</text>')
    for frac in (0.0, 0.5, 1.0):
        v = ymin + frac * (ymax - ymin)
        y = sc.y(v)
        parts.append(f'<line x1="{X0}" y1="{y:.1f}" x2="{X1}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{X0 - 4}" y="{y + 3:.1f}" text-anchor="end" class="k">{_f(v, 3)}</text>')
    parts.append(f'<line x1="{X0}" y1="{Y0}" x2="{X1}" y2="{Y0}" class="ax"/>')
    parts.append(f'<line x1="{X0}" y1="{Y0}" x2="{X0}" y2="{Y1}" class="ax"/>')
    parts.append(f'<text x="10" y="{(Y0 + Y1) / 2}" text-anchor="middle" class="k" transform="rotate(-90 10 {(Y0 + Y1) / 2})">{esc(ylabel)}</text>')
    if chunks:
        parts.append(f'<text x="{X0}" y="{Y0 + 13}" text-anchor="start" class="k">{esc(_chunk_name(chunks[0]))}</text>')
        if len(chunks) > 1:
            parts.append(f'<text x="{X1}" y="{Y0 + 26}" text-anchor="end" class="k">{esc(_chunk_name(chunks[-1]))}</text>')
    # the flag rate's CI band and the reference rate
    if band and any(b is not None for b in band):
        top = [f"{sc.x(i):.1f},{sc.y(b[1]):.1f}" for i, b in enumerate(band) if b is not None]
        bottom = [f"{sc.x(i):.1f},{sc.y(b[0]):.1f}" for i, b in reversed(list(enumerate(band))) if b is not None]
        if len(top) == 1:  # one chunk: a bar
            i = next(i for i, b in enumerate(band) if b is not None)
            b = band[i]
            assert b is not None
            parts.append(f'<rect x="{sc.x(i) - 4:.1f}" y="{sc.y(b[1]):.1f}" width="8" height="{max(sc.y(b[0]) - sc.y(b[1]), 0.5):.1f}" class="band"/>')
        else:
            parts.append(f'<polygon points="{" ".join(top + bottom)}" class="band"><title>95% CI of the flag rate</title></polygon>')
    if ref_rate is not None:
        y = sc.y(ref_rate)
        parts.append(f'<line x1="{X0}" y1="{y:.1f}" x2="{X1}" y2="{y:.1f}" class="refline"><title>reference flag rate {_f(ref_rate)}</title></line>')
    parts += _steps(sc, upper)
    parts += _steps(sc, lower)
    pts = [f"{sc.x(i):.1f},{sc.y(v):.1f}" for i, v in enumerate(values) if v is not None]
    if len(pts) > 1:
        parts.append(f'<polyline points="{" ".join(pts)}" class="series"/>')
    r = 3.5 if len(chunks) <= 60 else 2.2
    for i, (c, val) in enumerate(zip(chunks, values, strict=True)):
        if val is None:
            continue
        alerts = list(c.get("alerts") or [])
        lim_txt = ""
        if upper[i] is not None or lower[i] is not None:
            lim_txt = f"; limit {_f(lower[i]) + '..' if lower[i] is not None else ''}{_f(upper[i])}"
        tip = f"{_chunk_name(c)}: n {c['n']}, {ylabel} {_f(val)}{lim_txt}" + (f"; ALERT: {', '.join(alerts)}" if alerts else "")
        if stat in alerts:
            cls, extra = "alert", f' data-alert="{esc(stat)}"'
        elif alerts:
            # the chunk alerts on another statistic: a red ring, so an alerting chunk reads across plots
            cls, extra = "alert-other", f' data-alert-other="{esc(",".join(alerts))}"'
        else:
            cls, extra = "pt", ""
        parts.append(f'<circle cx="{sc.x(i):.1f}" cy="{sc.y(val):.1f}" r="{r}" class="{cls}" data-chunk="{c["index"]}"{extra}><title>{esc(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _stats_of(g: Mapping[str, Any]) -> list[str]:
    """The statistics a group has plots for: no flag rate when it is None (a value series)."""
    chunks = g.get("chunks") or []
    if chunks and all(_num(c.get("flag_rate")) is None for c in chunks):
        return [s for s in _STATS if s != "flag_rate"]
    return list(_STATS)


def _limit_text(c: Mapping[str, Any], stat: str, report: Mapping[str, Any]) -> str:
    if report.get("alert_method") == "constant":
        lim = report.get("limits") or {}
        if stat == "ks":
            return f"p {_f(c.get('ks_p'))} < {_f(lim.get('ks_p'))}"
        if stat == "flag_rate":
            return f"p {_f(c.get('flag_rate_p'))} < {_f(lim.get('flag_rate_p'))}"
        return f"{_f(c.get(stat))} > {_f(lim.get(stat))}"
    lo, hi = (c.get("limits") or {}).get(stat) or (None, None)
    v = _num(c.get(stat))
    if v is not None and lo is not None and v < lo:
        return f"{_f(v)} < {_f(lo)}"
    return f"{_f(v)} > {_f(hi)}"


def monitor_html(report: BaseModel | Mapping[str, Any]) -> str:
    """A self-contained HTML page of a monitor report (a :class:`MonitorReport`, or its
    ``model_dump(mode="json")``)."""
    m: Mapping[str, Any] = report.model_dump(mode="json") if isinstance(report, BaseModel) else report
    esc = html.escape
    groups: list[Mapping[str, Any]] = list(m.get("groups") or [])
    alerting = [(gi, g, c) for gi, g in enumerate(groups) for c in g.get("chunks") or [] if c.get("alerts")]
    method = m.get("alert_method")
    if method == "std":
        how = f"a statistic above the reference chunks' mean + {_f(m.get('sigma'))} sd (flag rate: outside mean ± {_f(m.get('sigma'))} sd)"
    elif method == "p99":
        how = "a statistic above the reference chunks' 99th percentile (flag rate: outside their 1st..99th)"
    else:
        how = "constant limits " + ", ".join(f"{esc(str(k))} {_f(v)}" for k, v in (m.get("limits") or {}).items())
    title = f"cotmod monitor: {m.get('source')}"
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class=meta>reference <code>{esc(str(m.get('reference')))}</code> · chunks of {esc(str(m.get('chunk')))} · "
        f"alerts: {esc(how)}</p>",
    ]
    if "verdicts" in m:  # a verdict-log report (cotmod.classifiers._verdictlog)
        out.append(
            f"<p class=meta>{m['verdicts']} verdicts and {m.get('dead_letters', 0)} dead letters of failed items; "
            f"reference {m.get('reference_verdicts')} verdicts and {m.get('reference_dead_letters', 0)} dead letters</p>"
        )
    described = {str(x["name"]): str(x["description"]) for x in m.get("series") or []}
    for note in m.get("notes") or []:
        out.append(f"<p class=note>{esc(str(note))}</p>")
    n_alerts = len(alerting)
    out.append("<h2 id=summary>Alerts</h2>")
    if n_alerts:
        out.append(f"<p class=bad id=verdict>{n_alerts} chunk(s) with alerts in {len({gi for gi, _, _ in alerting})} of {len(groups)} group(s)</p>")
        out.append(
            "<table id=alerts><tr><th>label [stratum]</th><th>chunk</th><th>n</th><th>alerts (value vs limit)</th>"
            "<th>flag rate</th><th>reference flag rate</th><th>difference [95% CI]</th></tr>"
        )
        for gi, g, c in alerting:
            why = "; ".join(f"{esc(s)}: {esc(_limit_text(c, s, m))}" for s in c["alerts"])
            ci = c.get("flag_rate_diff_ci95") or (None, None)
            diff = "–" if _num(c.get("flag_rate_diff")) is None else f"{_f(c['flag_rate_diff'], 3)} [{_f(ci[0], 3)}, {_f(ci[1], 3)}]"
            out.append(
                f"<tr class=alerting><td class=l><a href='#{_anchor(gi)}'>{esc(_group_name(g))}</a></td><td class=l>{esc(_chunk_name(c))}</td>"
                f"<td>{c['n']}</td><td class=l>{why}</td><td>{_f(c.get('flag_rate'), 3)}</td><td>{_f(c.get('ref_flag_rate'), 3)}</td><td>{diff}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append(f"<p class=ok id=verdict>no alerts in {len(groups)} group(s)</p>")
    out.append(
        "<table id=groups><tr><th>label [stratum]</th><th>rows</th><th>reference rows</th><th>threshold</th>"
        "<th>reference flag rate</th><th>chunks</th><th>with alerts</th></tr>"
    )
    for gi, g in enumerate(groups):
        chunks = g.get("chunks") or []
        k = sum(1 for c in chunks if c.get("alerts"))
        out.append(
            f"<tr{' class=alerting' if k else ''}><td class=l><a href='#{_anchor(gi)}'>{esc(_group_name(g))}</a></td><td>{g['n']}</td>"
            f"<td>{g['reference_n']}</td><td>{_f(g.get('threshold'))}</td><td>{_f(g.get('ref_flag_rate'), 3)}</td>"
            f"<td>{len(chunks)}</td><td>{k}</td></tr>"
        )
    out.append("</table>")
    out.append(
        "<p class=meta>In the plots: blue, the statistic per chunk; red dot, the chunk alerts on this statistic; "
        "red ring, it alerts on another one; dashed red line, the alert limit; flag rate: grey line, the reference "
        "flag rate, shaded band, the reference rate + the 95% CI of the difference (it leaves the grey line when "
        "the change is significant). Hover a point for its values.</p>"
    )
    for gi, g in enumerate(groups):
        chunks = g.get("chunks") or []
        k = sum(1 for c in chunks if c.get("alerts"))
        out.append(f"<section class=group id={_anchor(gi)} data-group='{gi}'><h2>{esc(_group_name(g))}</h2>")
        what = described.get(str(g["label"]))
        out.append(
            (f"<p class=meta>{esc(what)}</p>" if what else "")
            + f"<p class=meta>{g['n']} rows, reference {g['reference_n']} rows · {len(chunks)} chunk(s), "
            f"<span class='{'bad' if k else 'ok'}'>{k} with alerts</span></p>"
        )
        if g.get("note"):
            out.append(f"<p class=note>{esc(str(g['note']))}</p>")
        notes = sorted({str(c["note"]) for c in chunks if c.get("note")})
        for note in notes:
            out.append(f"<p class=note>{esc(note)}</p>")
        if chunks:
            out.append("<div class=plots>" + "".join(_plot(g, gi, s, m) for s in _stats_of(g)) + "</div>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_monitor_html(report: BaseModel | Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`monitor_html` of ``report`` to ``path``."""
    p = Path(path)
    p.write_text(monitor_html(report), encoding="utf-8")
    return p
