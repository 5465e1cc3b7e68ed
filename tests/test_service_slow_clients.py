"""An unsigned client holds no body buffer: the signature headers are checked before the body is
read (401 at once, the body never waited for), and a signed body that trickles is cut off with
408 after `BODY_READ_TIMEOUT_S` (docs/push-contract.md §3)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from fastapi import FastAPI

from microprocess.service import TaskRequest, Verifier, sign_request
from microprocess.service.asgi import TaskApp, TaskRoute
from microprocess.service.fastapi_routes import task_router
from tests.test_check_service import serving

SECRET = "slow-client-secret-0123456789"
PATH = "/tasks/x"
BODY = b'{"run_id":"r","task_id":"t","kind":"task","item":{"n":1}}'


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app.include_router(task_router(PATH, lambda t: {"ok": True}, secrets=SECRET, model=TaskRequest[Any]))
    return app


def asgi_app(body_timeout_s: float = 30.0) -> TaskApp:
    return TaskApp([TaskRoute(PATH, lambda t: {"ok": True})], Verifier(lambda: SECRET), body_timeout_s=body_timeout_s)


def send_head(url: str, headers: dict[str, str], *, length: int) -> socket.socket:
    """Open a connection and send only the request head, declaring a body of `length` bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = [f"POST {PATH} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


def status_of(sock: socket.socket, timeout_s: float) -> int:
    sock.settimeout(timeout_s)
    data = sock.recv(4096)
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("make_app", [fastapi_app, asgi_app], ids=["fastapi", "asgi"])
def test_an_unsigned_request_is_refused_before_its_body_is_read(make_app: Any) -> None:
    # GIVEN a service, and a client that declares a 5 MiB body but sends only the head, unsigned
    with serving(make_app()) as url:
        sock = send_head(url, {"Idempotency-Key": "r:t"}, length=5 * 1024 * 1024)
        try:
            # WHEN nothing of the body is sent THEN the 401 comes at once (no body buffer was waited for)
            started = time.monotonic()
            assert status_of(sock, timeout_s=5) == 401
            assert time.monotonic() - started < 5
        finally:
            sock.close()


def test_a_signed_body_that_trickles_is_cut_off_with_408() -> None:
    # GIVEN a service waiting at most 0.5 s for a body, and a correctly signed head whose body never comes
    with serving(asgi_app(body_timeout_s=0.5)) as url:
        sock = send_head(url, sign_request(SECRET, "POST", PATH, BODY, "r:t"), length=len(BODY))
        try:
            # THEN it answers 408 (the forwarder retries it) instead of holding the connection
            assert status_of(sock, timeout_s=5) == 408
        finally:
            sock.close()
