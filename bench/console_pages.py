"""P10: the console's pages for a run of 19 million tasks: time and AWS calls per page.

`python -m bench.console_pages` seeds, in in-process DynamoDB and SQS (moto), a run record of
19,000,000 tasks the way the ledger holds one mid-run: the run item (split done, four segments
accounted), its counter items (12,345,678 succeeded, 45,678 failed), its failure-group items
(25 kinds of error over the run's counter partitions), and one indexed item with its task
record. Not 19 M task items: no page reads them. Beside it, a run of 100 tasks seeded the same
way. It then times each page through the console app (median of `--repeat` reads) and counts the
AWS calls each makes, and prints one JSON line per page and run, then the table.

The calls per page are the figure that carries to AWS: the same for both runs (nothing scales
with the run's size). The milliseconds are moto's, in this process (each call ~1-3 ms here;
DynamoDB answers a GetItem or a small Query in single-digit ms, and the page's reads run in
parallel where they can).

Whose time is it? Each page is then timed again with every AWS call answered at once from a
recording of its moto answer (`ours_ms`: the console's own code, its templates and the test
client, with no AWS time at all). `median_ms - ours_ms` is what moto took; the run page's 22
calls cost moto about 50 ms each here (its DynamoDB Query runs in Python under the GIL, so the
page's parallel reads queue behind each other), which AWS answers in parallel in ~10-20 ms.
`--out FILE` writes the rows as JSON (`make bench` writes `bench/results/console-pages.json`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from microprocess.ledger.records import CURSOR_DONE

TASKS = 19_000_000
SUCCEEDED = 12_345_678
FAILED = 45_678
GROUPS = 25
REGION = "us-east-1"


def seed_run(ddb: Any, ledger: Any, job: Any, run_id: str, expected: int, succeeded: int, failed: int) -> str:
    """A run of `expected` tasks with these counts in its counters, failure groups, and one
    indexed item with its task record. Returns the item id."""
    from microprocess.control.lookup import write_item_index
    from microprocess.ledger import TaskOutcome, TaskState
    from microprocess.ledger.failure_groups import group_key, normalize_error
    from microprocess.pipeline.envelope import shard_of

    ledger.create_run(run_id, job, segments=4)
    per_segment = expected // 4
    for seg in range(4):
        count = per_segment if seg < 3 else expected - 3 * per_segment
        ledger.account_page(run_id, segment=str(seg), cursor_from="", cursor_to=CURSOR_DONE, count=count)
    ledger.finish_split(run_id)
    k = job.counter_count
    run = ledger.require_run(run_id)
    for j in range(k):
        s, f = succeeded // k + (1 if j < succeeded % k else 0), failed // k + (1 if j < failed % k else 0)
        counter = {
            "pk": {"S": f"RUN#{run_id}#C{j}"},
            "sk": {"S": "COUNT"},
            "succeeded": {"N": str(s)},
            "failed": {"N": str(f)},
            "done": {"N": str(s + f)},
            "room": {"N": str(max(run.expected // k - s - f, 0))},
        }
        ddb.put_item(TableName=ledger.table_name, Item=counter)
    for g in range(GROUPS):
        error = normalize_error(f"HTTP 4{g:02d}: the reason number {g} for item 1234")
        for j in range(k):
            ddb.put_item(
                TableName=ledger.table_name,
                Item={
                    "pk": {"S": f"RUN#{run_id}#E{j}"},
                    "sk": {"S": f"E#{group_key(error)}"},
                    "n": {"N": str(max(failed // (GROUPS * k), 1))},
                    "error": {"S": error},
                    "examples": {"L": [{"S": f"0-{g * 1000 + j:09d}"}]},
                },
            )
    task_id = "2-000004242"
    write_item_index(ledger, run_id, [("C0004242", task_id)])
    ledger.record_outcomes(
        run_id,
        k,
        [
            TaskOutcome(
                task_id, shard_of(task_id, job.shard_count), TaskState.FAILED, 3, "C0004242", error="HTTP 400: no"
            )
        ],
    )
    return "C0004242"


class CallCounter:
    """A boto3 client wrapper that counts the calls made through it, records each answer, and
    (with `replay` on) answers a call it has seen at once from its recording."""

    def __init__(self, inner: Any, calls: Counter[str], service: str) -> None:
        self._inner, self._calls, self._service = inner, calls, service
        self.replay = False
        self.misses = 0
        self._answers: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_") or name in ("get_paginator", "meta", "exceptions"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls[f"{self._service}.{name}"] += 1
            key = f"{name}:{json.dumps([args, kwargs], sort_keys=True, default=str)}"
            if self.replay and key in self._answers:
                return copy.deepcopy(self._answers[key])
            if self.replay:
                self.misses += 1  # a call the recording lacks goes to moto (counted in ours_ms)
            answer = attr(*args, **kwargs)
            self._answers[key] = copy.deepcopy(answer)
            return answer

        return counted


def measure(repeat: int) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from microprocess.cli.deployment import Deployment
    from microprocess.console.app import ConsoleSettings, create_app
    from microprocess.console.auth import ConsoleAuth
    from microprocess.console.live import RunSampler
    from microprocess.console.views import ConsoleData
    from microprocess.declarations import get_declarations
    from microprocess.ledger import Ledger, ledger_table_definition

    job = get_declarations().jobs.get("credit-scores")
    raw_ddb = boto3.client("dynamodb", region_name=REGION)
    raw_ddb.create_table(**ledger_table_definition("ledger"))
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="tasks")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    calls: Counter[str] = Counter()
    clients = {"dynamodb": CallCounter(raw_ddb, calls, "dynamodb"), "sqs": CallCounter(sqs, calls, "sqs")}
    dep = Deployment(
        name="bench",
        outputs={"LedgerTable": "ledger", "JobQueueUrls": json.dumps({job.name: queue}), "DeadLetterQueueUrl": dlq},
        client=lambda service: clients[service],
    )
    seeding = Ledger("ledger", client=raw_ddb)
    items = {
        "big": seed_run(raw_ddb, seeding, job, "big", TASKS, SUCCEEDED, FAILED),
        "small": seed_run(raw_ddb, seeding, job, "small", 100, 60, 2),
    }
    auth = ConsoleAuth()
    app = create_app(ConsoleData(dep), auth, sampler=RunSampler(), settings=ConsoleSettings(interval_s=0.05))
    client = TestClient(app)
    client.get(f"/login?token={auth.login_token}")
    rows = []
    for run_id, item in items.items():
        pages = {
            "runs": "/",
            "jobs": "/jobs",
            "run": f"/runs/{run_id}",
            "find item": f"/runs/{run_id}/find?q={item}",
            "task": f"/runs/{run_id}/tasks/2-000004242",
        }
        for name, path in pages.items():
            times = []
            for _ in range(repeat):
                calls.clear()
                started = time.perf_counter()
                resp = client.get(path)
                times.append(time.perf_counter() - started)
                assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
            made = Counter(calls)
            ours = []
            for wrapped in clients.values():
                wrapped.replay = True
            for _ in range(repeat):
                started = time.perf_counter()
                assert client.get(path).status_code == 200
                ours.append(time.perf_counter() - started)
            for wrapped in clients.values():
                wrapped.replay = False
            misses = sum(w.misses for w in clients.values())
            for wrapped in clients.values():
                wrapped.misses = 0
            rows.append(
                {
                    "run": run_id,
                    "tasks": TASKS if run_id == "big" else 100,
                    "page": name,
                    "median_ms": round(statistics.median(times) * 1000, 1),
                    "max_ms": round(max(times) * 1000, 1),
                    "ours_ms": round(statistics.median(ours) * 1000, 1),
                    "ours_calls_to_moto": misses,
                    "aws_calls": sum(made.values()),
                    "scans": sum(n for op, n in made.items() if op.endswith(".scan")),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    with mock_aws():
        rows = measure(args.repeat)
    for row in rows:
        print(json.dumps(row))
    print(f"\n{'page':<10} {'tasks':>12} {'median ms':>10} {'max ms':>8} {'ours ms':>8} {'AWS calls':>10} {'scans':>6}")
    for row in rows:
        print(
            f"{row['page']:<10} {row['tasks']:>12,} {row['median_ms']:>10} {row['max_ms']:>8} {row['ours_ms']:>8} "
            f"{row['aws_calls']:>10} {row['scans']:>6}"
        )
    if args.out:
        args.out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%d %H:%M"), "pages": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
