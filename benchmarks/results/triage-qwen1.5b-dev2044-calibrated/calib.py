"""Contextual calibration of the triage P(yes) (PLAN.txt).

    python calib.py p0 OUT.json                 ask the shipped triage about the content-free inputs (starts the
                                                local model), write p0 per policy
    python calib.py apply P0.json RUN_DIR T OUT_DIR
                                                RUN_DIR/answers.jsonl (a bench_triage --out) re-selected from the
                                                calibrated P(yes) at threshold T, at most 2 -> OUT_DIR/answers.jsonl

then ``bench_triage.py ... --out OUT_DIR --baseline RUN_DIR --measure-only`` measures it (the calibrated answers keep
the run's prompt fingerprint).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from cotmod import AsyncModerator, Item
from cotmod.policy import load_policies
from cotmod.prompting import select_by_probability

REPO = Path(__file__).resolve().parents[3]
CONTENT_FREE = ("N/A", "[MASK]", "")


def calibrated(p: float, p0: float) -> float:
    """p (1 - p0) / (p (1 - p0) + (1 - p) p0): P(yes) with the content-free prior divided out (0.5 at p == p0)."""
    a, b = p * (1 - p0), (1 - p) * p0
    return a / (a + b) if a + b > 0 else 0.5


async def p0(out: Path) -> None:
    from cotmod.backends._local import ensure_local_server

    guidelines = str(REPO / "guidelines")
    pids = [p.id for p in load_policies([guidelines])]
    base_url = ensure_local_server("qwen2.5-coder-1.5b", n_parallel=2)
    per_input: dict[str, dict[str, float]] = {}
    async with AsyncModerator(guidelines, base_url=base_url, model="qwen2.5-coder-1.5b", triage=True, triage_max=2,
                              logprobs=True, triage_threshold=0.3, concurrency=2, timeout=600) as mod:
        fp = mod.triage_compiler(pids).fingerprint
        for i, text in enumerate(CONTENT_FREE):
            try:
                res = await mod.triage(Item(text, f"content-free-{i}"), pids)
            except Exception as exc:  # an input cotmod refuses is dropped (PLAN.txt)
                print(f"{text!r}: refused ({type(exc).__name__}: {exc}); dropped", file=sys.stderr)
                continue
            if res.scores is None:
                print(f"{text!r}: no scores (fallback {res.fallback}); dropped", file=sys.stderr)
                continue
            per_input[text] = dict(res.scores)
            print(f"{text!r}: summary {res.summary!r}", file=sys.stderr)
    mean = {p: round(sum(s[p] for s in per_input.values()) / len(per_input), 6) for p in pids}
    out.write_text(json.dumps({"fp": fp, "inputs": per_input, "p0": mean}, indent=1) + "\n")
    print(json.dumps(mean))


def apply(p0_path: Path, run: Path, threshold: float, out_dir: Path) -> None:
    p0s = json.loads(p0_path.read_text())["p0"]
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    with (run / "answers.jsonl").open(encoding="utf-8") as f, (out_dir / "answers.jsonl").open("w", encoding="utf-8") as w:
        for a in map(json.loads, f):
            if a.get("scores") is None:
                w.write(json.dumps(a) + "\n")
                continue
            order = list(a["scores"])
            cal = {p: round(calibrated(a["scores"][p], p0s[p]), 6) for p in order}
            sel = select_by_probability(cal, threshold, 2)
            w.write(json.dumps({**a, "selected": [p for p in order if p in sel], "yes": len(sel), "scores": cal,
                                "raw_scores": a["scores"], "calibrated_at": threshold}) + "\n")
            n += 1
    print(n, "items re-selected", file=sys.stderr)


def main() -> None:
    if sys.argv[1] == "p0":
        asyncio.run(p0(Path(sys.argv[2])))
    elif sys.argv[1] == "apply":
        apply(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
