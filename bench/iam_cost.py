"""`python -m bench.iam_cost`: what enforcing IAM (over TLS) costs the local pipeline, measured.

The local stack always enforces IAM; this starts it twice more in one session, with and without
enforcement (TLS in both), alternating `--rounds` times, and runs the same plain pipeline run (P1 a:
the credit-scores job over `--items` companies against the no-op endpoint) in each. It prints the
set-up time and the items/s of each, and the ratios (enforced / not), so that the noise of a shared
machine falls on both sides alike. Tests never assert speed: this prints figures only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from bench.harness import BenchStack, run_pipeline


def measure_once(items: int, enforce_iam: bool) -> dict[str, Any]:
    label = "enforced" if enforce_iam else "off"
    with BenchStack(
        items=items, echo=lambda line: print(f"  [{label}] {line}", file=sys.stderr), enforce_iam=enforce_iam
    ) as bs:
        run = run_pipeline(bs, counted=False, echo=lambda line: print(f"  [{label}] {line}", file=sys.stderr))
        return {"iam": label, "setup_s": round(bs.setup_seconds, 1), "items_per_s": round(run.items_per_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5_000, help="tasks per run (default 5,000)")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, alternating (default 1)")
    args = parser.parse_args(argv)
    rows = []
    for _ in range(args.rounds):
        for enforce in (True, False):
            rows.append(measure_once(args.items, enforce))
            print(json.dumps(rows[-1]), flush=True)
    on = [r for r in rows if r["iam"] == "enforced"]
    off = [r for r in rows if r["iam"] == "off"]
    summary = {
        "items": args.items,
        "rounds": args.rounds,
        "throughput_ratio": round(
            statistics.mean(r["items_per_s"] for r in on) / statistics.mean(r["items_per_s"] for r in off), 3
        ),
        "setup_delta_s": round(
            statistics.mean(r["setup_s"] for r in on) - statistics.mean(r["setup_s"] for r in off), 1
        ),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
