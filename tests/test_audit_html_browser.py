"""The audit report's HTML as a person sees it, in real headless Chromium: one section per policy,
the estimate plot drawn with a size and a dot + whisker per estimate inside its axis, the
disagreements table, and nothing wider than the window."""

from __future__ import annotations

import json
from pathlib import Path

from cotmod.testing import FakeOpenAIServer

from .test_audit_cli import EXIT_OK, invoke, plan, run
from .test_monitor_report import _chromium, _render, served

__all__ = ["served"]  # the fixture, imported for this module's tests

MEASURE = """<pre id="sizes"></pre><script>
const r = e => e.getBoundingClientRect();
const svgs = [...document.querySelectorAll("svg")].map(s => {
  const box = r(s);
  return {w: box.width, h: box.height,
          dots: [...s.querySelectorAll("circle")].map(c => { const b = r(c); return {x: b.x + b.width / 2, w: b.width}; }),
          left: box.x, right: box.x + box.width};
});
document.getElementById("sizes").textContent = JSON.stringify({
  policies: [...document.querySelectorAll("h2")].map(h => h.textContent),
  svgs, tables: document.querySelectorAll("table").length,
  disagreementRows: [...document.querySelectorAll("h3")].filter(h => h.textContent.startsWith("disagreements"))
      .map(h => h.nextElementSibling.querySelectorAll("tr").length - 1),
  scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
});
</script>"""


def test_audit_report_as_rendered_in_headless_chromium(tmp_path: Path, served: tuple[Path, str]) -> None:
    chromium = _chromium()
    p = plan(tmp_path)
    out = tmp_path / "audit.jsonl"
    with FakeOpenAIServer() as srv:
        assert run(srv, p, out).exit_code == EXIT_OK
    page_path = tmp_path / "a.html"
    r = invoke("audit", "report", str(p), str(out), "--json", "--html", str(page_path))
    assert r.exit_code == EXIT_OK, r.output
    rep = json.loads(r.stdout)
    root, base = served
    page = page_path.read_text(encoding="utf-8")
    assert "</body></html>" in page
    (root / "a.html").write_text(page.replace("</body></html>", MEASURE + "</body></html>"), encoding="utf-8")
    seen = _render(chromium, f"{base}/a.html", tmp_path / "profile")
    pols = rep["policies"]
    assert len(seen["policies"]) == len(pols) == 1 and seen["policies"][0].startswith("spam_scams")
    assert seen["svgs"], "no estimate plot"
    for s in seen["svgs"]:
        assert s["w"] > 300 and s["h"] > 40, s
        assert s["dots"], "a plot without a single estimate"
        for d in s["dots"]:
            assert s["left"] <= d["x"] <= s["right"] and d["w"] > 4, (d, s)
    assert seen["tables"] >= 3
    assert seen["disagreementRows"] == [len(pols[0]["disagreements"])]
    # it reads without scrolling sideways (long texts and rationales wrap)
    assert seen["scrollWidth"] <= seen["innerWidth"], seen
