"""The chaos suite: runs on the real local stack with faults injected on purpose, and
checks that every run still ends as ARCHITECTURE §3 promises.

    python -m microprocess.chaos --size full     # `make chaos`: the whole matrix, a few minutes
    python -m microprocess.chaos --size small    # the subset `make test` runs

Faults are configured, not coded in: each scenario writes one `MICROPROCESS_CHAOS`
document read by the functions (crash points, duplicate deliveries; see
`microprocess.chaos.faults`) and by the queue service (503/429 with Retry-After, timeouts,
poison and bad-request ids; see `microservice.chaos`).

Every scenario must also prove that its fault fired (`Scenario.evidence`: at least one
kill, duplicate, retry, quarantined message or injected fault, counted from the metrics
and from the functions' `chaos: injected ...` log lines): a scenario whose fault did not
happen fails, it does not pass by luck.

Every run must end with (checked from the ledger, the report and the captured email):
finished (SUCCEEDED, or FAILED exactly when failures exceed the tolerance); expected =
number of source items; succeeded + failed = expected; every task exactly once in the
report; the reduce claimed once and the email sent once; failed tasks carry their last
error; malformed messages in the quarantine, none lost.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from microprocess.chaos.faults import FIRED_LOG_PREFIX
from microprocess.chaos.scenarios import (
    JOB,
    STOP_REASON,
    Row,
    Scenario,
    evidence_problems,
    fired_faults,
    item,
    scenarios,
)
from microprocess.ledger import Ledger, RunStatus, TaskState
from microprocess.pipeline.envelope import TaskEnvelope, shard_of

Echo = Callable[[str], None]
TERMINAL = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
#: Sweeper settings for the suite: stuck after a few quiet seconds (AWS default: 15 min).
SWEEPER_ENV = {"STUCK_AFTER_S": "6", "REDUCE_TIMEOUT_S": "45"}


class ChaosSuite:
    """Runs scenarios on one local stack (started by `run`)."""

    def __init__(self, *, workdir: Path, echo: Echo = print, timeout_s: float = 240.0) -> None:
        self.workdir = workdir
        self.echo = echo
        self.timeout_s = timeout_s
        self.service_restarts = 0

    # ----------------------------------------------------------- lifecycle

    def run(self, matrix: list[Scenario]) -> list[Row]:
        from microprocess.local.stack import LocalStack, UpOptions
        from microprocess.local.workspace import Workspace

        ws = Workspace.discover(self.workdir)
        self.stack = LocalStack(ws, echo=self.echo)
        state = self.stack.up(UpOptions(items=max(s.items for s in matrix)))
        try:
            self._connect(state)
            self._set_env(self.outputs["SweeperFunctionName"], SWEEPER_ENV)
            return [self._run_one(s) for s in matrix]
        finally:
            self.stack.down()

    def _connect(self, state: Any) -> None:
        self.state = state
        self.outputs = state.outputs
        self.endpoint = state.endpoint_url
        self.ca_bundle = state.ca_bundle
        self.lam = state.client("lambda", read_timeout=300)
        self.sqs = state.client("sqs")
        self.s3 = state.client("s3")
        self.logs = state.client("logs")
        self.ledger = Ledger(self.outputs["LedgerTable"], client=state.client("dynamodb"))
        self.functions = [
            self.outputs[k]
            for k in (
                "SplitterFunctionName",
                "ForwarderFunctionName",
                "ReduceForwarderFunctionName",
                "DeadLetterFunctionName",
                "SweeperFunctionName",
            )
        ]

    def _set_env(self, function: str, values: dict[str, str]) -> None:
        current = self.lam.get_function_configuration(FunctionName=function).get("Environment", {}).get("Variables", {})
        self.lam.update_function_configuration(FunctionName=function, Environment={"Variables": {**current, **values}})

    # ------------------------------------------------------------- a run

    def _run_one(self, sc: Scenario) -> Row:
        self.echo(f"--- scenario {sc.name}: {sc.items + len(sc.extra_items)} items")
        chaos_file = self.workdir / f"chaos-{sc.name}.json"
        doc = {"seed": 7, **sc.function_faults, **sc.service_faults}
        chaos_file.write_text(json.dumps(doc, indent=2))
        chaos_value = str(chaos_file) if sc.function_faults else ""
        for fn in self.functions:
            self._set_env(fn, {"MICROPROCESS_CHAOS": chaos_value})
        self.stack.restart_service(JOB.service, chaos=chaos_file if sc.service_faults else None)
        quarantine_before = self._quarantine_keys()

        run_id = f"{JOB.name}-chaos-{sc.name}-{secrets.token_hex(3)}"  # its job's name first (run_keys)
        source = sc.source()
        row = Row(sc.name, len(source))
        started = time.monotonic()
        t0_ms = int(time.time() * 1000)
        row.splitter_kills = self._start(run_id, source, kill_first=sc.kill_splitter, chaos_value=chaos_value)
        injected = self._inject_malformed(run_id) if sc.malformed else 0
        self._wait(sc, run_id, chaos_file)
        row.service_restarts = self.service_restarts
        row.wall_s = round(time.monotonic() - started, 1)
        time.sleep(1.5)  # let late duplicates and log lines land before counting
        self._check(sc, row, run_id, source, injected, quarantine_before, t0_ms)
        verdict = "ok" if row.ok else "PROBLEMS: " + "; ".join(row.problems)
        self.echo(f"    {row.status} in {row.wall_s} s ({self._phases(run_id)}): {verdict}")
        return row

    def _start(self, run_id: str, source: list[dict[str, str]], *, kill_first: int = 0, chaos_value: str = "") -> int:
        """Start the run with a synchronous splitter call; a killed splitter is resumed.
        With `kill_first`, the first that many invocations crash after sending their page."""
        event = json.dumps({"job": JOB.name, "run_id": run_id, "items": source, "source": "chaos"}).encode()
        splitter = self.outputs["SplitterFunctionName"]
        killing = kill_first > 0
        if killing:
            doc = {"seed": 7, "crash_rates": {"splitter_after_send": 1.0}}
            self._set_env(splitter, {"MICROPROCESS_CHAOS": json.dumps(doc)})
        kills = 0
        for _ in range(50):
            if killing and kills >= kill_first:
                self._set_env(splitter, {"MICROPROCESS_CHAOS": chaos_value})
                killing = False
            resp = self.lam.invoke(FunctionName=splitter, Payload=event)
            payload = resp["Payload"].read()
            if not resp.get("FunctionError"):
                result = json.loads(payload)
                if not result.get("continued"):
                    return kills
                continue
            kills += 1
        raise RuntimeError(f"run {run_id}: the splitter failed 50 times: {payload[:300]!r}")

    def _inject_malformed(self, run_id: str) -> int:
        """Malformed messages put straight on the queue: each must end in the quarantine."""
        queue = json.loads(self.outputs["JobQueueUrls"])[JOB.name]
        env = TaskEnvelope(job=JOB.name, run_id=run_id, task_id="0-000000001", shard=0, item=item(1))
        fake_id = "0-999999999"
        bodies = [
            "this is not JSON",
            json.dumps({"v": 1, "job": JOB.name, "run_id": run_id}),  # wrong schema
            env.model_copy(update={"job": "no-such-job"}).model_dump_json(),  # unknown job
            env.model_copy(update={"run_id": "no-such-run"}).model_dump_json(),  # unknown run
            TaskEnvelope(  # a task id the run does not own, by reference to a missing S3 payload
                job=JOB.name,
                run_id=run_id,
                task_id=fake_id,
                shard=shard_of(fake_id, JOB.shard_count),
                item_ref=f"s3://{self.outputs['ReportsBucket']}/claims/{JOB.name}/{run_id}/missing.json",
            ).model_dump_json(),
            "x" * (1_048_576 - 64),  # a (nearly) 1 MiB body
        ]
        for body in bodies:
            self.sqs.send_message(QueueUrl=queue, MessageBody=body)
        return len(bodies)

    def _wait(self, sc: Scenario, run_id: str, chaos_file: Path) -> None:
        self.service_restarts = 0
        deadline = time.monotonic() + self.timeout_s
        restarted = stopped = False
        last_sweep = time.monotonic()
        while time.monotonic() < deadline:
            prog = self.ledger.progress(run_id)
            if prog.status in TERMINAL:
                return
            done = prog.succeeded + prog.failed
            if (
                sc.restart_service_at
                and not restarted
                and prog.expected
                and done >= sc.restart_service_at * prog.expected
            ):
                self.echo(f"    restarting the queue service at {done}/{prog.expected} (a deploy)")
                self.stack.restart_service(JOB.service, chaos=chaos_file if sc.service_faults else None)
                restarted = True
                self.service_restarts += 1
            if sc.stop_at and not stopped and prog.expected and done >= sc.stop_at * prog.expected:
                stopped = self._stop(run_id, done, prog.expected)
            if sc.service_faults.get("crash_ids") and not self._service_running():
                self.echo(f"    the queue service died at {done}/{prog.expected}: restarting it")
                self.stack.restart_service(JOB.service, chaos=chaos_file)
                self.service_restarts += 1
            if time.monotonic() - last_sweep > 5:  # the schedule runs it every 5 minutes; here, often
                self.lam.invoke(FunctionName=self.outputs["SweeperFunctionName"], Payload=b"{}")
                last_sweep = time.monotonic()
            time.sleep(0.5)

    def _stop(self, run_id: str, done: int, expected: int) -> bool:
        """Stop the run as the platform does (`stop_if_hopeless` without the tolerance check)."""
        from microprocess.control.stop import stop_run
        from microprocess.pipeline.fanin import enqueue_reduce_parts
        from microprocess.pipeline.queue import QueueSender

        self.echo(f"    stopping the run at {done}/{expected}")
        if not stop_run(self.ledger, run_id, f"{STOP_REASON} at {done} of {expected} tasks"):
            return False
        sender = QueueSender(client=self.sqs, queue_url=self.outputs["ReduceQueueUrl"])
        enqueue_reduce_parts(sender, JOB, run_id, self.ledger.require_run(run_id).shard_count)
        return True

    def _service_running(self) -> bool:
        """Whether the chaos job's service process is alive (a crash id kills it)."""
        from microprocess.local.processes import is_running

        handle = self.stack.handles[self.stack.processes[JOB.service].process]
        return is_running(handle.pid, handle.start_ticks)

    # ------------------------------------------------------------ checks

    def _check(
        self,
        sc: Scenario,
        row: Row,
        run_id: str,
        source: list[dict[str, str]],
        injected: int,
        quarantine_before: set[str],
        t0_ms: int,
    ) -> None:
        p = row.problems
        run = self.ledger.require_run(run_id)
        prog = self.ledger.progress(run_id)
        row.status, row.succeeded, row.failed = str(prog.status), prog.succeeded, prog.failed
        if prog.status not in TERMINAL:
            p.append(f"run did not finish in {self.timeout_s:.0f} s ({prog.status}, {prog.pending} pending)")
        if prog.status is not sc.expect:
            p.append(f"ended {prog.status}, expected {sc.expect}")
        if prog.expected != len(source):
            p.append(f"expected {prog.expected} != {len(source)} source items")
        tasks = [t for k in range(run.shard_count) for t in self.ledger.iter_results(run_id, k)]
        if sc.stop_at:
            # Stopped: every task once, in the report (done) or in not_attempted.csv, never both
            if not (run.error or "").startswith(STOP_REASON):
                p.append(f"the run was not stopped by the suite: {run.error}")
            listed = [r["task_id"] for r in self._report_rows(run.report_uri, "not_attempted.csv")]
            row.not_attempted = len(listed)
            if len(tasks) + len(listed) != len(source) or {t.task_id for t in tasks} & set(listed):
                p.append(f"{len(tasks)} done + {len(listed)} not attempted != {len(source)} tasks, or overlapping")
        else:
            if prog.succeeded + prog.failed != prog.expected:
                p.append(f"succeeded {prog.succeeded} + failed {prog.failed} != expected {prog.expected}")
            if len(tasks) != len(source):
                p.append(f"{len(tasks)} task records for {len(source)} items")
        for t in tasks:
            if t.state is TaskState.FAILED and not t.error:
                p.append(f"failed task {t.task_id} has no error")
                break
        rows = self._report_rows(run.report_uri)
        report_ids = [r["task_id"] for r in rows]
        if sorted(report_ids) != sorted(t.task_id for t in tasks):
            p.append(f"report has {len(report_ids)} rows ({len(set(report_ids))} distinct) for {len(tasks)} tasks")
        failed_rows = [r for r in rows if r.get("state") == "FAILED"]
        if any(not r.get("error") for r in failed_rows):
            p.append("a failed row of the report has no error")
        metrics = self._metrics(run_id, t0_ms)
        row.duplicates_absorbed = int(metrics.get("DuplicatesAbsorbed", 0))
        # A retry is a counted backoff or, within the job's throttle budget, a 429/503 re-sent uncounted.
        row.retries = int(metrics.get("TasksRetried", 0)) + int(metrics.get("TasksThrottled", 0))
        # The claim itself is the run's conditional write (reduce_claimed_at); the metrics tell a
        # second claim apart. A claimer killed between its claim and its metrics flush leaves the
        # claim without a metric (the sweeper enqueues its parts later), so 0 is not a problem.
        row.reduce_claims = int(metrics.get("ReducesClaimed", 0))
        if not run.reduce_claimed_at:
            p.append("the reduce was never claimed (the run has no reduce_claimed_at)")
        if row.reduce_claims > 1:
            p.append(f"reduce claimed {row.reduce_claims} times")
        fired = fired_faults(self._log_lines(t0_ms))
        row.crashes = fired.get("crash", 0)
        row.duplicates_sent = fired.get("duplicate", 0)
        row.ambiguous_writes = fired.get("applied_then_error", 0)
        row.emails = self._emails(run_id)
        if row.emails != 1:
            p.append(f"{row.emails} emails for the run")
        crash_ids = set(sc.service_faults.get("crash_ids", ()))
        if crash_ids:
            # Every push of a crash item reached the service and killed it: each counted, so the
            # service was killed (and restarted) exactly max_attempts times per item.
            crashed = [t for t in tasks if t.item_id in crash_ids]
            if len(crashed) != len(crash_ids) or any(
                t.state is not TaskState.FAILED or t.attempts != JOB.max_attempts for t in crashed
            ):
                p.append(f"crash items not FAILED after {JOB.max_attempts} attempts: {crashed}")
            if row.service_restarts != JOB.max_attempts * len(crash_ids):
                p.append(
                    f"the service was killed {row.service_restarts} times by {len(crash_ids)} crash item(s) of "
                    f"{JOB.max_attempts} attempts: its pushes were not counted as attempts"
                )
        if sc.malformed:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row.quarantined = len(self._quarantine_keys() - quarantine_before)
                if row.quarantined >= injected:
                    break
                time.sleep(1)
            if row.quarantined != injected:
                p.append(f"{injected} malformed messages injected, {row.quarantined} quarantined")
        p.extend(evidence_problems(sc, row))

    def _phases(self, run_id: str) -> str:
        """Seconds from the run's creation to each milestone the ledger records."""
        from datetime import datetime

        run = self.ledger.require_run(run_id)
        t0 = datetime.fromisoformat(run.created_at.replace("Z", "+00:00"))
        marks = {
            "split": run.split_finished_at,
            "reduce claimed": run.reduce_claimed_at,
            "finalize claimed": run.finalize_claimed_at,
            "finished": run.finished_at,
        }
        return ", ".join(
            f"{name} +{(datetime.fromisoformat(ts.replace('Z', '+00:00')) - t0).total_seconds():.1f} s"
            for name, ts in marks.items()
            if ts
        )

    def _report_rows(self, report_uri: str | None, name: str = "report.csv") -> list[dict[str, str]]:
        if not report_uri:
            return []
        bucket, _, prefix = report_uri.removeprefix("s3://").partition("/")
        body = self.s3.get_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{name}")["Body"].read()
        return list(csv.DictReader(io.StringIO(body.decode())))

    def _quarantine_keys(self) -> set[str]:
        keys: set[str] = set()
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.outputs["ReportsBucket"], Prefix="quarantine/"):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        return keys

    def _emails(self, run_id: str) -> int:
        from microprocess.local.emulator import captured_emails

        return sum(1 for m in captured_emails(self.endpoint, self.ca_bundle) if run_id in str(m.get("Subject", "")))

    def _log_messages(self, t0_ms: int) -> Iterator[str]:
        """Every log message the functions wrote since `t0_ms` (the scenarios run one at a time,
        so these are the current scenario's)."""
        from microprocess.local.emulator import function_log_messages

        return function_log_messages(self.lam, self.logs, self.functions, t0_ms)

    def _log_lines(self, t0_ms: int) -> list[str]:
        """The functions' log lines since `t0_ms` that report an injected fault."""
        return [msg for msg in self._log_messages(t0_ms) if FIRED_LOG_PREFIX in msg]

    def _metrics(self, run_id: str, t0_ms: int) -> dict[str, float]:
        """Sum the EMF metrics the functions logged for `run_id` since `t0_ms`."""
        from microprocess.local.signals import emf_metrics

        totals: dict[str, float] = {}
        for msg in self._log_messages(t0_ms):
            found = emf_metrics(msg) if run_id in msg else None
            if found is None or found[0].get("run_id") != run_id:
                continue
            for name, values in found[1].items():
                totals[name] = totals.get(name, 0) + sum(values)
        return totals


COLUMNS = [
    ("scenario", "scenario"),
    ("items", "items"),
    ("status", "status"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("duplicates_absorbed", "duplicates absorbed"),
    ("duplicates_sent", "duplicates sent"),
    ("retries", "retries"),
    ("reduce_claims", "reduce count"),
    ("emails", "emails"),
    ("splitter_kills", "splitter kills"),
    ("crashes", "crashes"),
    ("ambiguous_writes", "ambiguous writes"),
    ("quarantined", "quarantined"),
    ("not_attempted", "not attempted"),
    ("wall_s", "wall time (s)"),
]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " | checks |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = [str(getattr(r, k)) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {'pass' if r.ok else 'FAIL: ' + '; '.join(r.problems)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microprocess.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--workdir", type=Path, default=Path(".microprocess/chaos"))
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=Path("bench/results/chaos-latest.md"))
    args = parser.parse_args(argv)
    matrix = [s for s in scenarios(args.size) if not args.only or s.name in args.only]
    if not matrix:
        parser.error(f"no scenario matches {args.only}; known: {[s.name for s in scenarios(args.size)]}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = ChaosSuite(workdir=args.workdir.resolve()).run(matrix)
    table = markdown_table(rows)
    print(table)
    passed = sum(r.ok for r in rows)
    print(f"\n{passed} passed, {len(rows) - passed} failed  ({time.monotonic() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
