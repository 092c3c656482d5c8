"""The playground page of cotmod serve, as a person sees it in headless Chromium: a served page
whose script calls the API (no network resources), shows the verdict, the cited rules, the
evidence highlighted in the text, the reasoning and the exact rendered prompt."""

from __future__ import annotations

import html as htmlmod
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cotmod._config import Settings
from cotmod.serve import ApiKeys, ServeConfig, ServerThread, create_app
from cotmod.testing import FakeOpenAIServer

from .conftest import GUIDELINES


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("COTMOD_E2E_REQUIRED") == "1":
            pytest.fail("chromium is not installed, and COTMOD_E2E_REQUIRED=1 requires the browser check: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium): the playground's browser check needs it")
    return path


def _seen(chromium: str, url: str, profile: Path) -> dict[str, Any]:
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,1000", "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    m = re.search(r'<pre id="layout"[^>]*>(.*?)</pre>', out.stdout, re.S)
    assert m, f"the page reported nothing (exit {out.returncode}): {out.stdout[-1500:]} {out.stderr[-1500:]}"
    result: dict[str, Any] = json.loads(htmlmod.unescape(m.group(1)))
    return result


def test_page_is_self_contained() -> None:
    app = create_app(Settings(base_url="http://127.0.0.1:9/v1", model="m", guidelines=str(GUIDELINES)))
    with ServerThread(app) as srv, urllib.request.urlopen(srv.base_url + "/") as resp:
        page = resp.read().decode()
    assert resp.headers["content-type"].startswith("text/html")
    for needle in ("http://", "https://", " src=", "<link", "@import"):
        assert needle not in page, needle
    assert '"hate_speech"' in page and "/*COTMOD_CONFIG*/" not in page


def test_playground_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    text = "Honestly, those people are VIOLATE and should leave.\nSecond line </script> <b>not bold</b>."
    with FakeOpenAIServer() as fake:
        settings = Settings(base_url=fake.base_url, model="m", guidelines=str(GUIDELINES), evidence=True)
        app = create_app(settings)
        with ServerThread(app) as srv:
            q = urllib.parse.urlencode({"text": text, "policies": "hate_speech,spam_scams", "run": "1", "measure": "1"})
            seen = _seen(chromium, f"{srv.base_url}/?{q}", tmp_path / "p1")
            safe = _seen(chromium, f"{srv.base_url}/?" + urllib.parse.urlencode({"text": "lovely weather", "policies": "spam_scams", "run": "1", "measure": "1"}), tmp_path / "p2")
        keyed = create_app(settings, ServeConfig(api_keys=ApiKeys.of(["secret-key-123456"])))
        with ServerThread(keyed) as srv:
            refused = _seen(chromium, f"{srv.base_url}/?" + urllib.parse.urlencode({"text": "x", "run": "1", "measure": "1"}), tmp_path / "p3")
    assert seen["state"] == "done" and seen["error"] is None
    assert seen["checked"] == ["hate_speech", "spam_scams"]
    # the text is shown as written (markup in it is text, not HTML), superscript rule labels aside
    assert seen["content"].replace("HATE-1, SCAM-1", "") == text and seen["bold"] == 0
    assert seen["banner"].startswith("VIOLATES") and "action: remove" in seen["banner"]
    assert seen["bannerColor"] == "rgb(180, 35, 24)"
    # the evidence: the quoted word is highlighted, visibly, and names the rules it meets
    assert [(m["text"], m["rules"]) for m in seen["marks"]] == [("VIOLATE", "HATE-1 SCAM-1")]
    assert seen["marks"][0]["bg"] == "rgb(255, 216, 168)" and seen["marks"][0]["w"] > 30 and seen["marks"][0]["h"] > 10
    # cited rules with their titles from the policy, one card per policy, the reasoning
    assert seen["rules"] == ["HATE-1 — Dehumanization", "SCAM-1 — Phishing and credential theft"]
    assert [d["policy"] for d in seen["decisions"]] == ["hate_speech", "spam_scams"]
    assert all(d["w"] > 300 and d["h"] > 60 for d in seen["decisions"])
    assert len(seen["reasoning"]) == 2
    # the exact prompts: one per policy call, the first open, carrying the content as text
    assert [p["summary"].split(" · ")[0] for p in seen["prompts"]] == ["Policy call: hate_speech", "Policy call: spam_scams"]
    assert seen["prompts"][0]["open"] and seen["prompts"][0]["messages"] >= 2 and seen["prompts"][0]["text"] > 1000
    # readable: normal body size, nothing wider than the window (long prompts wrap)
    assert seen["bodyFontPx"] >= 14 and seen["overflowX"] is False
    assert safe["banner"].startswith("SAFE") and safe["marks"] == [] and safe["rules"] == []
    # with API keys and none typed in: the API's message, shown to the person
    assert refused["state"] == "error" and "missing API key" in refused["error"] and "401" in refused["error"]
    # ... and no policy on the page: they come from GET /v1/policies, with the key typed in
    assert refused["checked"] == []
