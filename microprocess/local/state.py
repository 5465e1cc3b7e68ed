"""`local.json`: what a running local stack is, for the CLI and for `local down`.

Keys: `endpoint_url`, `region`, `outputs` (the stack outputs), `services`
(`{"live": URL, "queue": URL}`), `pids` (process name → process id), and
`process_start_ticks` (process name → start time, so a recycled id is never stopped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microprocess.local.processes import is_running


class NoLocalStack(RuntimeError):
    """No local stack is running (or its `local.json` is missing or stale)."""


class LocalState(BaseModel):
    """The contents of `local.json`."""

    model_config = ConfigDict(extra="ignore")

    endpoint_url: str
    region: str = "us-east-1"
    outputs: dict[str, str] = Field(default_factory=dict)
    services: dict[str, str] = Field(default_factory=dict)
    pids: dict[str, int] = Field(default_factory=dict)
    process_start_ticks: dict[str, int | None] = Field(default_factory=dict)
    workdir: str = ""
    started_at: str = ""
    #: The local CA the emulator's certificate is signed by (its endpoint is HTTPS).
    ca_bundle: str = ""

    def running(self) -> dict[str, int]:
        """The processes of this stack that are still alive."""
        return {name: pid for name, pid in self.pids.items() if is_running(pid, self.process_start_ticks.get(name))}

    def client(self, service: str, **config: Any) -> Any:
        """A boto3 client for this stack with the operator's (root) credentials, trusting its CA.

        `config`: botocore `Config` options (`max_pool_connections`, `read_timeout`, ...)."""
        from microprocess.local.emulator import aws_client

        return aws_client(service, self.endpoint_url, ca_bundle=self.ca_bundle or None, **config)

    def output(self, key: str) -> str:
        try:
            return self.outputs[key]
        except KeyError:
            raise NoLocalStack(
                f"the local stack has no output '{key}' (outputs: {sorted(self.outputs)}); "
                "redeploy with `microprocess local down && microprocess local up`"
            ) from None


def write_state(path: Path, state: LocalState) -> None:
    """Write atomically (a reader never sees half a file), readable by the owner only (0600):
    it names the local stack's processes, endpoints and secret ARNs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    # Created 0600 from the first byte (no window where another user could read it).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state.model_dump(), indent=2) + "\n")
    os.chmod(tmp, 0o600)  # O_CREAT keeps the mode of an older leftover file
    tmp.replace(path)


def read_state(path: Path) -> LocalState:
    """The state of the local stack at `path`; `NoLocalStack` if there is none."""
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoLocalStack(
            f"no local stack is running ({path} does not exist); start one with `microprocess local up`"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise NoLocalStack(
            f"{path} is unreadable ({exc}); run `microprocess local down`, then `microprocess local up`"
        ) from None
    try:
        return LocalState.model_validate(data)
    except ValidationError as exc:
        raise NoLocalStack(
            f"{path} is not a local stack description ({exc.error_count()} problems); "
            "run `microprocess local down`, then `microprocess local up`"
        ) from None


def read_live_state(path: Path) -> LocalState:
    """Like `read_state`, but also `NoLocalStack` when the emulator process is gone."""
    state = read_state(path)
    if "ministack" in state.pids and "ministack" not in state.running():
        raise NoLocalStack(
            f"the local stack described in {path} is not running any more (the emulator, pid "
            f"{state.pids['ministack']}, is gone); start one with `microprocess local up`"
        )
    return state
