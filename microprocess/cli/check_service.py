"""`microprocess check-service SERVICE`: run the push contract against a running service.

Each clause of docs/push-contract.md that can be observed from outside is one check, printed
as one line (PASS/FAIL, the clause, the evidence). The checks send real signed (and
deliberately mis-signed) requests to the service's task endpoint; the exit code is non-zero
when any clause fails. What cannot be observed from outside (that a refused request wrote
nothing) is the service's own tests' job: the checker only sees the answers.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import select
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from microprocess.service.signing import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_FUTURE_S,
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    current_secret,
    new_nonce,
    sign_request,
)

#: Clause names, in the order they run (tests and the contract refer to them).
SIGNED_TASK = "a valid signed task succeeds (2xx, JSON result)"
UNSIGNED = "an unsigned request is refused (401)"
WRONG_SECRET = "a request signed with another secret is refused (401)"
STALE = "a stale timestamp (10 min old) is refused (401)"
FUTURE = "a future timestamp (10 min ahead) is refused (401)"
STALE_EDGE = f"a timestamp just past the window ({DEFAULT_MAX_AGE_S + 5} s old) is refused (401)"
FUTURE_EDGE = f"a timestamp just past the skew ({DEFAULT_MAX_FUTURE_S + 5} s ahead) is refused (401)"
INSIDE_WINDOW = (
    f"timestamps inside the window ({DEFAULT_MAX_AGE_S - 10} s old, {DEFAULT_MAX_FUTURE_S - 5} s ahead) are accepted"
)
V1_SIGNATURE = "a version-1 signature (v1=, over <timestamp>.<body>) is refused (401)"
KEY_MISMATCH = "an Idempotency-Key that is not the body's <run_id>:<task_id> is refused (permanent 4xx)"
SWAPPED_NONCE = "an accepted signature sent again with another nonce is refused (401)"
ABSURD_TIMESTAMP = "an absurd timestamp header (400 digits) is refused (401/400, not 5xx)"
TAMPERED = "a body changed under a valid signature is refused (401)"
OTHER_PATH = "a signature made for another path is refused (401)"
SAME_TASK_AGAIN = "the same task sent again gives the same result"
EXACT_REPLAY = "an exact replay is refused (401) or gives the same result"
MALFORMED = "a malformed (non-JSON) signed body is a permanent 4xx, not a 5xx"
WRONG_KIND = "a signed body of another kind is a permanent 4xx"
OVERSIZE = f"a body over {MAX_BODY_BYTES} bytes is refused with 413 before it is read"
RETRY_AFTER = "every Retry-After given is well-formed (seconds or an HTTP date)"

CLAUSES = (
    SIGNED_TASK,
    UNSIGNED,
    WRONG_SECRET,
    STALE,
    FUTURE,
    ABSURD_TIMESTAMP,
    STALE_EDGE,
    FUTURE_EDGE,
    INSIDE_WINDOW,
    TAMPERED,
    OTHER_PATH,
    V1_SIGNATURE,
    KEY_MISMATCH,
    SAME_TASK_AGAIN,
    EXACT_REPLAY,
    SWAPPED_NONCE,
    MALFORMED,
    WRONG_KIND,
    OVERSIZE,
    RETRY_AFTER,
)


@dataclass(frozen=True)
class ClauseResult:
    """One clause's verdict. A warning passes (the exit code stays 0) but is printed WARN: the
    service keeps the contract, not its advice (e.g. it accepts exact replays, harmlessly)."""

    clause: str
    passed: bool
    evidence: str
    warning: bool = False

    def line(self) -> str:
        verdict = "FAIL" if not self.passed else "WARN" if self.warning else "PASS"
        return f"{verdict}  {self.clause}: {self.evidence}"


@dataclass(frozen=True)
class Reply:
    """One answer (status None: no answer, `error` says why)."""

    status: int | None
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        text = self.body[:160].decode("utf-8", errors="replace").replace("\n", " ")
        return f"HTTP {self.status} {text}".rstrip()


@dataclass
class _Client:
    """Sends one request per connection to the service (no keep-alive state between checks)."""

    url: str
    timeout_s: float
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {self.url!r} must be http(s)://host[:port][/prefix]")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")

    def target(self, path: str) -> str:
        return self.prefix + path

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("POST", self.target(path), body=body, headers={"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.read(), resp.getheader("Retry-After"))
        except (OSError, http.client.HTTPException) as exc:
            reply = Reply(None, error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        self.replies.append(reply)
        return reply

    def post_streaming(self, path: str, size: int, headers: dict[str, str]) -> tuple[Reply, int]:
        """Declare and stream a `size`-byte body, stopping as soon as an answer arrives.

        Returns the answer and how many body bytes had been sent when it came.
        """
        sock: socket.socket = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        if self.https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        head = [f"POST {self.target(path)} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {size}"]
        head += [f"{k}: {v}" for k, v in {"Content-Type": "application/json", **headers}.items()]
        sent = 0
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            chunk = b" " * 65536
            while sent < size:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                n = min(len(chunk), size - sent)
                sock.sendall(chunk[:n])
                sent += n
        except OSError:
            pass  # the service may close the connection once it has answered: read what it said
        try:
            raw = b""
            sock.settimeout(self.timeout_s)
            while b"\r\n\r\n" not in raw:
                data = sock.recv(65536)
                if not data:
                    break
                raw += data
        except OSError as exc:
            reply = Reply(None, error=f"{type(exc).__name__}: {exc}")
        else:
            match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
            head_text = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            retry = re.search(r"(?im)^retry-after:\s*(.+?)\s*$", head_text)
            reply = (
                Reply(int(match.group(1)), raw.split(b"\r\n\r\n", 1)[-1], retry.group(1) if retry else None)
                if match
                else Reply(None, error="the connection closed without an HTTP answer")
            )
        finally:
            sock.close()
        self.replies.append(reply)
        return reply, sent


def _permanent_4xx(reply: Reply) -> bool:
    return reply.status is not None and 400 <= reply.status < 500 and reply.status not in (408, 429)


def _refused_401(clause: str, reply: Reply) -> ClauseResult:
    return ClauseResult(clause, reply.status == 401, reply.describe())


def well_formed_retry_after(value: str) -> bool:
    """Delta-seconds (digits) or an HTTP date (RFC 9110 §10.2.3)."""
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,12}", text):
        return True
    try:
        return parsedate_to_datetime(text) is not None
    except (TypeError, ValueError, IndexError, OverflowError):
        return False


def check_service(
    url: str,
    *,
    secret: str,
    item: Any,
    task_path: str,
    job: str = "check-service",
    params: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
    clock: Callable[[], float] = time.time,
) -> list[ClauseResult]:
    """Run every clause against the service at `url`; one result per clause, in `CLAUSES` order.

    Args:
        url: the service's queue endpoint base URL (`http://127.0.0.1:8083`).
        secret: its signing secret value (a rotation value signs with its current secret).
        item: a sample work item the service accepts (the valid task must succeed).
        task_path: the job's task endpoint (`/tasks/remind`).
        job: the job name sent in the bodies.
        params: the run parameters sent in the bodies.
        timeout_s: per request, seconds.
    """
    client = _Client(url, timeout_s)
    key_secret = current_secret(secret)
    run_id = f"check-{uuid.uuid4().hex[:12]}"
    target = client.target(task_path)

    def payload(task_id: str, **changes: Any) -> dict[str, Any]:
        base = {
            "run_id": run_id,
            "task_id": task_id,
            "attempt": 1,
            "item": item,
            "job": job,
            "shard": 0,
            "kind": "task",
            "params": params or {},
        }
        return {**base, **changes}

    def encode(doc: Any) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    def signed(body: bytes, key: str, **kw: Any) -> dict[str, str]:
        return sign_request(kw.pop("with_secret", key_secret), "POST", kw.pop("path", target), body, key, **kw)

    results: list[ClauseResult] = []
    now = int(clock())

    # The valid task, and the same task again (a redelivery, signed anew).
    good_body = encode(payload("t-valid"))
    good_key = f"{run_id}:t-valid"
    first = client.post(task_path, good_body, signed(good_body, good_key))
    first_ok = first.status is not None and 200 <= first.status < 300 and first.json() is not None
    results.append(ClauseResult(SIGNED_TASK, first_ok, first.describe()))

    def refused(clause: str, task_id: str, headers_of: Callable[[bytes, str], dict[str, str]]) -> None:
        body = encode(payload(task_id))
        results.append(_refused_401(clause, client.post(task_path, body, headers_of(body, f"{run_id}:{task_id}"))))

    refused(UNSIGNED, "t-unsigned", lambda body, key: {IDEMPOTENCY_HEADER: key})
    refused(WRONG_SECRET, "t-wrong-secret", lambda body, key: signed(body, key, with_secret=key_secret + "-not"))
    refused(STALE, "t-stale", lambda body, key: signed(body, key, timestamp=now - 600))
    refused(FUTURE, "t-future", lambda body, key: signed(body, key, timestamp=now + 600))
    absurd_body = encode(payload("t-absurd"))
    absurd = client.post(
        task_path, absurd_body, {**signed(absurd_body, f"{run_id}:t-absurd"), TIMESTAMP_HEADER: "9" * 400}
    )
    results.append(ClauseResult(ABSURD_TIMESTAMP, absurd.status in (400, 401), absurd.describe()))
    refused(STALE_EDGE, "t-stale-edge", lambda body, key: signed(body, key, timestamp=now - DEFAULT_MAX_AGE_S - 5))
    refused(FUTURE_EDGE, "t-future-edge", lambda body, key: signed(body, key, timestamp=now + DEFAULT_MAX_FUTURE_S + 5))
    inside = []
    for task_id, ts in (("t-old-ok", now - DEFAULT_MAX_AGE_S + 10), ("t-ahead-ok", now + DEFAULT_MAX_FUTURE_S - 5)):
        body = encode(payload(task_id))
        inside.append(client.post(task_path, body, signed(body, f"{run_id}:{task_id}", timestamp=ts)))
    results.append(
        ClauseResult(
            INSIDE_WINDOW,
            all(r.status is not None and 200 <= r.status < 300 for r in inside),
            "; ".join(r.describe() for r in inside),
        )
    )
    tampered_key = f"{run_id}:t-tampered"
    signed_for = signed(encode(payload("t-tampered")), tampered_key)
    tampered = encode(payload("t-tampered", attempt=2, params={"tampered": True}))
    results.append(_refused_401(TAMPERED, client.post(task_path, tampered, signed_for)))
    refused(OTHER_PATH, "t-other-path", lambda body, key: signed(body, key, path=target + "-elsewhere"))

    def v1(body: bytes, key: str) -> dict[str, str]:
        headers = signed(body, key)
        mac = hmac.new(key_secret.encode(), headers[TIMESTAMP_HEADER].encode() + b"." + body, hashlib.sha256)
        return {**headers, SIGNATURE_HEADER: "v1=" + mac.hexdigest()}

    refused(V1_SIGNATURE, "t-v1", v1)
    mismatch_body = encode(payload("t-key"))
    mismatch = client.post(task_path, mismatch_body, signed(mismatch_body, f"{run_id}:t-not-this-one"))
    results.append(ClauseResult(KEY_MISMATCH, _permanent_4xx(mismatch), mismatch.describe()))

    again_headers = signed(good_body, good_key)
    again = client.post(task_path, good_body, again_headers)
    same = first_ok and again.status == first.status and again.json() == first.json()
    results.append(
        ClauseResult(
            SAME_TASK_AGAIN,
            same,
            f"first {first.describe()}; again {again.describe()}" if not same else again.describe(),
        )
    )
    replay = client.post(task_path, good_body, again_headers)
    if replay.status == 401:
        results.append(ClauseResult(EXACT_REPLAY, True, f"refused: {replay.describe()}"))
    else:
        harmless = first_ok and replay.status == first.status and replay.json() == first.json()
        results.append(
            ClauseResult(
                EXACT_REPLAY,
                harmless,
                f"replays accepted: {replay.describe()}"
                + ("; keep a replay record (the SDK's verify does)" if harmless else ""),
                warning=harmless,
            )
        )
    swapped = client.post(task_path, good_body, {**again_headers, NONCE_HEADER: new_nonce()})
    results.append(_refused_401(SWAPPED_NONCE, swapped))

    malformed_body = b'{"run_id": "' + run_id.encode() + b'", not json'
    malformed = client.post(task_path, malformed_body, signed(malformed_body, f"{run_id}:t-malformed"))
    results.append(ClauseResult(MALFORMED, _permanent_4xx(malformed), malformed.describe()))
    kind_body = encode(payload("t-kind", kind="finalize", item=None))
    wrong_kind = client.post(task_path, kind_body, signed(kind_body, f"{run_id}:t-kind"))
    results.append(ClauseResult(WRONG_KIND, _permanent_4xx(wrong_kind), wrong_kind.describe()))

    size = MAX_BODY_BYTES + 1
    oversize, sent = client.post_streaming(task_path, size, {IDEMPOTENCY_HEADER: f"{run_id}:t-oversize"})
    results.append(
        ClauseResult(
            OVERSIZE,
            oversize.status == 413 and sent < size,
            f"{oversize.describe()} after {sent} of {size} body bytes sent",
        )
    )

    given = [r.retry_after for r in client.replies if r.retry_after is not None]
    bad = [v for v in given if not well_formed_retry_after(v)]
    evidence = f"malformed: {bad[:3]}" if bad else (f"{len(given)} given, all well-formed" if given else "none given")
    results.append(ClauseResult(RETRY_AFTER, not bad, evidence))
    return results


def _local_defaults(service: str, job: Any, *, url: str, secret: str, item: str) -> tuple[str, str, str]:
    """Fill what was not given from the running local stack (its URL for the service and the
    service's signing secret) and from the job's declared `sample_item`."""
    if not item and getattr(job, "sample_item", None) is not None:
        item = json.dumps(job.sample_item)
    if url and secret:
        return url, secret, item
    from microprocess.local import NoLocalStack, Workspace, read_live_state

    try:
        state = read_live_state(Workspace.discover().state_file)
    except NoLocalStack:
        return url, secret, item  # not running locally: the options are required
    url = url or state.services.get(service, "")
    if not secret:
        arns = json.loads(state.outputs.get("ServiceSecretArns") or "{}")
        if service in arns:
            sm = state.client("secretsmanager")
            secret = str(sm.get_secret_value(SecretId=arns[service])["SecretString"])
    return url, secret, item


def register(app: typer.Typer) -> None:
    """Add the `check-service` command to a Typer app (the CLI wires it with one line)."""

    @app.command("check-service")
    def check_service_command(
        service: Annotated[str, typer.Argument(help="A declared service (see microprocess.toml).")],
        url: Annotated[str, typer.Option("--url", help="The service's queue endpoint base URL.")] = "",
        secret: Annotated[
            str,
            typer.Option("--secret", envvar="MICROPROCESS_SERVICE_SECRET", help="The service's signing secret value."),
        ] = "",
        item: Annotated[str, typer.Option("--item", help="A sample item the service accepts, as JSON.")] = "",
        job: Annotated[
            str, typer.Option("--job", help="The job whose task endpoint to check (default: the service's only job).")
        ] = "",
        timeout_s: Annotated[float, typer.Option("--timeout", help="Per request, seconds.")] = 30.0,
    ) -> None:
        """Check a running service against the push contract (docs/push-contract.md), one line per clause."""
        from microprocess.declarations import get_declarations

        declarations = get_declarations()
        try:
            declarations.services.get(service)
            jobs = [j for j in declarations.jobs_of(service) if not job or j.name == job]
        except Exception as exc:  # an unknown service: the registry's message names the declared ones
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if len(jobs) != 1:
            names = [j.name for j in declarations.jobs_of(service)]
            typer.echo(f"error: service {service!r} serves jobs {names}; choose one with --job", err=True)
            raise typer.Exit(2)
        url, secret, item = _local_defaults(service, jobs[0], url=url, secret=secret, item=item)
        problems = [
            text
            for text, missing in (
                ("--url (the service's base URL)", not url),
                ("--secret or MICROPROCESS_SERVICE_SECRET (its signing secret)", not secret),
                ("--item (a sample item as JSON)", not item),
            )
            if missing
        ]
        if problems:
            typer.echo(f"error: check-service needs {', '.join(problems)}", err=True)
            raise typer.Exit(2)
        try:
            sample = json.loads(item)
        except ValueError as exc:
            typer.echo(f'error: --item is not JSON ({exc}); e.g. --item \'{{"invoice_id": "I-1"}}\'', err=True)
            raise typer.Exit(2) from None
        try:
            results = check_service(
                url, secret=secret, item=sample, task_path=jobs[0].task_path, job=jobs[0].name, timeout_s=timeout_s
            )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for result in results:
            typer.echo(result.line())
        failed = [r.clause for r in results if not r.passed]
        warned = [r.clause for r in results if r.passed and r.warning]
        typer.echo(
            f"{len(results) - len(failed)} of {len(results)} clauses pass"
            + (f" ({len(warned)} with a warning)" if warned else "")
            + (f"; {len(failed)} fail" if failed else "")
        )
        if failed:
            raise typer.Exit(1)
