"""Rotation that bad traffic cannot break (docs/push-contract.md §4): a service re-reads its
secret on a schedule nobody's requests move, so a rotation is taken up (and a dropped secret
refused) within a minute however many bad signatures arrive; a failing secret store costs one
read per interval and never a 500; the pusher falls back to the previous secret while the
service has not taken up the new one."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from microprocess.pipeline.push import HttpPusher, PushOutcome, SecretCache
from microprocess.service import ReplayGuard, TaskRequest, Verifier, sign_request
from microprocess.service.fastapi_routes import task_router
from microprocess.service.rotation import DEFAULT_MAX_AGE_S, CachedSecret, SecretUnavailable
from microprocess.service.tasks import Rejected
from tests.test_push_contract import _Service as PushContractService
from tests.test_push_contract import service  # noqa: F401  (a fixture: the loopback service)

OLD, NEW = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"
PATH = "/tasks/x"
BODY = b'{"run_id":"r","task_id":"t","kind":"task","item":{"n":1}}'


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Store:
    """A secret store whose value can rotate and whose reads can fail; counts its reads."""

    def __init__(self, value: str) -> None:
        self.value, self.failing, self.reads = value, False, 0

    def __call__(self) -> str:
        self.reads += 1
        if self.failing:
            raise ConnectionError("injected: Secrets Manager unreachable")
        return self.value


def signed(secret: str) -> dict[str, str]:
    return sign_request(secret, "POST", PATH, BODY, "r:t")


def check(verifier: Verifier, secret: str) -> int:
    """The status the service answers a request signed with `secret` (200 when accepted)."""
    try:
        verifier.check(signed(secret), BODY, "POST", PATH)
    except Rejected as exc:
        return exc.answer.status
    return 200


def test_a_flood_of_bad_signatures_cannot_keep_a_rotated_secret_out_for_more_than_a_minute() -> None:
    # GIVEN a service that read its secret (OLD), and an attacker sending a bad signature every second
    clock, store = Clock(), Store(OLD)
    verifier = Verifier(CachedSecret(store, clock=clock), replay_guard=ReplayGuard())
    assert check(verifier, OLD) == 200
    accepted_at = None
    # WHEN the secret rotates to NEW alone (no previous) just after a bad signature spent the
    # on-demand re-read, and the forwarder keeps sending NEW-signed pushes every 5 s
    for second in range(1, 121):
        clock.t += 1
        assert check(verifier, "attacker-guess") == 401
        if second == 2:
            store.value = NEW
        if second % 5 == 0 and accepted_at is None and check(verifier, NEW) == 200:
            accepted_at = second
    # THEN the NEW pushes are accepted within the scheduled re-read (a minute), flood or not
    assert accepted_at is not None and accepted_at - 2 <= DEFAULT_MAX_AGE_S + 5
    # AND the flood cost at most one read per on-demand interval plus the scheduled ones
    assert store.reads <= 1 + 120 // 30 + 120 // DEFAULT_MAX_AGE_S + 1


def test_a_dropped_secret_is_refused_within_a_minute_without_any_bad_request() -> None:
    # GIVEN a service accepting {NEW, OLD} during a rotation, then OLD dropped (an emergency revocation)
    clock, store = Clock(), Store(json.dumps({"current": NEW, "previous": OLD}))
    verifier = Verifier(CachedSecret(store, clock=clock), replay_guard=None)
    assert check(verifier, OLD) == 200
    store.value = NEW
    # WHEN only good NEW-signed requests arrive (nothing triggers an on-demand re-read)
    clock.t += DEFAULT_MAX_AGE_S + 1
    assert check(verifier, NEW) == 200
    # THEN OLD is refused: within a minute of the revocation
    assert DEFAULT_MAX_AGE_S <= 60 and check(verifier, OLD) == 401


def test_while_the_store_fails_bad_signatures_get_401_and_cost_one_read_per_interval() -> None:
    # GIVEN a service that read its secret, then a store that fails
    clock, store = Clock(), Store(OLD)
    verifier = Verifier(CachedSecret(store, clock=clock), replay_guard=None)
    assert check(verifier, OLD) == 200
    store.failing = True
    # WHEN 400 bad signatures arrive within 40 s
    statuses = set()
    for _ in range(400):
        clock.t += 0.1
        statuses.add(check(verifier, "attacker-guess"))
    # THEN each is refused 401 (authentication decided with the cached secret, never a 5xx)
    assert statuses == {401}
    # AND the store was tried once more (the on-demand interval is 30 s), good requests still pass
    assert store.reads == 2 and check(verifier, OLD) == 200


def test_a_secret_never_read_answers_503_with_retry_after_and_is_rate_limited() -> None:
    clock, store = Clock(), Store(OLD)
    store.failing = True
    cached = CachedSecret(store, clock=clock)
    verifier = Verifier(cached, replay_guard=None)
    for _ in range(50):
        with pytest.raises(Rejected) as refused:
            verifier.check(signed(OLD), BODY, "POST", PATH)
        assert refused.value.answer.status == 503
        assert refused.value.answer.headers["Retry-After"] == "30"
    assert store.reads == 1
    with pytest.raises(SecretUnavailable):
        cached()
    # once the store is back (after the interval), requests are checked again
    store.failing = False
    clock.t += 31
    assert check(verifier, OLD) == 200


def test_a_fastapi_service_answers_503_not_500_while_its_secret_cannot_be_read() -> None:
    store = Store(OLD)
    store.failing = True
    app = FastAPI()
    app.include_router(task_router(PATH, lambda t: {"ok": True}, secrets=CachedSecret(store), model=TaskRequest[Any]))
    resp = TestClient(app).post(PATH, content=BODY, headers={**signed(OLD), "Content-Type": "application/json"})
    assert resp.status_code == 503 and resp.json()["error"] == "secret_unavailable" and resp.headers["Retry-After"]


# ---------------------------------------------------------------- the pusher


def test_the_pusher_signs_with_the_previous_secret_while_the_service_has_not_taken_up_the_new_one(
    service: PushContractService,
) -> None:
    # GIVEN a forwarder that already reads {"current": NEW, "previous": OLD}, and a service still on OLD
    service.secrets = OLD
    rotating = json.dumps({"current": NEW, "previous": OLD})
    pusher = HttpPusher(service.url, SecretCache(secret=rotating, min_refresh_interval_s=0))
    # WHEN it pushes
    result = pusher.push(PATH, {"n": 1}, idempotency_key="r:1", timeout=5)
    # THEN the NEW signature is refused once and the OLD one accepted: no failure
    assert result.outcome is PushOutcome.SUCCESS, result.describe()
    assert len(service.refused) == 1
    # AND once the service is on NEW alone, NEW is accepted at once
    service.secrets = NEW
    assert pusher.push(PATH, {"n": 2}, idempotency_key="r:2", timeout=5).outcome is PushOutcome.SUCCESS
    assert len(service.refused) == 1
