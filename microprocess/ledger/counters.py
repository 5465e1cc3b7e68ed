"""Spread counters and their markers: add a batch's new outcomes to one counter, once.

A process adds to one counter (`_home_counter`) for `HOME_BATCHES` batches, then moves on; every
add sets a `b_<time><token>` marker under `attribute_not_exists`, so an SDK retry of an applied
add finds its marker and is never applied twice (ARCHITECTURE §3.8). The next update of the same
counter removes the marker; markers older than `MARKER_STALE_S` go with any update that sees them.
The same marker scheme guards the failure groups' adds (`failure_groups`).
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError

from microprocess.ledger.records import (
    LedgerError,
    _Counter,
    _counter_pk,
    _from_ddb,
    _is_conditional_failure,
    _to_ddb,
)
from microprocess.ledger.store import LedgerStore

log = logging.getLogger(__name__)

#: Batches a process adds to one counter before it moves to another (see `Ledger._home_counter`):
#: each move costs one write (the marker left on the old counter is removed).
HOME_BATCHES = 16
#: Runs whose counter and markers a process remembers (a long-lived function sees many runs).
MAX_RUNS_REMEMBERED = 64
#: Age after which any writer removes a counter marker it sees: far beyond the longest life of
#: the call that set it (a Lambda invocation lasts 15 minutes at most), s.
MARKER_STALE_S = 3600
#: Size of a counter item (DynamoDB's count, bytes) above which a writer removes its marker at
#: once rather than with its next update: an update is billed a write unit per 1 KB started.
COUNTER_KEEP_BYTES = 900
#: Markers one update removes at most (the rest wait for the next one).
MAX_MARKERS_PER_UPDATE = 40
_MARKER = "b_"


def marker_name(now: float) -> str:
    """A counter marker's attribute name: `b_` and 18 base64url characters holding the time
    (4 bytes of Unix seconds) and 9 random bytes (72 bits: no two writers pick the same)."""
    raw = (int(now) & 0xFFFFFFFF).to_bytes(4, "big") + secrets.token_bytes(9)
    return _MARKER + base64.urlsafe_b64encode(raw).decode()[:18]


def marker_time(name: str) -> int | None:
    """The Unix seconds (mod 2^32) a marker was set at; None for a name that is not a timed
    marker (markers from before they carried their time are `b_` and 16 hex digits)."""
    if not name.startswith(_MARKER) or len(name) != len(_MARKER) + 18:
        return None
    try:
        raw = base64.urlsafe_b64decode(name[len(_MARKER) :] + "==")
    except ValueError:
        return None
    return int.from_bytes(raw[:4], "big")


def marker_clauses(marker: str, owed: list[str]) -> tuple[dict[str, str], str]:
    """The attribute names and the ` REMOVE ...` clause of an update that sets `marker` (as `#b`)
    and removes the markers this process still owes to the same item (`#r<i>`; the clause is empty
    when it owes none). The counters and the failure groups write their adds this way."""
    names = {"#b": marker, **{f"#r{i}": name for i, name in enumerate(owed)}}
    removal = (" REMOVE " + ", ".join(f"#r{i}" for i in range(len(owed)))) if owed else ""
    return names, removal


def stale_markers(counter: dict[str, Any], now: float) -> list[str]:
    """The timed markers on a counter item set more than `MARKER_STALE_S` ago (at most
    `MAX_MARKERS_PER_UPDATE`). A time ahead of `now` (clock skew) is not stale."""
    stale = []
    for name in counter:
        born = marker_time(name)
        if born is None:
            continue
        age = (int(now) - born) & 0xFFFFFFFF
        if MARKER_STALE_S < age < 2**31:
            stale.append(name)
    return sorted(stale)[:MAX_MARKERS_PER_UPDATE]


def _counter_size(counter: dict[str, Any]) -> int:
    """A counter item's size as DynamoDB bills it: names, strings, numbers (about one byte per
    two digits, plus one), bytes."""
    total = 0
    for name, value in counter.items():
        total += len(name.encode())
        if isinstance(value, str):
            total += len(value.encode())
        else:
            total += len(str(abs(int(value)))) // 2 + 2
    return total


class Counters(LedgerStore):
    """The run's counter items `RUN#<run>#C<j>` / `COUNT`: succeeded, failed, done, room, epoch."""

    def _known_epoch(self, run_id: str, counter_count: int) -> int:
        """The counters' epoch as last seen (read once per run per process)."""
        with self._lock:
            if run_id in self._epochs:
                return self._epochs[run_id]
        counters = self._read_counters(run_id, counter_count)
        epoch = max((c.epoch for c in counters), default=0)
        with self._lock:
            self._epochs[run_id] = epoch
        return epoch

    def _count(self, run_id: str, counter_count: int, epoch: int, s: int, f: int) -> tuple[bool, bool]:
        """Add s successes and f failures to counters. Returns (counted, emptied_a_counter)."""
        n = s + f
        j = self._home_counter(run_id, counter_count)
        outcome = self._add(run_id, j, epoch, s, f, capped=None)
        if outcome == "ok":
            return True, False
        if outcome == "emptied":
            return True, True
        if outcome == "fenced":
            return False, False
        # "no-room": rooms are getting small (the run's tail). Rather than trying counters
        # at random (each failed conditional write is billed), read them once and split.
        self._leave_home(run_id)
        # Split the batch over the counters that have room.
        emptied = False
        remaining_s, remaining_f = s, f
        for _ in range(10):
            counters = self._read_counters(run_id, counter_count)
            if any(c.epoch != epoch for c in counters):
                self._forget_epoch(run_id)
                return False, False
            self._note_short(run_id, [c.index for c in counters if (c.room or 0) < n])
            left: dict[int, int] = {}  # room each counter has after this batch, as read
            for c in sorted(counters, key=lambda c: -(c.room or 0)):
                room = c.room or 0
                if room <= 0 or remaining_s + remaining_f == 0:
                    left[c.index] = room
                    continue
                take_s = min(room, remaining_s)
                take_f = min(room - take_s, remaining_f)
                out = self._add(run_id, c.index, epoch, take_s, take_f, capped=True)
                if out in ("ok", "emptied"):
                    remaining_s -= take_s
                    remaining_f -= take_f
                    emptied = emptied or out == "emptied"
                left[c.index] = room - take_s - take_f if out in ("ok", "emptied") else 0
            if remaining_s + remaining_f == 0:
                # The next batches go to the counter with the most room left (as read).
                roomiest = max(left, key=lambda i: left[i], default=j)
                self._set_home(run_id, roomiest if left.get(roomiest, 0) > 0 else j)
                return True, emptied
        raise LedgerError(
            f"run {run_id}: no counter has room for {remaining_s + remaining_f} completions of {n}; "
            "more tasks completed than were accounted — the sweeper's repair will recount"
        )

    def _home_counter(self, run_id: str, counter_count: int) -> int:
        """The counter this process adds to: the same one for `HOME_BATCHES` batches, then
        another one at random (its marker removed first). Staying on one counter lets each
        update remove the marker the previous one left there; moving on keeps every counter
        at ~1/counter_count of the batches over a run."""
        with self._lock:
            short = self._short.get(run_id, set())
            home = self._homes.pop(run_id, None)
            if home is not None and home[0] < counter_count and home[1] > 0 and home[0] not in short:
                self._homes[run_id] = (home[0], home[1] - 1)
                return home[0]
            roomy = [i for i in range(counter_count) if i not in short] if short else []
            j = self._rng.choice(roomy) if roomy else self._rng.randrange(counter_count)
            self._homes[run_id] = (j, HOME_BATCHES - 1)
            while len(self._homes) > MAX_RUNS_REMEMBERED:  # a long-lived process: forget old runs
                old = next(iter(self._homes))
                self._homes.pop(old)
                self._short.pop(old, None)
                for key in [key for key in self._markers if key[0] == old]:
                    self._markers.pop(key)  # left on the counter: harmless, stale within the hour
        self._clear_markers(run_id, keep=j)
        return j

    def _leave_home(self, run_id: str) -> None:
        """Pick another counter for the next batch (this one had no room left)."""
        with self._lock:
            self._homes.pop(run_id, None)

    def _note_short(self, run_id: str, counters: Iterable[int]) -> None:
        """Counters seen without room for another batch like this one: this process does not pick
        them again for the run (a refused update is billed a write unit). Rooms only shrink within
        an epoch; a new epoch (`_forget_epoch`) forgets them."""
        with self._lock:
            self._short.setdefault(run_id, set()).update(counters)

    def _set_home(self, run_id: str, j: int) -> None:
        """Go on with counter j (markers owed elsewhere are removed now)."""
        with self._lock:
            self._homes[run_id] = (j, HOME_BATCHES)
        self._clear_markers(run_id, keep=j)

    def _take_markers(self, run_id: str, j: int) -> list[str]:
        with self._lock:
            owed = self._markers.pop((run_id, j), [])
            if len(owed) > MAX_MARKERS_PER_UPDATE:
                self._markers[(run_id, j)] = owed[MAX_MARKERS_PER_UPDATE:]
            return owed[:MAX_MARKERS_PER_UPDATE]

    def _give_back_markers(self, run_id: str, j: int, names: Iterable[str]) -> None:
        with self._lock:
            pending = self._markers.setdefault((run_id, j), [])
            pending.extend(name for name in names if name not in pending)

    def _clear_markers(self, run_id: str, *, keep: int) -> None:
        """Remove the markers this process still owes to the run's counters other than `keep`
        (one update each; a failure leaves them to a later try or to the stale clean-up)."""
        with self._lock:
            owed = [j for (r, j) in self._markers if r == run_id and j != keep]
        for j in owed:
            self._remove_markers(run_id, j, self._take_markers(run_id, j))

    def _remove_markers(self, run_id: str, j: int, names: list[str]) -> None:
        """Remove markers (idempotent). The batch is counted already, so a failure here only
        keeps them owed (for this process's next try) and says so."""
        if not names:
            return
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}),
                UpdateExpression="REMOVE " + ", ".join(f"#r{i}" for i in range(len(names))),
                ExpressionAttributeNames={f"#r{i}": name for i, name in enumerate(names)},
            )
        except ClientError as exc:
            log.warning(
                "run %s counter %d: markers %s not removed yet (%s); kept for the next try", run_id, j, names, exc
            )
            self._give_back_markers(run_id, j, names)

    def _add(self, run_id: str, j: int, epoch: int, s: int, f: int, *, capped: bool | None) -> str:
        """Add to counter j, once.

        The update also sets a marker attribute named after a fresh token and the time
        (`b_<time><token>`, see `marker_name`) under the condition that it does not exist yet:
        an SDK retry of an applied update fails that condition and finds its marker, so the
        ADD is never applied twice (ARCHITECTURE §3.8).

        A marker may go once the call that set it has returned (no retry of it can follow).
        It is removed by this process's next update of the same counter, in the same write
        (`_home_counter` keeps a process on one counter for a few batches): one write per
        batch instead of an add and a removal. The same update removes markers older than
        `MARKER_STALE_S` that it saw on the counter (left by a process that died or moved on:
        no call lives that long, a function's limit is 15 minutes). If the counter comes back
        bigger than `COUNTER_KEEP_BYTES` (many processes on one counter), the marker is
        removed at once instead, so an update never costs a second write unit.
        """
        n = s + f
        epoch_clause = "attribute_not_exists(epoch)" if epoch == 0 else "epoch = :e"
        values: dict[str, Any] = {":s": s, ":f": f, ":n": n, ":one": 1}
        if epoch:
            values[":e"] = epoch
        if capped is None:  # the form that worked last for this run first: a failed try is a billed write
            first = self._capped.get(run_id, False)
            attempts = [first, not first]
        else:
            attempts = [capped]
        key = _to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"})
        owed = self._take_markers(run_id, j)
        for cap in attempts:
            marker = marker_name(time.time())
            names, removal = marker_clauses(marker, owed)
            if cap:
                expr = "SET #b = :one ADD succeeded :s, failed :f, done :n, room :neg" + removal
                cond = f"attribute_not_exists(#b) AND room >= :n AND {epoch_clause}"
                vals = {**values, ":neg": -n}
            else:
                expr = "SET #b = :one ADD succeeded :s, failed :f, done :n" + removal
                cond = f"attribute_not_exists(#b) AND attribute_not_exists(room) AND {epoch_clause}"
                vals = values
            try:
                resp = self.client.update_item(
                    TableName=self.table_name,
                    Key=key,
                    UpdateExpression=expr,
                    ConditionExpression=cond,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=_to_ddb(vals),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                new = _from_ddb(resp["Attributes"])
            except ClientError as exc:
                if not _is_conditional_failure(exc):
                    # Applied or not: owe both (removing a missing attribute is harmless).
                    self._give_back_markers(run_id, j, [*owed, marker])
                    raise
                old = _from_ddb(exc.response.get("Item", {}) or {})
                if marker in old:  # our own update, retried by the SDK after it was applied
                    new = old
                else:
                    if int(old.get("epoch", 0)) != epoch:
                        self._give_back_markers(run_id, j, owed)
                        self._forget_epoch(run_id)
                        return "fenced"
                    if cap and "room" not in old:
                        continue  # targets not set yet: the uncapped form applies
                    if not cap and "room" in old:
                        self._capped[run_id] = True
                        continue  # targets were just set: the capped form applies
                    self._give_back_markers(run_id, j, owed)
                    return "no-room"
            self._capped[run_id] = cap
            if cap and int(new.get("room", n)) < n:  # the next batch like this one would be refused here
                self._note_short(run_id, [j])
            stale = stale_markers(new, time.time())
            if _counter_size(new) > COUNTER_KEEP_BYTES:
                self._remove_markers(run_id, j, [marker, *stale])
            else:
                self._give_back_markers(run_id, j, [marker, *stale])
            return "emptied" if "room" in new and int(new["room"]) == 0 else "ok"
        self._give_back_markers(run_id, j, owed)
        self._note_short(run_id, [j])
        return "no-room"

    def _forget_epoch(self, run_id: str) -> None:
        with self._lock:
            self._epochs.pop(run_id, None)
            self._short.pop(run_id, None)

    def _read_counters(self, run_id: str, counter_count: int) -> list[_Counter]:
        keys = [_to_ddb({"pk": _counter_pk(run_id, j), "sk": "COUNT"}) for j in range(counter_count)]
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(keys), 100):
            request = {self.table_name: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            for _ in range(20):
                resp = self.client.batch_get_item(RequestItems=request)
                for raw in resp.get("Responses", {}).get(self.table_name, []):
                    item = _from_ddb(raw)
                    found[int(item["pk"].rsplit("#C", 1)[1])] = item
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05)
        return [
            _Counter(
                index=j,
                succeeded=int(found.get(j, {}).get("succeeded", 0)),
                failed=int(found.get(j, {}).get("failed", 0)),
                done=int(found.get(j, {}).get("done", 0)),
                room=int(found[j]["room"]) if j in found and "room" in found[j] else None,
                epoch=int(found.get(j, {}).get("epoch", 0)),
            )
            for j in range(counter_count)
        ]
