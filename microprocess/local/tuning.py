"""Fitting the deployed local stage to one laptop's cores.

The job declares the forwarder's event-source concurrency for AWS (50 concurrent
batches). In the emulator every concurrent batch is a Python worker process on the
same few cores, and every AWS call goes through the emulator's one process: measured
on 2 cores with 10,000 tasks, 50 concurrent batches took ~90 s (35 worker cold starts
alone cost ~25 s of CPU), 16 took ~78 s, 8 took ~64 s and 4 took ~90 s. So the local
stack deploys the CDK app's local stage with context `forwarder_max_concurrency` =
`laptop_concurrency()` and starts (warms) that many workers during set-up, so that
their imports are not paid in run time.

A service declaring a `capacity` has its jobs' caps set by its controller (`control.share`),
which may let more batches run at once than the deployed cap: its capacity in batches. The
local stack warms that many workers too (`forwarder_workers`): measured in P9 (K = 48 pushes,
batches of 4, 12 batches at once against 8 deployed), the four workers started cold when the
caps opened took the two cores for ~1.5 s, the warm ones' batches stalled with them, and the
service sat idle (its pushes in flight fell to 0) before it first reached K. The reducer (the
forwarder's code on the reduce queue) is warmed as many as its event source runs at once
(`warm_reducers`): in P9 two runs ending together had their 8 reduce parts at once, and the
second run's 4 waited ~4 s for cold workers, the last seconds of the whole.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from microprocess.declarations import Declarations

#: Concurrent forwarder batches per CPU core in the emulator.
BATCHES_PER_CORE = 4
MIN_CONCURRENCY = 4


def laptop_concurrency(cores: int | None = None) -> int:
    """Concurrent forwarder batches that suit this machine: 4 per core, at least 4."""
    return max(MIN_CONCURRENCY, BATCHES_PER_CORE * (cores or os.cpu_count() or 2))


def forwarder_workers(deployed: int, declarations: Declarations) -> int:
    """Forwarder workers to warm: the event sources' `deployed` concurrency, or, when more, the batches
    a shared service's controller may run at once (its `concurrent_pushes` in its jobs' smallest
    batches, at most their `max_concurrency` together) plus one per job (a batch started under the
    caps before a change still runs beside the new caps' batches); at most 4 x `deployed`."""
    most = deployed
    for service in declarations.services:
        jobs = declarations.jobs_of(service.name)
        pushes = service.capacity.concurrent_pushes if service.capacity is not None else None
        if not jobs or pushes is None:
            continue
        batches = min(pushes // min(j.batch_size for j in jobs), sum(j.max_concurrency for j in jobs))
        most = max(most, batches + len(jobs))
    return min(most, 4 * deployed)


def warm_workers(lambda_client: Any, function_name: str, n: int) -> int:
    """Start `n` warm workers of an SQS-triggered function with empty batches (a no-op for it).

    Returns how many invocations answered without a function error.
    """
    if n <= 0:
        return 0
    payload = json.dumps({"Records": []}).encode()

    def invoke(_: int) -> bool:
        resp = lambda_client.invoke(FunctionName=function_name, InvocationType="RequestResponse", Payload=payload)
        resp["Payload"].read()
        return "FunctionError" not in resp

    with ThreadPoolExecutor(max_workers=n) as pool:
        return sum(pool.map(invoke, range(n)))


def warm_reducers(lambda_client: Any, function_name: str | None, warm: bool = True) -> int:
    """Warm as many reducer workers as its event source (the reduce queue) runs batches at once."""
    if not function_name or not warm:
        return 0
    mappings = lambda_client.list_event_source_mappings(FunctionName=function_name)["EventSourceMappings"]
    most = max(((m.get("ScalingConfig") or {}).get("MaximumConcurrency") or 0 for m in mappings), default=0)
    return warm_workers(lambda_client, function_name, most)
