"""The HTML report of cotmod monitor: every number from the report's JSON dump, self-contained, and
checked as rendered in real headless Chromium (plots with a size, red markers on a known shift,
none without one), on logs of the real TF-IDF + logistic regression spam classifier."""

from __future__ import annotations

import html as htmlmod
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cotmod.classifiers import (
    MonitorReport,
    MonitorSettings,
    ScoreLog,
    monitor,
    monitor_html,
    read_scores,
    write_monitor_html,
)
from cotmod.classifiers._demo import DemoClassifier, simulate_score_log, train_demo_classifier
from cotmod.cli import cli

STATS = ["psi", "js", "ks", "wasserstein", "flag_rate"]


@pytest.fixture(scope="module")
def demo() -> DemoClassifier:
    return train_demo_classifier(seed=0)


@pytest.fixture(scope="module")
def logs(demo: DemoClassifier, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("report")
    return {
        "ref": simulate_score_log(demo, d / "ref.jsonl", n=20000, seed=1),
        "same": simulate_score_log(demo, d / "same.jsonl", n=3000, seed=2),
        # a changed spam/ham mix on one surface only: the shift is in "all rows" and "surface=app"
        "app": simulate_score_log(demo, d / "app.jsonl", n=3000, seed=4, positive_share=0.3, shifted_surface="app"),
    }


def _read(p: Path) -> ScoreLog:
    return read_scores(p, strata=["surface"])


@pytest.fixture(scope="module")
def reports(logs: dict[str, Path]) -> dict[str, MonitorReport]:
    ref = _read(logs["ref"])
    st = MonitorSettings(chunk="1d", strata=["surface"])
    return {"same": monitor(_read(logs["same"]), ref, st), "app": monitor(_read(logs["app"]), ref, st)}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def test_every_plotted_number_is_the_dumps(reports: dict[str, MonitorReport]) -> None:
    rep = reports["app"]
    page = monitor_html(rep)
    assert page == monitor_html(rep.model_dump(mode="json"))  # renders the dump, nothing else
    data = rep.model_dump(mode="json")
    tips = [htmlmod.unescape(t) for t in re.findall(r"<circle [^>]*><title>([^<]*)</title>", page)]
    for g in data["groups"]:
        for c in g["chunks"]:
            for s in STATS:
                lo, hi = c["limits"][s]
                lim = f"; limit {_fmt(lo) + '..' if lo is not None else ''}{_fmt(hi)}"
                want = f"{c['start'][:16].replace('T', ' ')}: n {c['n']}, {s} {_fmt(c[s])}{lim}"
                assert any(t.startswith(want) for t in tips), want
    # one plot per statistic per group, in group order
    plots = re.findall(r'<svg class="plot" data-group="(\d+)" data-stat="(\w+)"', page)
    assert plots == [(str(gi), s) for gi in range(len(data["groups"])) for s in STATS]
    # the summary table lists exactly the alerting chunks, with the statistics that alerted
    rows = re.findall(r"<tr class=alerting><td class=l><a href='#g(\d+)'>", page.split("<table id=groups>")[0])
    want_rows = [str(gi) for gi, g in enumerate(data["groups"]) for c in g["chunks"] if c["alerts"]]
    assert rows == want_rows and len(rows) == rep.alerts == 6
    first = next(c for c in data["groups"][0]["chunks"] if c["alerts"])
    assert f"psi: {_fmt(first['psi'])} &gt; {_fmt(first['limits']['psi'][1])}" in page
    # a red dot per alerting statistic of each chunk
    assert page.count('data-alert="') == sum(len(c["alerts"]) for g in data["groups"] for c in g["chunks"])


def test_no_shift_page_says_so_and_has_no_alert_markers(reports: dict[str, MonitorReport]) -> None:
    page = monitor_html(reports["same"])
    assert reports["same"].alerts == 0
    assert "no alerts in 3 group(s)" in page and 'class="alert' not in page and "<table id=alerts>" not in page


def test_page_is_self_contained_and_escapes_names(reports: dict[str, MonitorReport], tmp_path: Path) -> None:
    data = reports["app"].model_dump(mode="json")
    data["groups"][0]["label"] = "<b>spam & scams</b>"
    data["source"] = "logs/<today>.jsonl"
    page = monitor_html(data)
    assert "<b>spam" not in page and "&lt;b&gt;spam &amp; scams&lt;/b&gt;" in page and "logs/&lt;today&gt;.jsonl" in page
    for needle in ("<script", "http://", "https://", " src=", "<link", "@import"):
        assert needle not in page.lower()
    out = write_monitor_html(reports["app"], tmp_path / "r.html")
    assert out.read_text(encoding="utf-8") == monitor_html(reports["app"])


def test_constant_limits_plot_ks_p_value_and_the_limit_line(logs: dict[str, Path]) -> None:
    rep = monitor(_read(logs["app"]), _read(logs["ref"]), MonitorSettings(chunk=1000, alerts="constant", limits={"psi": 0.2}))
    page = monitor_html(rep)
    assert "KS test: -log10(p)" in page and "alert: p &lt; 0.05" in page
    assert "constant limits psi 0.2, js 0.1" in page
    psi_plot = re.search(r'<svg class="plot" data-group="0" data-stat="psi".*?</svg>', page)
    assert psi_plot and 'class="limit"' in psi_plot.group(0)
    # the limit line sits at psi 0.2 on every chunk: one flat segment per chunk at the same height
    ys = set(re.findall(r",([\d.]+)", re.search(r'<polyline points="([^"]+)" class="limit"', psi_plot.group(0)).group(1)))  # type: ignore[union-attr]
    assert len(ys) == 1


def test_cli_writes_html_next_to_table_and_json(logs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "monitor.html"
    r = CliRunner().invoke(cli, ["monitor", str(logs["app"]), "-r", str(logs["ref"]), "-c", "1d", "-s", "surface", "--html", str(out), "--json"])
    assert r.exit_code == 1, r.output
    data = json.loads(r.stdout)
    page = out.read_text(encoding="utf-8")
    assert data["alerts"] == 6 and "6 chunk(s) with alerts in 2 of 3 group(s)" in page
    r = CliRunner().invoke(cli, ["monitor", str(logs["same"]), "-r", str(logs["ref"]), "-c", "1d", "--html", str(tmp_path / "no" / "x.html")])
    assert r.exit_code == 2 and "cannot write" in r.output and "x.html" in r.output


# -- in real headless Chromium --------------------------------------------------------------------

# Test-only: appended to a copy of the report the test serves (the report itself has no script).
MEASURE = """<script>
addEventListener("load", () => {
  const plots = [...document.querySelectorAll("svg.plot")].map((svg) => {
    const r = svg.getBoundingClientRect();
    const alerts = [...svg.querySelectorAll("circle.alert")].map((c) => {
      const b = c.getBoundingClientRect();
      return {w: b.width, h: b.height, fill: getComputedStyle(c).fill};
    });
    return {group: svg.dataset.group, stat: svg.dataset.stat, w: r.width, h: r.height,
            points: svg.querySelectorAll("circle").length, lines: svg.querySelectorAll("polyline.limit").length, alerts};
  });
  const pre = document.createElement("pre");
  pre.id = "sizes";
  pre.textContent = JSON.stringify({
    plots, verdict: document.getElementById("verdict").textContent,
    alertRows: document.querySelectorAll("#alerts tr.alerting").length,
    sections: document.querySelectorAll("section.group").length,
  });
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("COTMOD_E2E_REQUIRED") == "1":
            pytest.fail("chromium is not installed, and COTMOD_E2E_REQUIRED=1 requires the browser check: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium): the HTML report's browser check needs it")
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served on 127.0.0.1 (a random port), and its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _render(chromium: str, url: str, profile: Path) -> dict[str, Any]:
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1200,900", "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    m = re.search(r'<pre id="sizes">(.*?)</pre>', out.stdout, re.S)
    assert m, f"chromium rendered no measurements (exit {out.returncode}): {out.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(htmlmod.unescape(m.group(1)))
    return result


def test_report_as_rendered_in_headless_chromium(reports: dict[str, MonitorReport], served: tuple[Path, str], tmp_path: Path) -> None:
    chromium = _chromium()
    root, base = served
    for name, rep in reports.items():
        page = monitor_html(rep)
        assert "</body></html>" in page
        (root / f"{name}.html").write_text(page.replace("</body></html>", MEASURE + "</body></html>"), encoding="utf-8")
    seen = {name: _render(chromium, f"{base}/{name}.html", tmp_path / f"profile-{name}") for name in reports}
    for name, rep in reports.items():
        got = seen[name]
        groups = rep.model_dump(mode="json")["groups"]
        assert got["sections"] == len(groups) == 3
        # one plot per statistic per group, each drawn with a real size, a point per chunk and a limit line
        assert [(p["group"], p["stat"]) for p in got["plots"]] == [(str(gi), s) for gi in range(len(groups)) for s in STATS]
        for p in got["plots"]:
            assert p["w"] > 200 and p["h"] > 100, p
            assert p["points"] == len(groups[int(p["group"])]["chunks"]) == 3
            assert p["lines"] >= 1
    # the known shift (spam share 30% on the app surface): red markers, visible, in the all-rows and app groups
    app = seen["app"]
    assert app["verdict"].startswith("6 chunk(s) with alerts") and app["alertRows"] == 6
    red = [(p["group"], a) for p in app["plots"] for a in p["alerts"]]
    assert {g for g, _ in red} == {"0", "1"} and len(red) >= 2 * 3 * 4
    assert all(a["w"] > 4 and a["h"] > 4 and a["fill"] == "rgb(209, 36, 47)" for _, a in red)
    assert not [a for p in app["plots"] if p["group"] == "2" for a in p["alerts"]]  # surface=sms: no shift, no marker
    # no shift: no marker anywhere
    same = seen["same"]
    assert same["verdict"] == "no alerts in 3 group(s)" and same["alertRows"] == 0
    assert all(p["alerts"] == [] for p in same["plots"])
