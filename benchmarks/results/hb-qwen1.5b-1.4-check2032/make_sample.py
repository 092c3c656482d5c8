"""The harassment_bullying 1.4.0 check sample (seed 2032): items no benchmark sample committed before it had
drawn (nor the dev-2031 run made the same day, whose samples are in quality-qwen1.5b-v1.6-dev2031-dynamic/):
jigsaw_toxic insult=1 (16), jigsaw_toxic clean (16), sms_spam ham (16). Run from the repository root at the
commit that added it, it rewrites gold.jsonl and mapping.yaml here with the same items."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def rows(name: str) -> list[dict[str, Any]]:
    with gzip.open(f"benchmarks/goldsets/{name}/{name}.normalized.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def main() -> None:
    used: set[str] = set()
    for f in Path("benchmarks/results").glob("*/*/sample.jsonl"):
        with f.open(encoding="utf-8") as fh:
            used.update(json.loads(line)["id"] for line in fh)
    rng = random.Random(2032)
    jig = [r for r in rows("jigsaw_toxic") if r["id"] not in used]
    ham = [r for r in rows("sms_spam") if r["id"] not in used and r["labels"].get("spam") == 0]
    insults = [r for r in jig if r["labels"].get("insult") == 1]
    clean = [r for r in jig if r.get("jigsaw_group") == "clean"]
    out = [
        {"id": r["id"], "text": r["text"], "labels": {"insult": lab}, "source": r["id"].split("-")[0]}
        for pool, n, lab in ((insults, 16, 1), (clean, 16, 0), (ham, 16, 0))
        for r in rng.sample(pool, n)
    ]
    (HERE / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    (HERE / "mapping.yaml").write_text(
        "name: hb-check\nlabels:\n  insult: {policies: [harassment_bullying]}\nstrata: [source]\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
