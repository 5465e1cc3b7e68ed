"""The two microservice processes of the local stack: one app, two roles.

`scores-live` answers users; `scores-queue` takes the forwarder's signed pushes
(so only it gets the signing secret's ARN and, with `--chaos`, the fault file).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from microprocess.local.emulator import aws_env
from microprocess.local.processes import ProcessHandle, spawn
from microprocess.local.workspace import Workspace

APP = "microservice.main:app"
#: Sender of the report email when the infra code names none.
DEFAULT_SES_SENDER = "reports@example.com"


@dataclass(frozen=True)
class ServiceRole:
    key: str  # the key in local.json's `services`
    role: str  # SERVICE_ROLE
    process: str  # process and log name


LIVE = ServiceRole("live", "live", "scores-live")
QUEUE = ServiceRole("queue", "queue", "scores-queue")
ROLES = (LIVE, QUEUE)


def service_env(
    role: ServiceRole,
    *,
    endpoint_url: str,
    outputs: dict[str, str],
    ses_sender: str,
    chaos: Path | None = None,
) -> dict[str, str]:
    env = aws_env(endpoint_url)
    env.update(
        {
            "SERVICE_ROLE": role.role,
            "COMPANIES_TABLE": outputs["CompaniesTable"],
            "LEDGER_TABLE": outputs["LedgerTable"],
            "REPORTS_BUCKET": outputs["ReportsBucket"],
            "SES_SENDER": ses_sender,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if role is QUEUE:
        env["SIGNING_SECRET_ARN"] = outputs["SigningSecretArn"]
        if chaos is not None:
            env["MICROPROCESS_CHAOS"] = str(chaos)
    return env


def spawn_service(
    ws: Workspace,
    role: ServiceRole,
    port: int,
    env: dict[str, str],
    *,
    access_log: bool = False,
) -> ProcessHandle:
    """Start uvicorn with the microservice on 127.0.0.1:`port` (ready when `GET /healthz` answers)."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        APP,
        "--app-dir",
        str(ws.root),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "info",
        "--timeout-graceful-shutdown",
        "3",
    ]
    if not access_log:
        argv.append("--no-access-log")
    return spawn(role.process, argv, env=env, cwd=ws.root, log=ws.log(role.process))
