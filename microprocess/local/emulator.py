"""The local AWS: ministack, started from the project's own interpreter.

ministack runs Python Lambda handlers in worker subprocesses of *its own*
interpreter, so starting it with the project venv's Python lets the handlers
import `microprocess` and every pinned dependency. Its workers inherit the
server's environment (plus the function's own variables), which is how
`--chaos` reaches the functions.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from microprocess.local.processes import ProcessHandle, spawn, wait_http_ok
from microprocess.local.tls import LocalTls
from microprocess.local.workspace import Workspace

ACCOUNT_ID = "000000000000"
REGION = "us-east-1"
#: The emulator account's root credentials (IAM is enforced: every other principal is a role session); never real ones.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

#: Variables of the caller's environment that must not reach the emulator (and so the functions):
#: a real profile, a session token or an endpoint elsewhere would be used by the handlers.
_SCRUBBED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "MICROPROCESS_CHAOS",
)


def aws_env(endpoint_url: str | None = None, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a process that talks to the emulator: fake credentials, fixed region,
    the endpoint (when given) and nothing that could point at a real account."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _SCRUBBED}
    env.update(FAKE_CREDENTIALS)
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = REGION
    # No config file: a developer's ~/.aws/config must not change retries or endpoints.
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


def aws_client(service: str, endpoint_url: str, *, ca_bundle: str | None = None, **config: Any) -> Any:
    """A boto3 client for the emulator with the operator's (root) credentials; never a real account.

    Args:
        ca_bundle: the local CA to trust for an HTTPS endpoint (`LocalState.ca_bundle`).
        config: botocore `Config` options (`max_pool_connections`, `read_timeout`, ...).
    """
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        verify=ca_bundle if ca_bundle else None,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, **config),
    )


def emulator_env(
    ws: Workspace,
    port: int,
    tls: LocalTls,
    *,
    chaos: Path | None = None,
    extra: Mapping[str, str] | None = None,
    enforce_iam: bool = True,
) -> dict[str, str]:
    env = aws_env()
    env.update(
        {
            # IAM as on AWS: identity and resource policies evaluated, each function under a
            # session of its own execution role; `test`/`test` stay the account's root.
            "AUTH": "true" if enforce_iam else "false",
            # TLS as on AWS (the policies' aws:SecureTransport), with the work folder's own CA.
            "USE_SSL": "1",
            "MINISTACK_SSL_CERT": str(tls.server_cert),
            "MINISTACK_SSL_KEY": str(tls.server_key),
            # The functions' SDKs trust the local CA (the workers inherit this environment).
            "AWS_CA_BUNDLE": str(tls.ca_cert),
            "GATEWAY_PORT": str(port),
            "BIND_HOST": "127.0.0.1",
            # The IoT mTLS and SFTP listeners bind fixed ports on 0.0.0.0 whatever BIND_HOST says.
            "IOT_MTLS_ENABLED": "0",
            "SFTP_ENABLED": "0",
            "STATE_DIR": str(ws.emulator_state),
            "S3_DATA_DIR": str(ws.s3_data),
            "TMPDIR": str(ws.tmp),
            "PERSIST_STATE": "0",
            "S3_PERSIST": "0",
            "LOG_LEVEL": "INFO",
            "MINISTACK_REGION": REGION,
            "MINISTACK_ACCOUNT_ID": ACCOUNT_ID,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if chaos is not None:
        env["MICROPROCESS_CHAOS"] = str(chaos)
    env.update(extra or {})
    return env


def start_emulator(
    ws: Workspace, port: int, tls: LocalTls, env: Mapping[str, str], *, timeout_s: float = 60.0
) -> ProcessHandle:
    """Start ministack on https://127.0.0.1:`port` with `env` (`emulator_env`) and wait until it is healthy."""
    handle = spawn(
        "ministack",
        [sys.executable, "-m", "microprocess.local.gateway"],
        env=dict(env),
        cwd=ws.workdir,
        log=ws.log("ministack"),
    )
    wait_http_ok(endpoint_of(port) + "/_ministack/health", handle, timeout_s=timeout_s, context=tls.client_context())
    return handle


def endpoint_of(port: int) -> str:
    """The emulator's endpoint URL on `port` (always HTTPS)."""
    return f"https://127.0.0.1:{port}"


def captured_emails(endpoint_url: str, ca_bundle: str | None = None) -> list[dict[str, Any]]:
    """The emails the emulator's SES has accepted, oldest first (all accounts).

    `ca_bundle`: the local CA (`LocalState.ca_bundle`) for an HTTPS endpoint."""
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    with urllib.request.urlopen(f"{endpoint_url}/_ministack/ses/messages", timeout=10, context=context) as resp:
        data = json.loads(resp.read())
    messages = data.get("messages", {})
    found: list[dict[str, Any]] = []
    if isinstance(messages, dict):
        for per_account in messages.values():
            found.extend(per_account)
    elif isinstance(messages, list):
        found.extend(messages)
    return sorted(found, key=lambda m: m.get("Timestamp") or 0)


def log_group_of(config: Mapping[str, Any], function: str) -> str:
    """A function's log group, from its configuration (`get_function_configuration`)."""
    return str((config.get("LoggingConfig") or {}).get("LogGroup") or f"/aws/lambda/{function}")


def log_messages(logs: Any, group: str, start_ms: int, end_ms: int, limit: int = 10_000) -> list[str]:
    """Every message of `group` in [start_ms, end_ms] (epoch ms, inclusive). The emulator answers
    at most `limit` events per call and no continuation token, so a full window is halved until
    each half fits."""
    try:
        resp = logs.filter_log_events(logGroupName=group, startTime=start_ms, endTime=end_ms, limit=limit)
    except logs.exceptions.ResourceNotFoundException:
        return []  # the function has not logged yet
    found = resp.get("events", [])
    if len(found) < limit or end_ms <= start_ms:
        return [e.get("message", "") for e in found]
    middle = (start_ms + end_ms) // 2
    return log_messages(logs, group, start_ms, middle, limit) + log_messages(logs, group, middle + 1, end_ms, limit)


def function_log_messages(lam: Any, logs: Any, functions: Iterable[str], since_ms: int) -> Iterator[str]:
    """Every log message the named functions wrote since `since_ms` (epoch ms).

    Args:
        lam: a Lambda client (each function's log group is read from its configuration).
        logs: a CloudWatch Logs client.
        functions: function names, e.g. the stack outputs' `ForwarderFunctionName`.
    """
    until_ms = int(time.time() * 1000) + 1000
    for fn in functions:
        group = log_group_of(lam.get_function_configuration(FunctionName=fn), fn)
        yield from log_messages(logs, group, since_ms, until_ms)
