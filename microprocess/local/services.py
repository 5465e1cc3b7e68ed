"""The declared services as local processes: what `microprocess local up` runs for each.

A service with `local_app` runs as one uvicorn process that takes the forwarder's signed
pushes (`<service>`); one with `local_command` runs that command line (any language), told its
port in `PORT`. Both run in the declaration file's folder. A **bundled** service runs in its two roles, as on Fargate:
`<service>-live` (answers people) and `<service>-queue` (takes the pushes). Only the
process that takes pushes gets the service's signing secret and, with `--chaos`, the
fault file; only the live role gets its API key secret (`API_KEY_SECRET_ARN`), generated
by the local stage as in the cloud. `--service NAME=URL` replaces a service's processes with one the user runs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from microprocess.declarations import Declarations, ServiceDeclaration
from microprocess.local.calls import PROCESS_ENV
from microprocess.local.emulator import FAKE_CREDENTIALS, aws_env
from microprocess.local.processes import ProcessHandle, spawn
from microprocess.local.workspace import Workspace

#: The profile of a service process's AWS config file: a session of its own role.
ROLE_PROFILE = "service"
#: The variable that tells a `local_command` service its port (it listens on 127.0.0.1:$PORT).
PORT_ENV = "PORT"
#: Sender of the report email when the infra code names none.
DEFAULT_SES_SENDER = "reports@example.com"


class ServiceConfigError(ValueError):
    """A service cannot be run locally as asked; the message says what to pass."""


@dataclass(frozen=True)
class ServiceProcess:
    """One local process of a declared service.

    Attributes:
        service: the declared service's name.
        key: its key in local.json's `services` (the push endpoint is the service's name;
            a bundled service's live role is `<service>-live`).
        process: process and log name.
        app: the ASGI app uvicorn runs (`local_app`), or "" for a command.
        role: SERVICE_ROLE of a bundled service (`live` or `queue`), or None.
        pushes: True for the process that takes the forwarder's signed pushes.
        command: the `local_command` it runs instead of uvicorn, or None.
    """

    service: str
    key: str
    process: str
    app: str
    role: str | None
    pushes: bool
    command: str | None = None


def processes_of(service: ServiceDeclaration) -> list[ServiceProcess]:
    """The local processes of `service` (none when it declares neither `local_app` nor `local_command`)."""
    name = service.name
    if service.local_command:
        return [ServiceProcess(name, name, name, "", None, pushes=True, command=service.local_command)]
    if not service.local_app:
        return []
    app = service.local_app
    if service.bundled:
        return [
            ServiceProcess(name, f"{name}-live", f"{name}-live", app, "live", pushes=False),
            ServiceProcess(name, name, f"{name}-queue", app, "queue", pushes=True),
        ]
    return [ServiceProcess(name, name, name, app, None, pushes=True)]


def parse_service_urls(pairs: list[str], declarations: Declarations) -> dict[str, str]:
    """`--service NAME=URL` options as {service: url}; unknown names and bad URLs are refused."""
    urls: dict[str, str] = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name or not url:
            raise ServiceConfigError(
                f"--service {pair!r} must be NAME=URL, e.g. --service reminders=http://127.0.0.1:9000"
            )
        if name not in declarations.services:
            raise ServiceConfigError(
                f"--service {pair!r}: unknown service '{name}'; declared services: {declarations.services.names()}"
            )
        if not url.startswith(("http://", "https://")):
            raise ServiceConfigError(f"--service {pair!r}: the URL must start with http:// or https://")
        urls[name] = url.rstrip("/")
    return urls


def plan_processes(
    declarations: Declarations, given_urls: Mapping[str, str], *, start_examples: bool = True
) -> list[ServiceProcess]:
    """The processes `local up` starts: every declared service's, except those given a URL.

    Raises `ServiceConfigError` for a service that would have no endpoint at all."""
    planned: list[ServiceProcess] = []
    for service in declarations.services:
        if service.name in given_urls:
            continue
        procs = processes_of(service) if start_examples else []
        if not procs:
            why = (
                "--no-example-service starts none"
                if start_examples is False
                else "it declares neither local_app nor local_command"
            )
            raise ServiceConfigError(
                f"service '{service.name}' has no local endpoint ({why}): pass --service {service.name}=URL for "
                f"the process you run, or declare local_app = 'module:app' or local_command = '<command line>' for it"
            )
        planned.extend(procs)
    return planned


def table_variable(role: str) -> str:
    """The environment variable naming a table role for a service (`customers` -> `CUSTOMERS_TABLE`)."""
    return f"{role.upper().replace('-', '_')}_TABLE"


def role_of(proc: ServiceProcess, outputs: Mapping[str, str]) -> str:
    """The ARN of the role `proc` runs with (the stack's `ServiceRoleArns`: its cloud task role)."""
    roles = json.loads(outputs.get("ServiceRoleArns") or "{}")
    key = f"{proc.service}-{proc.role}" if proc.role else proc.service
    if key not in roles:
        raise ServiceConfigError(
            f"the local stage has no role for the service process '{key}' (ServiceRoleArns has {sorted(roles)}): "
            "redeploy with `microprocess local down && microprocess local up`"
        )
    return str(roles[key])


def write_role_profile(path: Path, *, role_arn: str, session_name: str) -> Path:
    """An AWS config file whose profile `service` assumes `role_arn` (with the emulator's root
    credentials as its source), so that the process's SDK holds a session of its own role and
    renews it before it expires, as an ECS task's does. Returns `path` (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (
        "[profile root]\n"
        f"aws_access_key_id = {FAKE_CREDENTIALS['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {FAKE_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n\n"
        f"[profile {ROLE_PROFILE}]\n"
        f"role_arn = {role_arn}\n"
        "source_profile = root\n"
        f"role_session_name = {session_name}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def service_env(
    proc: ServiceProcess,
    *,
    declarations: Declarations,
    endpoint_url: str,
    ca_bundle: str,
    aws_profile: Path,
    outputs: Mapping[str, str],
    ses_sender: str,
    chaos: Path | None = None,
) -> dict[str, str]:
    """The environment of one service process on the local stack.

    It holds no credentials: `aws_profile` (`write_role_profile`) makes its SDK assume the process's
    own role, so a call that role does not allow is refused as on AWS."""
    service = declarations.services.get(proc.service)
    tables = json.loads(outputs.get("SourceTables") or "{}")
    secrets = json.loads(outputs.get("ServiceSecretArns") or "{}")
    api_keys = json.loads(outputs.get("ApiKeyArns") or "{}")
    env = {k: v for k, v in aws_env(endpoint_url).items() if k not in FAKE_CREDENTIALS}
    env["AWS_CA_BUNDLE"] = ca_bundle  # the emulator is reached over TLS, signed by the local CA
    env["AWS_CONFIG_FILE"] = str(aws_profile)
    env["AWS_PROFILE"] = ROLE_PROFILE
    env[PROCESS_ENV] = proc.process  # who its recorded AWS calls are from (microprocess.local.calls)
    env.update(
        {
            "LEDGER_TABLE": outputs["LedgerTable"],
            "REPORTS_BUCKET": outputs["ReportsBucket"],
            "SES_SENDER": ses_sender,
            "MICROPROCESS_DECLARATIONS": str(declarations.path),
            "PYTHONUNBUFFERED": "1",
            **{table_variable(role): tables[role] for role in service.tables if role in tables},
        }
    )
    if proc.role is not None:
        env["SERVICE_ROLE"] = proc.role
    if proc.role == "live":
        if proc.service not in api_keys:
            raise ServiceConfigError(
                f"the local stage has no API key secret for service '{proc.service}' (ApiKeyArns has "
                f"{sorted(api_keys)}): redeploy with `microprocess local up`"
            )
        env["API_KEY_SECRET_ARN"] = api_keys[proc.service]
    if proc.pushes:
        if proc.service not in secrets:
            raise ServiceConfigError(
                f"the local stage has no signing secret for service '{proc.service}' (ServiceSecretArns has "
                f"{sorted(secrets)}): redeploy with `microprocess local up`"
            )
        env["SIGNING_SECRET_ARN"] = secrets[proc.service]
        if chaos is not None:
            env["MICROPROCESS_CHAOS"] = str(chaos)
    env.update(service.local_env)
    return env


def spawn_service(
    ws: Workspace,
    proc: ServiceProcess,
    port: int,
    env: dict[str, str],
    *,
    folder: Path | None = None,
    access_log: bool = False,
) -> ProcessHandle:
    """Start the service on 127.0.0.1:`port` in `folder` (the declaration file's; default the
    project folder, `ws.root`): uvicorn with its app imported from there, or its
    `local_command` (with `PORT`, and the folder of this Python first on `PATH`, so that `python`
    is the interpreter microprocess runs in)."""
    folder = folder or ws.root
    if proc.command is not None:
        command_env = {
            **env,
            PORT_ENV: str(port),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
        }
        return spawn(proc.process, shlex.split(proc.command), env=command_env, cwd=folder, log=ws.log(proc.process))
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        proc.app,
        "--app-dir",
        str(folder),
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
    return spawn(proc.process, argv, env=env, cwd=folder, log=ws.log(proc.process))
