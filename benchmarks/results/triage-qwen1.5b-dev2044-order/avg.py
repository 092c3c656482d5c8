"""avg = per policy the mean of the two orders' P(yes), selected by the shipped rule (>= 0.3, at most 2).

    python avg.py FWD_DIR REV_DIR OUT_DIR     (each a bench_triage --out directory; writes OUT_DIR/answers.jsonl)

then ``bench_triage.py ... --out OUT_DIR --baseline FWD_DIR --measure-only`` measures it. The averaged answers carry
the forward run's prompt fingerprint (so --measure-only takes them) and both in ``avg_of``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from cotmod.prompting._triage import select_by_probability


def answers(run: Path) -> dict[str, dict[str, Any]]:
    with (run / "answers.jsonl").open(encoding="utf-8") as f:
        return {a["id"]: a for a in map(json.loads, f)}


def main() -> None:
    fwd_dir, rev_dir, out_dir = map(Path, sys.argv[1:4])
    out_dir.mkdir(parents=True, exist_ok=True)
    fwd, rev = answers(fwd_dir), answers(rev_dir)
    n = 0
    with (out_dir / "answers.jsonl").open("w", encoding="utf-8") as f:
        for iid, a in fwd.items():
            b = rev.get(iid)
            if b is None or a.get("scores") is None or b.get("scores") is None:
                continue
            order = list(a["scores"])  # the shipped (alphabetical) order: ties keep it
            scores = {p: round((a["scores"][p] + b["scores"][p]) / 2, 4) for p in order}
            sel = select_by_probability(scores, 0.3, 2)
            f.write(json.dumps({
                "id": iid, "selected": [p for p in order if p in sel], "yes": sum(v >= 0.5 for v in scores.values()),
                "scores": scores, "summary": a.get("summary"), "attempts": a["attempts"] + b["attempts"],
                "s": a["s"] + b["s"], "fp": a["fp"], "avg_of": [a["fp"], b["fp"]],
            }) + "\n")
            n += 1
    print(n, "items averaged")


if __name__ == "__main__":
    main()
