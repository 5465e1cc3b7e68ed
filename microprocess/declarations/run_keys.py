"""Which ledger keys belong to a job: a run id starts with its job's name and a dash.

Every ledger item of a run has a partition key that starts with `RUN#<run id>` (the run, its
counters `#C<j>`, shards `#S<k>` and failure groups `#E<j>`: `records`). Run ids the platform
makes (`<job>-<UTC time>-<hex>` for a manual start or a retry, `<job>-<event time>` for a
scheduled one) start with `<job>-`, and a run started with a run id of its own choosing must
too. So "the keys of job J" is one IAM pattern, `RUN#J-*` on `dynamodb:LeadingKeys`: the role
of a bundled service that reduces (`reduce = "service"`) reads and updates only its own jobs'
runs (`infra.service_roles`).

Two jobs whose names overlap (`scores` and `scores-daily`) would share a pattern; the
declarations refuse that when the two push to different services and one of them is reduced by
its service (`overlapping_run_keys`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from microprocess.declarations.models import JobDeclaration, ReduceMode

#: Every ledger partition key starts with this and the run id (`records._run_pk`).
RUN_KEY_PREFIX = "RUN#"


def run_id_prefix(job: str) -> str:
    """What every run id of `job` starts with."""
    return f"{job}-"


def run_id_refusal(job: str, run_id: str) -> str | None:
    """Why `run_id` may not name a new run of `job` (None when it may)."""
    prefix = run_id_prefix(job)
    if run_id.startswith(prefix) and len(run_id) > len(prefix):
        return None
    return (
        f"run_id {run_id!r} does not start with its job's name and a dash ({prefix!r}): a run's ledger keys are "
        f"granted by that prefix (a service that reduces reads only its own jobs' runs). Name it "
        f"'{prefix}<anything>', e.g. {prefix + run_id if run_id else prefix + 'manual-1'!r}, or leave run_id out "
        f"and the platform names it"
    )


def job_keys_pattern(job: str) -> str:
    """The `dynamodb:LeadingKeys` pattern (IAM `StringLike`) of every ledger item of `job`'s runs."""
    return f"{RUN_KEY_PREFIX}{run_id_prefix(job)}*"


def overlapping_run_keys(jobs: Iterable[JobDeclaration], service_of: Callable[[str], str]) -> str | None:
    """Why these jobs' run keys cannot be told apart by IAM (None when they can): a job whose name and a
    dash begin the name of a job of another service, when one of the two is reduced by its service."""
    declared = sorted(jobs, key=lambda j: j.name)
    for short in declared:
        for long in declared:
            if long is short or not long.name.startswith(run_id_prefix(short.name)):
                continue
            if service_of(short.name) == service_of(long.name):
                continue
            reducer = short if short.reduce is ReduceMode.SERVICE else long
            if ReduceMode.SERVICE not in (short.reduce, long.reduce):
                continue
            return (
                f"jobs '{short.name}' and '{long.name}' push to different services, and the runs of "
                f"'{long.name}' ('{long.name}-...') also start with '{run_id_prefix(short.name)}': the role of "
                f"service '{service_of(reducer.name)}' (which reduces '{reducer.name}') would reach the other's "
                f"runs. Rename one so that neither name followed by '-' begins the other"
            )
    return None
