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
    return (
        update.get("Key", {}).get("sk") == {"S": "RUN"}
        and {"S": "REDUCING"} in update.get("ExpressionAttributeValues", {}).values()
    )


class PausedBeforeWrite:
    """A DynamoDB client whose first `update_item` selected by `when` waits for `meanwhile()`
    (with `every`, each such update does; `meanwhile` itself is never paused)."""

    def __init__(
        self,
        client: Any,
        meanwhile: Callable[[], object],
        when: Callable[[dict[str, Any]], bool] = claims_the_reduce,
        *,
        every: bool = False,
    ) -> None:
        self.client = client
        self.meanwhile: Callable[[], object] | None = meanwhile
        self.when = when
        self.every = every
        #: What `meanwhile()` returned at each pause, in order.
        self.outcomes: list[object] = []
        self._inside = False

    @property
    def paused(self) -> bool:
        return bool(self.outcomes)

    @property
    def outcome(self) -> object:
        """What `meanwhile()` returned at the last pause (None before the first)."""
        return self.outcomes[-1] if self.outcomes else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def update_item(self, **kw: Any) -> Any:
        if self.meanwhile is not None and not self._inside and self.when(kw):
            meanwhile = self.meanwhile
            if not self.every:
                self.meanwhile = None
            self._inside = True
            try:
                self.outcomes.append(meanwhile())
            finally:
                self._inside = False
        return self.client.update_item(**kw)
