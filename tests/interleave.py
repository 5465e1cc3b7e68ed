"""Deterministic interleavings of two ledger callers, without threads.

`PausedBeforeWrite` wraps a DynamoDB client: the first update sent through it that `when`
selects is held while `meanwhile` runs (another caller, start to finish), then sent. The
wrapped caller has made its reads and decided to write; the other caller reads the same
state and writes first: the race two forwarders (or a forwarder and the sweeper) finishing
a run at once can run, played the same way every time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def claims_the_reduce(update: dict[str, Any]) -> bool:
    """Whether an `update_item` request moves a run to REDUCING (the reduce claim, or a stop)."""
    return update.get("Key", {}).get("sk") == {"S": "RUN"} and {"S": "REDUCING"} in update.get(
        "ExpressionAttributeValues", {}
    ).values()


class PausedBeforeWrite:
    """A DynamoDB client whose first `update_item` selected by `when` waits for `meanwhile()`."""

    def __init__(
        self,
        client: Any,
        meanwhile: Callable[[], object],
        when: Callable[[dict[str, Any]], bool] = claims_the_reduce,
    ) -> None:
        self.client = client
        self.meanwhile: Callable[[], object] | None = meanwhile
        self.when = when
        #: Whether the pause happened, and what `meanwhile()` returned then.
        self.paused = False
        self.outcome: object = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def update_item(self, **kw: Any) -> Any:
        if self.meanwhile is not None and self.when(kw):
            meanwhile, self.meanwhile = self.meanwhile, None
            self.paused = True
            self.outcome = meanwhile()
        return self.client.update_item(**kw)
