"""The service SDK (`microprocess.service`): verify, secrets, replay guard, models, errors and adapters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from microprocess.service import (
    MAX_BODY_BYTES,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CompletionRequest,
    PermanentFailure,
    ReplayGuard,
    RetryLater,
    SignatureError,
    TaskRequest,
    Verifier,
    parse_secrets,
    sign_request,
    verify,
)
from microprocess.service.asgi import TaskApp, TaskRoute
from microprocess.service.fastapi_routes import task_router
from microprocess.service.rotation import CachedSecret
from microprocess.service.tasks import Rejected, parse_json

SECRET = "s3cret-0123456789"
NOW = 1_796_083_200
BODY = b'{"run_id":"r","task_id":"t","kind":"task","item":{"n":1}}'


def headers(
    *, secret: str = SECRET, method: str = "POST", path: str = "/tasks/x", key: str = "r:t", timestamp: int = NOW
) -> dict[str, str]:
    return sign_request(secret, method, path, BODY, key, timestamp=timestamp)


# ------------------------------------------------------------------ verify


def test_a_valid_signature_returns_the_idempotency_key() -> None:
    assert verify(headers(), BODY, "POST", "/tasks/x", SECRET, now=NOW) == "r:t"


@pytest.mark.parametrize(
    ("case", "hdrs", "body", "path", "reason"),
    [
        ("other body", headers(), BODY + b" ", "/tasks/x", "does not match"),
        ("other path", headers(path="/tasks/y"), BODY, "/tasks/x", "does not match"),
        ("other method", headers(method="PUT"), BODY, "/tasks/x", "does not match"),
        ("other secret", headers(secret="nope"), BODY, "/tasks/x", "does not match"),
        ("key swapped", {**headers(), "Idempotency-Key": "r:other"}, BODY, "/tasks/x", "does not match"),
        ("stale", headers(timestamp=NOW - 301), BODY, "/tasks/x", "301 s old; at most 300"),
        ("future", headers(timestamp=NOW + 31), BODY, "/tasks/x", "31 s in the future; at most 30"),
        ("absurd timestamp", {**headers(), TIMESTAMP_HEADER: "9" * 400}, BODY, "/tasks/x", "1 to 12 digits"),
        ("negative timestamp", {**headers(), TIMESTAMP_HEADER: "-5"}, BODY, "/tasks/x", "1 to 12 digits"),
        ("bad nonce", {**headers(), NONCE_HEADER: "short"}, BODY, "/tasks/x", "16 to 64"),
        ("v1", {**headers(), SIGNATURE_HEADER: "v1=" + "0" * 64}, BODY, "/tasks/x", "v2="),
        ("missing", {}, BODY, "/tasks/x", "missing header"),
    ],
)
def test_a_wrong_request_raises_naming_the_reason(
    case: str, hdrs: dict[str, str], body: bytes, path: str, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(hdrs, body, "POST", path, SECRET, now=NOW)


def test_header_names_are_case_insensitive() -> None:
    lower = {k.lower(): v for k, v in headers().items()}
    assert verify(lower, BODY, "POST", "/tasks/x", SECRET, now=NOW) == "r:t"


def test_edges_of_the_window_are_accepted() -> None:
    assert verify(headers(timestamp=NOW - 300), BODY, "POST", "/tasks/x", SECRET, now=NOW)
    assert verify(headers(timestamp=NOW + 30), BODY, "POST", "/tasks/x", SECRET, now=NOW)


def test_a_replay_is_refused_by_the_guard_and_a_fresh_signature_is_not() -> None:
    guard = ReplayGuard()
    signed = headers()
    verify(signed, BODY, "POST", "/tasks/x", SECRET, now=NOW, replay_guard=guard)
    with pytest.raises(SignatureError, match="replayed"):
        verify(signed, BODY, "POST", "/tasks/x", SECRET, now=NOW, replay_guard=guard)
    # the same task signed anew (a new nonce) is a new request
    verify(headers(), BODY, "POST", "/tasks/x", SECRET, now=NOW, replay_guard=guard)


def test_a_badly_signed_request_does_not_use_up_a_signature() -> None:
    guard = ReplayGuard()
    signed = headers()
    with pytest.raises(SignatureError):
        verify(signed, BODY + b"x", "POST", "/tasks/x", SECRET, now=NOW, replay_guard=guard)
    verify(signed, BODY, "POST", "/tasks/x", SECRET, now=NOW, replay_guard=guard)


def test_the_replay_guard_forgets_after_its_window_and_beyond_its_size() -> None:
    guard = ReplayGuard(ttl_s=10, max_entries=2)
    assert guard.first_sight("a", now=0) and not guard.first_sight("a", now=9)
    assert guard.first_sight("a", now=11)  # expired
    assert guard.first_sight("b", now=11) and guard.first_sight("c", now=11)  # "a" forgotten early (size)
    assert guard.first_sight("a", now=12)


# ----------------------------------------------------------------- secrets


def test_secret_values_hold_one_or_two_secrets() -> None:
    assert parse_secrets("plain") == ("plain",)
    assert parse_secrets("12345") == ("12345",)  # JSON, but not an object or a list: the secret itself
    assert parse_secrets('{"current": "new", "previous": "old"}') == ("new", "old")
    assert parse_secrets('{"current": "new"}') == ("new",)
    assert parse_secrets('["new", "old"]') == ("new", "old")
    assert parse_secrets(["a", "b"]) == ("a", "b")
    for bad in ('{"previous": "old"}', "[]", '["ok", 3]', ""):
        with pytest.raises(ValueError):
            parse_secrets(bad)


def test_the_previous_secret_verifies_during_a_rotation() -> None:
    rotating = json.dumps({"current": "new-secret-0123456789", "previous": SECRET})
    assert verify(headers(), BODY, "POST", "/tasks/x", rotating, now=NOW) == "r:t"
    assert verify(headers(secret="new-secret-0123456789"), BODY, "POST", "/tasks/x", rotating, now=NOW) == "r:t"


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_cached_secret_is_read_once_refreshed_at_most_every_interval_and_expires() -> None:
    reads: list[str] = []
    values = iter(["one", "two", "three", "four"])
    clock = _Clock()

    def load() -> str:
        reads.append("read")
        return next(values)

    cached = CachedSecret(load, min_refresh_interval_s=30, max_age_s=3600, clock=clock)
    assert (cached(), cached()) == ("one", "one") and len(reads) == 1
    assert cached.refresh() is False  # read just now
    clock.t = 31
    assert cached.refresh() is True and cached() == "two"
    clock.t = 31 + 3601
    assert cached() == "three"  # too old: re-read on use
    assert len(reads) == 3


def test_a_verifier_rereads_a_rotated_secret_once_on_a_mismatch() -> None:
    values = iter(["old-secret-0123456789", json.dumps({"current": SECRET, "previous": "old-secret-0123456789"})])
    verifier = Verifier(CachedSecret(lambda: next(values), min_refresh_interval_s=0), replay_guard=None)
    verifier.max_age_s = 10**10  # the fixed NOW of these tests is far from the wall clock
    assert verifier.check(headers(), BODY, "POST", "/tasks/x") == "r:t"


# ------------------------------------------------------------------- models


def test_json_numbers_beyond_i_json_are_malformed() -> None:
    for body, text in (
        (b'{"n": ' + b"9" * 400 + b"}", "out of range"),
        (b'{"n": 9007199254740993}', "out of range"),
        (b'{"n": 1e400}', "not a finite"),
        (b'{"n": NaN}', "NaN"),
    ):
        with pytest.raises(Rejected, match=text) as info:
            parse_json(body)
        assert info.value.answer.status == 400
    assert parse_json(b'{"n": 9007199254740991, "f": 1.5}') == {"n": 9007199254740991, "f": 1.5}


def test_errors_map_to_their_statuses() -> None:
    with pytest.raises(ValueError, match="4xx other than 408/429"):
        PermanentFailure("x", status=500)
    with pytest.raises(ValueError, match="429 or 503"):
        RetryLater(5, status=500)
    with pytest.raises(ValueError, match=r"0\.\.43200"):
        RetryLater(-1)


# ---------------------------------------------------------------- adapters


class Item(BaseModel):
    n: int


def _handler(task: TaskRequest[Item]) -> dict[str, Any]:
    if task.item.n == 0:
        raise PermanentFailure("n must not be 0", code="zero")
    if task.item.n < 0:
        raise RetryLater(7, "busy", status=429)
    return {"double": task.item.n * 2, "params": task.params}


async def _async_handler(task: TaskRequest[Item]) -> Item:
    return Item(n=task.item.n + 1)


def _post(client: TestClient, path: str, payload: Any, *, secret: str = SECRET, raw: bytes | None = None) -> Any:
    body = raw if raw is not None else json.dumps(payload).encode()
    key = f"{payload.get('run_id')}:{payload.get('task_id')}" if isinstance(payload, dict) else "r:t"
    return client.post(path, content=body, headers=sign_request(secret, "POST", path, body, key))


def _task(n: int, **extra: Any) -> dict[str, Any]:
    return {"run_id": "r", "task_id": f"t{n}", "kind": "task", "item": {"n": n}, **extra}


def _fastapi_client() -> TestClient:
    app = FastAPI()
    app.include_router(task_router("/tasks/double", _handler, secrets=SECRET, model=TaskRequest[Item]))
    return TestClient(app)


def _asgi_client() -> TestClient:
    verifier = Verifier(lambda: SECRET)
    app = TaskApp(
        [
            TaskRoute("/tasks/double", _handler, model=TaskRequest[Item]),
            TaskRoute("/tasks/inc", _async_handler, model=TaskRequest[Item]),
        ],
        verifier,
    )
    return TestClient(app)


@pytest.fixture(params=["fastapi", "asgi"])
def client(request: pytest.FixtureRequest) -> TestClient:
    return _fastapi_client() if request.param == "fastapi" else _asgi_client()


def test_adapters_answer_a_signed_task_with_the_handlers_result(client: TestClient) -> None:
    resp = _post(client, "/tasks/double", _task(21, params={"dry_run": True}))
    assert resp.status_code == 200
    assert resp.json() == {"double": 42, "params": {"dry_run": True}}


def test_adapters_map_the_contract_errors(client: TestClient) -> None:
    permanent = _post(client, "/tasks/double", _task(0))
    assert (permanent.status_code, permanent.json()["error"]) == (422, "zero")
    later = _post(client, "/tasks/double", _task(-1))
    assert (later.status_code, later.headers["retry-after"]) == (429, "7")
    unsigned = client.post("/tasks/double", content=json.dumps(_task(1)).encode())
    assert unsigned.status_code == 401
    wrong_kind = _post(client, "/tasks/double", _task(1, kind="finalize"))
    assert (wrong_kind.status_code, wrong_kind.json()["error"]) == (400, "wrong_kind")
    not_json = _post(client, "/tasks/double", {"run_id": "r", "task_id": "t"}, raw=b"{oops")
    assert (not_json.status_code, not_json.json()["error"]) == (400, "malformed_body")
    bad_item = _post(client, "/tasks/double", {**_task(1), "item": {"n": "many"}})
    assert (bad_item.status_code, bad_item.json()["error"]) == (422, "invalid_request")
    key_mismatch = client.post(
        "/tasks/double",
        content=(body := json.dumps(_task(1)).encode()),
        headers=sign_request(SECRET, "POST", "/tasks/double", body, "r:other"),
    )
    assert (key_mismatch.status_code, key_mismatch.json()["error"]) == (400, "idempotency_key_mismatch")


def test_adapters_refuse_a_body_over_the_limit_with_413(client: TestClient) -> None:
    body = b'{"pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    resp = client.post(
        "/tasks/double", content=body, headers=sign_request(SECRET, "POST", "/tasks/double", body, "r:t")
    )
    assert resp.status_code == 413
    assert resp.json()["error"] == "body_too_large"


def test_the_asgi_app_runs_async_handlers_and_knows_its_routes() -> None:
    client = _asgi_client()
    assert _post(client, "/tasks/inc", _task(1)).json() == {"n": 2}
    assert client.post("/elsewhere", content=b"{}").status_code == 404
    assert client.get("/tasks/inc").status_code == 405


def test_task_router_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secrets="):
        task_router("/tasks/x", _handler)


# ------------------------------------------------------- no AWS dependencies


def test_the_sdk_imports_without_boto3_cdk_or_powertools() -> None:
    # GIVEN a Python where boto3, botocore, aws_cdk and aws_lambda_powertools cannot be imported
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        BLOCKED = ("boto3", "botocore", "aws_cdk", "aws_lambda_powertools")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, Block())
        import microprocess.service, microprocess.service.asgi, microprocess.service.fastapi_routes
        import microprocess.service.rotation
        import reminders_service.main
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("loaded:", loaded)
        """
    )
    # WHEN the SDK and the reminders example are imported
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"SIGNING_SECRET": "x"})
    # THEN it works, and none of them was loaded
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded: []"


def test_a_completion_callback_route_takes_the_runs_outcome() -> None:
    # GIVEN a service with a completion route (kind `completion`)
    seen: list[CompletionRequest] = []
    app = FastAPI()
    app.include_router(
        task_router("/hooks/done", seen.append, secrets=SECRET, kind="completion", model=CompletionRequest)
    )
    client = TestClient(app)
    outcome = {
        "run_id": "r-1",
        "task_id": "completion",
        "kind": "completion",
        "job": "invoice-reminders",
        "status": "SUCCEEDED",
        "expected": 3,
        "succeeded": 3,
        "failed": 0,
        "report_uri": "s3://reports/reports/invoice-reminders/r-1/",
    }
    # WHEN the platform posts the run's outcome; and a task body arrives there by mistake
    done = _post(client, "/hooks/done", outcome)
    task = _post(client, "/hooks/done", _task(1))
    # THEN the first reaches the handler as a typed outcome; the second is a permanent 400
    assert done.status_code == 200
    assert [(c.status, c.succeeded, c.idempotency_key) for c in seen] == [("SUCCEEDED", 3, "r-1:completion")]
    assert (task.status_code, task.json()["error"]) == (400, "wrong_kind")


# ----------------------------------------------------------- safe defaults


def test_verify_without_a_replay_guard_still_refuses_a_replay() -> None:
    # GIVEN a careless integration that calls verify() with no replay guard
    signed = headers(timestamp=int(time.time()))
    verify(signed, BODY, "POST", "/tasks/x", SECRET)
    # WHEN the same request arrives again THEN it is refused (the process's guard is the default)
    with pytest.raises(SignatureError, match="replayed"):
        verify(signed, BODY, "POST", "/tasks/x", SECRET)
    # AND only an explicit None turns the check off (tests and tools)
    verify(signed, BODY, "POST", "/tasks/x", SECRET, replay_guard=None)


def test_the_default_replay_record_lasts_as_long_as_a_wider_window() -> None:
    guard = ReplayGuard(ttl_s=10)
    assert guard.first_sight("sig", now=0, ttl_s=600)
    assert not guard.first_sight("sig", now=500)  # kept for the window it was accepted under


def test_a_short_signing_secret_is_refused_naming_the_minimum() -> None:
    from microprocess.service.signing import MIN_SECRET_CHARS, WeakSecret

    short = "x" * (MIN_SECRET_CHARS - 1)
    # a service holding a one-character (or any short) secret cannot verify anything with it
    for secret in ("a", short, json.dumps({"current": SECRET, "previous": "a"})):
        signer = secret if not secret.startswith("{") else SECRET
        with pytest.raises(WeakSecret, match=f"at least {MIN_SECRET_CHARS}"):
            verify(headers(secret=signer), BODY, "POST", "/tasks/x", secret, now=NOW, replay_guard=None)
    # a task router given one refuses it at start-up; a verifier reading one answers 503, not 500
    with pytest.raises(WeakSecret, match=f"at least {MIN_SECRET_CHARS}"):
        task_router("/tasks/x", lambda t: {}, secrets="a")
    verifier = Verifier(lambda: "a", replay_guard=None)
    verifier.max_age_s = 10**10
    with pytest.raises(Rejected) as refused:
        verifier.check(headers(secret="a"), BODY, "POST", "/tasks/x")
    assert refused.value.answer.status == 503 and refused.value.answer.body["error"] == "weak_secret"
    # the minimum itself is fine
    assert verify(headers(secret="y" * MIN_SECRET_CHARS), BODY, "POST", "/tasks/x", "y" * MIN_SECRET_CHARS, now=NOW)


def test_signed_task_without_the_contract_handlers_answers_401_not_500() -> None:
    # GIVEN an app using the signed_task dependency, with install_contract_errors forgotten
    from fastapi import Depends

    from microprocess.service.fastapi_routes import signed_task

    app = FastAPI()
    dependency = signed_task(TaskRequest[Any], verifier=Verifier(lambda: SECRET))

    @app.post("/tasks/x")
    def task(t: TaskRequest[Any] = Depends(dependency)) -> dict[str, Any]:  # noqa: B008
        return {"ok": True}

    client = TestClient(app, raise_server_exceptions=False)
    # WHEN an unsigned request, and one with the wrong kind, arrive
    unsigned = client.post("/tasks/x", content=BODY)
    # THEN each gets its contract status (401), never a 500, naming the problem
    assert unsigned.status_code == 401, unsigned.text
    assert unsigned.json()["detail"]["error"] == "bad_signature"
