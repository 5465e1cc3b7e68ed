"""Fitting the deployed local stage to one laptop's cores.

The job declares the forwarder's event-source concurrency for AWS (50 concurrent
batches). In the emulator every concurrent batch is a Python worker process on the
same few cores, and every AWS call goes through the emulator's one process: measured
on 2 cores with 10,000 tasks, 50 concurrent batches took ~90 s (35 worker cold starts
alone cost ~25 s of CPU), 16 took ~78 s, 8 took ~64 s and 4 took ~90 s. So the local
stack caps the forwarder's event source at `laptop_concurrency()` and starts (warms)
that many workers during set-up, so that their imports are not paid in run time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Concurrent forwarder batches per CPU core in the emulator.
BATCHES_PER_CORE = 4
MIN_CONCURRENCY = 4


def laptop_concurrency(cores: int | None = None) -> int:
    """Concurrent forwarder batches that suit this machine: 4 per core, at least 4."""
    return max(MIN_CONCURRENCY, BATCHES_PER_CORE * (cores or os.cpu_count() or 2))


def cap_event_source_concurrency(lambda_client: Any, function_name: str, cap: int, echo: Callable[[str], None]) -> int:
    """Lower the SQS event sources of `function_name` to at most `cap` concurrent batches.

    Returns the concurrency in force. A mapping already at or under `cap` is left as deployed.
    """
    in_force = cap
    mappings = lambda_client.list_event_source_mappings(FunctionName=function_name)["EventSourceMappings"]
    for mapping in mappings:
        declared = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")
        if declared is not None and declared <= cap:
            in_force = declared
            continue
        lambda_client.update_event_source_mapping(UUID=mapping["UUID"], ScalingConfig={"MaximumConcurrency": cap})
        echo(f"laptop limit: forwarder event source concurrency {declared} → {cap} ({os.cpu_count()} cores)")
    return in_force


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
