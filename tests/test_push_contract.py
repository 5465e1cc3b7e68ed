"""docs/push-contract.md is true: its worked example and its curl recipe, and the pusher's side
(signature v2, re-reading a rotated secret after a 401, the size limit)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from microprocess.pipeline.push import MAX_RETRY_AFTER_S, HttpPusher, PushOutcome, SecretCache, parse_retry_after
from microprocess.service import MAX_BODY_BYTES, ReplayGuard, SignatureError, signature_base, verify
from microprocess.service.signing import signature
from reminders_service.main import create_app as create_reminders_app
from tests.test_check_service import serving

DOC = (Path(__file__).resolve().parents[1] / "docs" / "push-contract.md").read_text()

# The worked example's inputs and outputs, as the page states them.
EXAMPLE_SECRET = "example-signing-secret"
EXAMPLE_BODY = (
    b'{"run_id":"r-20261201","task_id":"I-1001","attempt":1,"item":{"invoice_id":"I-1001","customer":"Acme Ltd",'
    b'"amount":120.5,"due_date":"2026-11-01"},"job":"invoice-reminders","shard":3,"kind":"task","params":{}}'
)
EXAMPLE_DIGEST = "dc7f45faacdc11995d522e4ebd9106cb5e38bc5f151ae2a32bbf43e342c0fb62"
EXAMPLE_SIGNATURE = "v2=aeec91976b3fa8f8a365f8cc1ad7e56730f34260c6291dd81b16f8f03beeda81"
EXAMPLE_HEADERS = {
    "X-Microprocess-Timestamp": "1796083200",
    "X-Microprocess-Nonce": "n8R2xQ4vLk7TzW1pYc3sDf",
    "Idempotency-Key": "r-20261201:I-1001",
    "X-Microprocess-Signature": EXAMPLE_SIGNATURE,
}


def test_the_worked_example_is_what_the_sdk_computes_and_what_the_page_says() -> None:
    # GIVEN the example's inputs
    base = signature_base(
        "POST", "/tasks/remind", "1796083200", "n8R2xQ4vLk7TzW1pYc3sDf", "r-20261201:I-1001", EXAMPLE_BODY
    )
    # THEN the page prints this body (208 bytes), digest, base string and signature
    assert len(EXAMPLE_BODY) == 208 and EXAMPLE_BODY.decode() in DOC
    assert hashlib.sha256(EXAMPLE_BODY).hexdigest() == EXAMPLE_DIGEST and EXAMPLE_DIGEST in DOC
    assert f"```\n{base}\n```" in DOC
    assert signature(EXAMPLE_SECRET, base) == EXAMPLE_SIGNATURE and EXAMPLE_SIGNATURE in DOC
    # AND a reader's own implementation of the recipe (HMAC of the seven lines) agrees
    lines = ["microprocess-v2", "POST", "/tasks/remind", "1796083200", "n8R2xQ4vLk7TzW1pYc3sDf", "r-20261201:I-1001"]
    mine = hmac.new(EXAMPLE_SECRET.encode(), "\n".join([*lines, EXAMPLE_DIGEST]).encode(), hashlib.sha256).hexdigest()
    assert "v2=" + mine == EXAMPLE_SIGNATURE
    # AND a service at that moment accepts it
    assert verify(EXAMPLE_HEADERS, EXAMPLE_BODY, "POST", "/tasks/remind", EXAMPLE_SECRET, now=1796083200 + 5)


def test_the_page_states_the_sdks_limits() -> None:
    assert f"{MAX_BODY_BYTES:,} bytes" in DOC
    assert "more than **300 s** in the past, or more than **30 s** in the future" in DOC


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")), reason="needs openssl and curl")
def test_the_curl_recipe_works_against_the_example_service(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the reminders service running with the example secret
    monkeypatch.setenv("SIGNING_SECRET", EXAMPLE_SECRET)
    script = re.search(r"```sh\n(.*?)```", DOC, re.S)
    assert script is not None
    with serving(create_reminders_app()) as url:
        recipe = script.group(1).replace("URL=http://127.0.0.1:8083", f"URL={url}")
        # WHEN the page's shell recipe is run, twice
        first = subprocess.run(["bash", "-c", recipe], capture_output=True, text=True, timeout=60)
        second = subprocess.run(["bash", "-c", recipe], capture_output=True, text=True, timeout=60)
    # THEN both are accepted with the same result
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["reminded"] is True and answer["invoice_id"] == "I-1001"
    assert json.loads(second.stdout) == answer


# ------------------------------------------------------------------ the pusher


class _Service:
    """A loopback HTTP service verifying signature v2 with whatever secrets it holds now."""

    def __init__(self, secrets: str) -> None:
        self.secrets = secrets
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[str] = []
        guard = ReplayGuard()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    verify(dict(self.headers.items()), raw, "POST", self.path, service.secrets, replay_guard=guard)
                except SignatureError as exc:
                    service.refused.append(str(exc))
                    return self._send(401, b'{"error":"bad_signature"}')
                service.accepted.append(json.loads(raw))
                return self._send(200, b'{"ok":true}')

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/prefix"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def service() -> Iterator[_Service]:
    svc = _Service("first-secret-0123456789")
    yield svc
    svc.server.shutdown()
    svc.server.server_close()


def _secretsmanager(aws: None) -> Any:
    return boto3.client("secretsmanager", region_name="us-east-1")


def test_pushes_are_signed_v2_over_the_path_as_sent(service: _Service) -> None:
    pusher = HttpPusher(service.url, SecretCache(secret="first-secret-0123456789"))
    result = pusher.push("/tasks/x", {"run_id": "r", "task_id": "t"}, idempotency_key="r:t", timeout=5)
    assert result.outcome is PushOutcome.SUCCESS, result.describe()
    # and again (a resend of the same task is signed anew, never taken for a replay)
    again = pusher.push("/tasks/x", {"run_id": "r", "task_id": "t"}, idempotency_key="r:t", timeout=5)
    assert again.outcome is PushOutcome.SUCCESS
    assert len(service.accepted) == 2 and service.refused == []


def test_a_401_rereads_the_rotated_secret_once_and_sends_again(service: _Service, aws: None) -> None:
    # GIVEN a pusher that read its secret ("first-secret-0123456789") from Secrets Manager
    sm = _secretsmanager(aws)
    arn = sm.create_secret(Name="svc", SecretString="first-secret-0123456789")["ARN"]
    cache = SecretCache(secret_arn=arn, client=lambda: sm, min_refresh_interval_s=0)
    pusher = HttpPusher(service.url, cache)
    assert pusher.push("/tasks/x", {"n": 1}, idempotency_key="r:1", timeout=5).outcome is PushOutcome.SUCCESS
    # WHEN the secret rotates and the service already knows only the new one
    sm.put_secret_value(
        SecretId=arn,
        SecretString=json.dumps({"current": "second-secret-0123456789", "previous": "first-secret-0123456789"}),
    )
    service.secrets = "second-secret-0123456789"
    result = pusher.push("/tasks/x", {"n": 2}, idempotency_key="r:2", timeout=5)
    # THEN the first send got 401, the pusher re-read the secret, and the second send succeeded
    assert result.outcome is PushOutcome.SUCCESS, result.describe()
    assert len(service.refused) == 1 and [p["n"] for p in service.accepted] == [1, 2]
    assert cache() == json.dumps({"current": "second-secret-0123456789", "previous": "first-secret-0123456789"})


def test_a_second_401_is_permanent(service: _Service) -> None:
    reads: list[int] = []

    def load() -> str:
        reads.append(1)
        return "wrong-secret-0123456789"

    cache = SecretCache(secret_arn="arn:x", client=None, min_refresh_interval_s=0)
    cache._load = load  # a secret that stays wrong after the re-read
    result = HttpPusher(service.url, cache).push("/tasks/x", {"n": 1}, idempotency_key="r:1", timeout=5)
    assert result.status == 401 and result.outcome is PushOutcome.PERMANENT
    # read, re-read; the re-read secret is the refused one, so it is not sent again
    assert len(reads) == 2 and len(service.refused) == 1


def test_a_401_after_another_push_already_refreshed_is_sent_again_with_the_new_secret(service: _Service) -> None:
    # GIVEN a pusher whose cached secret is the old one, and a re-read that is rate-limited (another
    # push of the same process re-read it a moment ago) but has the new value by now
    values = iter(["wrong-secret-0123456789", service.secrets])

    class Cache:
        value = next(values)

        def __call__(self) -> str:
            return self.value

        def refresh(self) -> bool:
            self.value = next(values)  # what the concurrent re-read left in the cache
            return False  # "not re-read by this call"

    # WHEN a push is refused with 401
    result = HttpPusher(service.url, Cache()).push("/tasks/x", {"n": 1}, idempotency_key="r:2", timeout=5)
    # THEN it is sent again with the secret the cache now holds, and succeeds
    assert result.status == 200 and len(service.refused) == 1


def test_a_401_just_after_the_secret_was_read_is_retried_later_not_failed(service: _Service, aws: None) -> None:
    # GIVEN a pusher that read its secret ("first-secret-0123456789") a moment ago, and may re-read it every 60 s
    sm = _secretsmanager(aws)
    arn = sm.create_secret(Name="svc", SecretString="first-secret-0123456789")["ARN"]
    now = [1000.0]
    cache = SecretCache(secret_arn=arn, client=lambda: sm, min_refresh_interval_s=60)
    cache._clock = lambda: now[0]
    pusher = HttpPusher(service.url, cache)
    assert pusher.push("/tasks/x", {"n": 1}, idempotency_key="r:1", timeout=5).outcome is PushOutcome.SUCCESS
    # WHEN the secret rotates, the service takes the new one at once, and a push comes 2 s later
    sm.put_secret_value(
        SecretId=arn,
        SecretString=json.dumps({"current": "second-secret-0123456789", "previous": "first-secret-0123456789"}),
    )
    service.secrets = "second-secret-0123456789"
    now[0] += 2
    result = pusher.push("/tasks/x", {"n": 2}, idempotency_key="r:2", timeout=5)
    # THEN the 401 is not a failure: the task is retried once a re-read is allowed
    assert result.status == 401 and result.outcome is PushOutcome.RETRY
    assert result.retry_after_s == 60
    # AND once the interval has passed, the retry re-reads the secret and succeeds
    now[0] += 60
    again = pusher.push("/tasks/x", {"n": 2}, idempotency_key="r:2", timeout=5)
    assert again.outcome is PushOutcome.SUCCESS, again.describe()
    # AND a secret still refused after its re-read is a PERMANENT 401 (a wrong secret, not a rotation)
    service.secrets = "third-secret-0123456789"
    now[0] += 61
    wrong = pusher.push("/tasks/x", {"n": 3}, idempotency_key="r:3", timeout=5)
    assert wrong.status == 401 and wrong.outcome is PushOutcome.PERMANENT


def test_a_body_over_the_limit_is_never_sent(service: _Service) -> None:
    pusher = HttpPusher(service.url, SecretCache(secret="first-secret-0123456789"), max_body_bytes=1000)
    result = pusher.push("/tasks/x", {"pad": "x" * 2000}, idempotency_key="r:t", timeout=5)
    assert result.outcome is PushOutcome.PERMANENT
    assert "over the push contract's limit of 1000 bytes" in result.describe()
    assert service.accepted == [] and service.refused == []


def test_secret_cache_needs_a_secret_or_an_arn() -> None:
    with pytest.raises(ValueError, match="secret or its ARN"):
        SecretCache()


def test_retry_after_is_seconds_or_a_date_and_nothing_else() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("9" * 12) == MAX_RETRY_AFTER_S  # capped at the longest SQS backoff
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert 3500 < (parse_retry_after(_http_date(3600)) or 0) <= 3600
    for bad in ("1e400", "nan", "inf", "-5", "1.5", "9" * 400, "soon", "\u00b2", ""):
        assert parse_retry_after(bad) is None, bad


def _http_date(seconds_ahead: int) -> str:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_ahead), usegmt=True)
