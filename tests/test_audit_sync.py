"""The blocking twin of ``run_audit_async``: same parameters, same output, closes the moderator."""

from __future__ import annotations

import json
from pathlib import Path

from cotmod import AsyncModerator, Settings
from cotmod.audit import read_plan, run_audit
from cotmod.testing import FakeOpenAIServer

from .test_audit_cli import plan


def test_run_audit_sync_twin_judges_every_planned_item_once_and_resumes(tmp_path: Path) -> None:
    p = read_plan(plan(tmp_path))
    out = tmp_path / "audit.jsonl"
    with FakeOpenAIServer() as srv:
        mod = AsyncModerator(settings=Settings(base_url=srv.base_url, model="m"))
        summary = run_audit(p, mod, out, limit=25)
        assert summary.processed == 25 and srv.requests == 25
        mod = AsyncModerator(settings=Settings(base_url=srv.base_url, model="m"))
        summary = run_audit(p, mod, out)
        assert summary.processed == len(p.items) - 25 and srv.requests == len(p.items)
    ids = [json.loads(x)["item_id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(it.id for it in p.items)
