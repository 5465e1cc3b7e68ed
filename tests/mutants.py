"""A mutation check the team can rerun: plant known bugs one at a time and see the tests catch them.

Each mutant is a small, realistic bug (a condition dropped, a bound changed, a call that does
nothing) written as exact text edits. The script copies the checkout (tracked and untracked,
not ignored files: `tests.docs_check.scratch_copy`) into a scratch folder once, plants one
mutant at a time there (never in the working tree), runs the mutant's own fast tests (or,
with `--full`, the whole fast suite) and prints `caught` or `SURVIVED` per mutant, with the
first failing test. It exits 1 when a mutant survived or its tests could not run.

    .venv/bin/python -m tests.mutants                       # every mutant, its own tests (~5 min on a quiet machine)
    .venv/bin/python -m tests.mutants stop-early-all-failed  # some, by name
    .venv/bin/python -m tests.mutants --full                 # the whole fast suite per mutant (slow)
    .venv/bin/python -m tests.mutants --list

`tests/test_mutants.py` checks that every mutant's search text is still found exactly once in
its file and that its tests exist, so the list cannot rot silently when the code moves.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.docs_check import scratch_copy

FAST = ["-m", "not e2e and not infra"]


@dataclass(frozen=True)
class Edit:
    """Replace `search` (found exactly once in `path`) with `replace`."""

    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class Mutant:
    name: str
    #: The bug, as a reviewer would describe it.
    bug: str
    edits: tuple[Edit, ...]
    #: The tests that must catch it (pytest node ids or files), fastest first.
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # ---- issue 31: the three planted bugs that used to pass the whole fast suite
    Mutant(
        "reduce-claim-without-status",
        "the reduce claim's conditional update no longer requires the run to be RUNNING",
        (
            Edit(
                "microprocess/ledger/completion.py",
                'cond="#st = :running AND split_done = :t",',
                'cond="split_done = :t",',
            ),
            Edit(
                "microprocess/ledger/completion.py",
                '                ":reducing": "REDUCING",\n                ":running": "RUNNING",\n',
                '                ":reducing": "REDUCING",\n',
            ),
        ),
        (
            "tests/test_ledger_completion.py::test_two_completion_checks_that_both_read_running_claim_the_reduce_once",
            "tests/test_ledger_stateful.py",
        ),
    ),
    Mutant(
        "defer-grace-60s",
        "the deferral grace shortened to 60 s (a task of a dead splitter's page ends in the DLQ)",
        (
            Edit(
                "microprocess/pipeline/settings.py",
                "    return split_restart_bound_s(stuck_after_s, sweep_period_s) + sweep_period_s\n",
                "    return 60\n",
            ),
        ),
        (
            "tests/test_functions.py::test_a_task_deferred_while_its_splitter_is_dead_waits_uncounted_until_the_sweeper_restarts_the_split",
        ),
    ),
    Mutant(
        "stop-early-all-failed",
        "stop early checked only after a batch whose every task failed",
        (
            Edit(
                "microprocess/pipeline/forwarder.py",
                "            if len(new) > ok:  # new failures",
                "            if new and ok == 0:  # new failures",
            ),
        ),
        ("tests/test_control_stop.py",),
    ),
    # ---- issue 25 item 6: the grace and the sweeper's restart of a dead splitter
    Mutant(
        "defer-grace-fixed-900s",
        "the deferral grace a fixed 900 s again, shorter than the sweeper's worst restart (900 + 300 s)",
        (
            Edit(
                "microprocess/pipeline/settings.py",
                "    return split_restart_bound_s(stuck_after_s, sweep_period_s) + sweep_period_s\n",
                "    return 900\n",
            ),
        ),
        (
            "tests/test_functions.py::test_a_task_deferred_while_its_splitter_is_dead_waits_uncounted_until_the_sweeper_restarts_the_split",
        ),
    ),
    Mutant(
        "sweeper-restarts-a-split-late",
        "the sweeper restarts a dead split after twice `stuck_after_s` (past the deferral grace)",
        (
            Edit(
                "microprocess/pipeline/sweeper.py",
                "            if now - last >= self.stuck_after:",
                "            if now - last >= 2 * self.stuck_after:",
            ),
        ),
        (
            "tests/test_functions.py::test_a_task_deferred_while_its_splitter_is_dead_waits_uncounted_until_the_sweeper_restarts_the_split",
        ),
    ),
    # ---- what the five weak tests of issue 31 claimed
    Mutant(
        "sweeper-handler-sweeps-nothing",
        "the sweeper handler answers an empty report without sweeping",
        (
            Edit(
                "functions/sweeper/handler.py",
                "    report = runtime.sweeper().sweep().as_dict()",
                '    report = {"runs_seen": 0, "stuck": [], "splits_finished": [], "reduces_claimed": []}',
            ),
        ),
        ("tests/test_handlers.py::test_dead_letter_and_sweeper_handlers",),
    ),
    Mutant(
        "dead-letter-handler-records-nothing",
        "the dead-letter handler acknowledges every message without recording or quarantining it",
        (
            Edit(
                "functions/dead_letter/handler.py",
                "    return runtime.dead_letter().handle(event)",
                '    return {"batchItemFailures": []}',
            ),
        ),
        ("tests/test_handlers.py::test_dead_letter_and_sweeper_handlers",),
    ),
    Mutant(
        "retry-failed-waits-on-the-old-run",
        "`retry-failed --wait` follows the old run instead of the new one",
        (
            Edit(
                "microprocess/cli/runs.py",
                "finish_waited(wait_for(dep, started.run_id, timeout_s=timeout",
                "finish_waited(wait_for(dep, run_id, timeout_s=timeout",
            ),
        ),
        ("tests/test_retry_failed.py::test_cli_retry_failed_starts_a_run_that_finishes_exactly_the_failed_tasks",),
    ),
    Mutant(
        "backoff-with-the-wrong-receipt-handle",
        "the backoff's visibility change names the message id, not the receipt handle (SQS refuses it)",
        (
            Edit(
                "microprocess/pipeline/forwarder.py",
                'ReceiptHandle=w.record["receiptHandle"], VisibilityTimeout=delay',
                'ReceiptHandle=w.record["messageId"], VisibilityTimeout=delay',
            ),
        ),
        ("tests/test_functions.py::test_retry_after_is_honoured",),
    ),
    # ---- the mutations tests/README.md has listed since the first pass
    Mutant(
        "forwarder-run-cache-1h",
        "the forwarder's run cache kept for an hour by default (a cancel takes an hour)",
        (
            Edit(
                "microprocess/pipeline/forwarder.py",
                "        run_cache_ttl_s: float = RUN_CACHE_TTL_S,",
                "        run_cache_ttl_s: float = 3600.0,",
            ),
        ),
        ("tests/test_forwarder_promises.py::test_a_cancel_reaches_a_warm_forwarder_within_2_s",),
    ),
    Mutant(
        "run-cache-ttl-1h",
        "`RunCache` keeps a run for an hour by default",
        (
            Edit(
                "microprocess/pipeline/admission.py",
                "def __init__(self, ledger: Ledger, ttl_s: float = RUN_CACHE_TTL_S)",
                "def __init__(self, ledger: Ledger, ttl_s: float = 3600.0)",
            ),
        ),
        ("tests/test_forwarder_promises.py::test_the_run_cache_rereads_a_run_at_least_every_2_s",),
    ),
    Mutant(
        "deployed-forwarder-run-cache-1h",
        "`runtime.forwarder()` builds the deployed forwarder with an hour-long run cache",
        (
            Edit(
                "microprocess/pipeline/runtime.py",
                "        defer_grace_s=s.defer_grace_s,\n",
                "        defer_grace_s=s.defer_grace_s,\n        run_cache_ttl_s=3600,\n",
            ),
        ),
        ("tests/test_handlers.py::test_the_deployed_forwarder_stops_calling_within_2_s_of_a_cancel",),
    ),
    Mutant(
        "retry-failed-first-task-only",
        "`FailedTasksSource` keeps only the first failed task of each page",
        (Edit("microprocess/pipeline/sources.py", "for t in failed]", "for t in failed[:1]]"),),
        ("tests/test_retry_failed.py::test_retry_failed_reruns_every_failed_task_inline_and_by_reference",),
    ),
    Mutant(
        "retry-after-seconds-only",
        "`parse_retry_after` ignores HTTP dates",
        (Edit("microprocess/pipeline/push.py", "        when = parsedate_to_datetime(text)", "        when = None"),),
        ("tests/test_forwarder_promises.py::test_retry_after_worked_examples",),
    ),
    Mutant(
        "backoff-without-jitter",
        "`backoff_seconds` without jitter (every retry of an outage lands at once)",
        (Edit("microprocess/pipeline/resend.py", "* rng.uniform(0.5, 1.0)", "* 1.0"),),
        ("tests/test_forwarder_promises.py::test_backoff_worked_examples",),
    ),
    Mutant(
        "sweeper-ignores-shedding",
        "the sweeper recounts a run whose service asked every job to wait (and fences the completions "
        "that resume after the wait off until the next repair)",
        (
            Edit(
                "microprocess/pipeline/sweeper.py",
                "                if wait_ends is not None and self.now() - wait_ends < self.stuck_after:\n",
                "                if False:\n",
            ),
        ),
        (
            "tests/test_functions.py::test_a_run_whose_service_sheds_load_is_waiting_not_stuck_until_stuck_after_past_the_wait",
        ),
    ),
    Mutant(
        "resend-leaves-its-tenant",
        "a re-sent task loses its run's fair-queue tenant (it would queue behind other runs' backlogs)",
        (Edit("microprocess/pipeline/resend.py", "                **group_field(record_group(record)),\n", ""),),
        ("tests/test_fair_runs.py::test_a_re_sent_task_keeps_its_tenant_and_one_without_stays_without",),
    ),
    Mutant(
        "high-run-one-tenant",
        "a `--priority high` run is sent as one tenant (no larger share within its job)",
        (Edit("microprocess/pipeline/tenants.py", "    if tenants <= 1:\n", "    if True:\n"),),
        ("tests/test_fair_runs.py::test_the_splitter_sends_a_high_run_as_priority_weight_tenants",),
    ),
    # ---- other realistic bugs
    Mutant(
        "duplicates-counted",
        "a duplicate delivery is counted as a success",
        (
            Edit(
                "microprocess/ledger/tasks.py",
                "        states = [w for w in written if w is not None]",
                "        states = [w or TaskState.SUCCEEDED for w in written]",
            ),
        ),
        ("tests/test_functions.py::test_duplicate_deliveries_are_counted_once", "tests/test_ledger_tasks.py"),
    ),
    Mutant(
        "4xx-400-retried",
        "a 400 is retried instead of failing the task at once",
        (
            Edit(
                "microprocess/pipeline/push.py",
                "if 400 <= self.status < 500 and self.status not in (408, 429):",
                "if 400 <= self.status < 500 and self.status not in (400, 408, 429):",
            ),
        ),
        ("tests/test_functions.py::test_4xx_is_a_permanent_failure_without_retry",),
    ),
    Mutant(
        "cancelled-run-still-pushed",
        "the messages of a cancelled run are pushed",
        (
            Edit(
                "microprocess/pipeline/admission.py",
                "    if a.run.status is RunStatus.CANCELLED:",
                "    if a.run.status is RunStatus.CANCELLED and False:",
            ),
        ),
        ("tests/test_functions.py::test_cancelled_run_messages_are_acknowledged_without_calls",),
    ),
    Mutant(
        "park-before-ownership",
        "a paused run's message parked before its shard and ownership are checked (resume re-sends a stranger)",
        (
            Edit(
                "microprocess/pipeline/admission.py",
                "    shard_and_ownership,\n    park_paused,\n",
                "    park_paused,\n    shard_and_ownership,\n",
            ),
        ),
        (
            "tests/test_admission.py::test_a_paused_runs_message_is_checked_for_its_shard_and_ownership_before_it_is_parked",
            "tests/test_control_pause.py::test_a_paused_run_checks_a_message_before_parking_it_and_the_malformed_are_quarantined",
        ),
    ),
    Mutant(
        "tolerance-reached-is-failed",
        "failures exactly at the tolerated percentage fail the run",
        (
            Edit(
                "microprocess/control/tolerance.py",
                "return Decimal(failed) * 100 > Decimal(str(tolerated_failure_pct))",
                "return Decimal(failed) * 100 >= Decimal(str(tolerated_failure_pct))",
            ),
        ),
        ("tests/test_control_stop.py::test_cannot_succeed",),
    ),
    Mutant(
        "unaccounted-task-not-owned",
        "a task whose page is sent but not accounted yet is taken for a stranger (dead-lettered)",
        (
            Edit(
                "microprocess/ledger/records.py",
                "        return False if self.split_done or self.cursors[seg] == CURSOR_DONE else None",
                "        return False",
            ),
        ),
        ("tests/test_functions.py::test_a_task_sent_but_not_yet_accounted_is_deferred_not_lost",),
    ),
    Mutant(
        "shard-by-salted-hash",
        "a task's shard from Python's `hash()`, salted per process (forwarders disagree on shards)",
        (
            Edit(
                "microprocess/pipeline/envelope.py",
                '    return int.from_bytes(digest, "big") % shard_count',
                "    return hash(task_id) % shard_count",
            ),
        ),
        ("tests/test_declarations.py::test_shards_are_a_stable_hash_of_the_task_id",),
    ),
)


def find(name: str) -> Mutant:
    for m in MUTANTS:
        if m.name == name:
            return m
    raise SystemExit(f"no mutant named {name!r}; --list shows them")


def apply(mutant: Mutant, root: Path) -> dict[Path, str]:
    """Plant `mutant` under `root`; returns each touched file's original text (to restore).
    Raises ValueError when a search text is not found exactly once (the list has rotted)."""
    originals: dict[Path, str] = {}
    for edit in mutant.edits:
        path = root / edit.path
        current = path.read_text()
        originals.setdefault(path, current)
        found = current.count(edit.search)
        if found != 1:
            raise ValueError(
                f"mutant {mutant.name}: {edit.path}: search text found {found} times, not once: {edit.search!r}"
            )
        path.write_text(current.replace(edit.search, edit.replace))
    return originals


def run_tests(scratch: Path, tests: list[str]) -> tuple[int, str]:
    """Run `tests` (all fast tests when empty) in the scratch copy, stopping at the first failure.
    Returns pytest's exit code and the first failing test (empty when none failed)."""
    env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "-rfE", *FAST, *tests]
    done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, check=False)
    failed = [
        line.split(" - ")[0] for line in done.stdout.splitlines() if line.startswith(("FAILED tests/", "ERROR tests/"))
    ]
    return done.returncode, failed[0] if failed else ""


def check_isolation(scratch: Path) -> None:
    """The tests in the scratch copy must import the scratch copy's code, not the working tree's."""
    probe = "import microprocess, functions, tests; print(microprocess.__file__, functions.__path__[0], tests.__file__)"
    env = {**os.environ, "PYTHONPATH": str(scratch)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=scratch, env=env, capture_output=True, text=True, check=True
    )
    paths = out.stdout.split()
    if not paths or not all(Path(p).resolve().is_relative_to(scratch.resolve()) for p in paths):
        raise SystemExit(f"the scratch copy imports code from elsewhere ({out.stdout.strip()}): no mutant would count")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--full", action="store_true", help="run the whole fast suite per mutant")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:40} {m.bug}")
        return 0
    chosen = [find(n) for n in args.names] if args.names else list(MUTANTS)
    with tempfile.TemporaryDirectory(prefix="microprocess-mutants-") as tmp:
        scratch = Path(tmp)
        scratch_copy(scratch)
        check_isolation(scratch)
        baseline = sorted({t for m in chosen for t in m.tests}) if not args.full else []
        print(
            f"baseline: the unmutated copy passes {'the fast suite' if args.full else 'every mutant test'} ...",
            flush=True,
        )
        code, failed = run_tests(scratch, baseline)
        if code != 0:
            print(f"baseline FAILED ({failed or f'pytest exit {code}'}): fix the tests before judging mutants")
            return 2
        survived = errors = 0
        for m in chosen:
            started = time.monotonic()
            originals = apply(m, scratch)
            try:
                code, failed = run_tests(scratch, [] if args.full else list(m.tests))
            finally:
                for path, text in originals.items():
                    path.write_text(text)
            verdict = {0: "SURVIVED", 1: "caught"}.get(code, f"error (pytest exit {code})")
            survived += code == 0
            errors += code not in (0, 1)
            print(f"{verdict:10} {m.name:38} {time.monotonic() - started:5.1f} s  {m.bug}", flush=True)
            if failed:
                print(f"{'':10} {'':38}          by {failed}", flush=True)
        caught = len(chosen) - survived - errors
        print(f"{caught} of {len(chosen)} caught, {survived} survived, {errors} errors", flush=True)
        return 0 if survived == errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
