"""Service and table declarations: where a job's tasks go, and the tables the stack owns.

A service is a queue endpoint that takes signed task pushes (docs/push-contract.md):

* an **existing URL** outside the stack (`url`, e.g. a team's `https://scores-queue.example.com`),
  or a URL given to the CDK app as a parameter (`service_urls`), or
* the **bundled** example built from a folder of this repository (`bundled = "microservice"`:
  Fargate `live` + `queue` roles behind load balancers, as the example service is deployed).

`local_app` (an ASGI `module:attribute`) or `local_command` (a command line, any language) is what
`microprocess local up` runs for the service on this machine, in the declaration file's folder;
`microprocess local up --service NAME=URL` points it at a process you run instead.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from microprocess.declarations.models import JobDeclarationError

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_APP = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_FOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


class UnknownServiceError(KeyError):
    """A service name that is not declared."""

    def __str__(self) -> str:
        return str(self.args[0])


class ServiceCapacity(BaseModel):
    """What a service declares it can take from all the jobs that push to it together.

    Attributes:
        concurrent_pushes: the most pushes it serves at once (the sum over every job and run).
        pushes_per_second: the most pushes a second it takes; turned into pushes at once by
            Little's law with the measured push time (`microprocess.control.share`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrent_pushes: Annotated[int | None, Field(ge=1, le=100_000)] = None
    pushes_per_second: Annotated[float | None, Field(gt=0, le=1_000_000)] = None

    @model_validator(mode="after")
    def _one(self) -> ServiceCapacity:
        if self.concurrent_pushes is None and self.pushes_per_second is None:
            raise ValueError(
                "capacity needs concurrent_pushes and/or pushes_per_second, e.g. capacity = { concurrent_pushes = 40 }"
            )
        return self


class ServiceDeclaration(BaseModel):
    """One service that jobs push to.

    Attributes:
        name: kebab-case service name (`scores`); its signing secret and metrics carry it.
        description: what the service does (shown by the CLI).
        url: base URL of its queue endpoint in the cloud (http(s)://host[:port][/prefix]),
            for a service that runs outside this stack.
        bundled: a folder of this repository holding a Dockerfile: the stack builds the image
            and runs it on Fargate in two roles (`<name>-live`, `<name>-queue`).
        local_app: ASGI app (`module:attribute`) that `microprocess local up` runs for it with
            uvicorn, imported from the declaration file's folder.
        local_command: a command line (split as a shell would, no shell features) that
            `microprocess local up` runs for it instead, in the declaration file's folder: a
            service in any language. It must listen on 127.0.0.1:`$PORT` and answer the push
            contract there; its environment holds `PORT`, `SIGNING_SECRET_ARN` and the AWS
            settings to read it (docs/push-contract.md, "A service `local up` starts").
        local_env: extra environment for the local process (strings).
        tables: table roles the service reads or writes (the bundled service gets their names).
        plain_http_reason: why plain `http://` to this service is acceptable in the cloud stage
            (e.g. "inside the VPC, private subnets only"); without it the cloud stage refuses an
            `http://` URL (items and results would travel in clear); the reason is printed by synth.
        capacity: what it takes from every job and run together (`concurrent_pushes`,
            `pushes_per_second`); the platform splits it between the jobs using it by their
            `weight` (docs/capacity.md). None: each job is bounded by its own `max_concurrency` only.
        shed_after_s: a 429/503 whose `Retry-After` is at least this long (seconds) means the
            service sheds load: every job's pushes to it pause until then, no task counted. A
            shorter `Retry-After` delays that one task only (the SDK's `RetryLater(seconds)`).
        shed_header: a response header (any status) whose value, seconds or an HTTP date like
            `Retry-After`, asks every job to pause its pushes to the service until then.
        isolated_forwarder: push this service's tasks from a forwarder function of its own, whose
            role reads this service's signing secret only (and the shared forwarder's role not
            this one's): a compromised forwarder of another service cannot sign requests to this
            one. Costs one more function (its own cold starts and concurrency); the reducer, which
            pushes reduce and completion tasks to every service, still reads every secret.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    url: str | None = None
    bundled: str | None = None
    local_app: str | None = None
    local_command: str | None = None
    local_env: dict[str, str] = Field(default_factory=dict)
    tables: tuple[str, ...] = ()
    plain_http_reason: str | None = None
    capacity: ServiceCapacity | None = None
    shed_after_s: Annotated[int, Field(ge=1, le=86_400)] = 60
    shed_header: str | None = None

    @field_validator("shed_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER.match(v):
            raise ValueError("shed_header must be an HTTP header name, e.g. 'X-Shed-Until'")
        return v

    isolated_forwarder: bool = False

    @property
    def runs_locally(self) -> bool:
        """`microprocess local up` starts a process for it (`local_app` or `local_command`)."""
        return bool(self.local_app or self.local_command)

    @field_validator("plain_http_reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        if v is not None and len(v.strip()) < 10:
            raise ValueError(
                "plain_http_reason must say why plain HTTP is acceptable, e.g. 'inside the VPC, private subnets only'"
            )
        return v.strip() if v is not None else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 2-32 chars of lowercase letters, digits and '-', e.g. 'scores'")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"url {v!r} must be http(s)://host[:port][/prefix], e.g. 'https://scores-queue.example.com'"
            )
        return v.rstrip("/")

    @field_validator("bundled")
    @classmethod
    def _bundled(cls, v: str | None) -> str | None:
        if v is not None and not _FOLDER.match(v):
            raise ValueError(
                "bundled must name a folder at the repository root holding a Dockerfile, e.g. 'microservice'"
            )
        return v

    @field_validator("local_app")
    @classmethod
    def _local_app(cls, v: str | None) -> str | None:
        if v is not None and not _APP.match(v):
            raise ValueError("local_app must be an ASGI app as 'module:attribute', e.g. 'reminders_service.main:app'")
        return v

    @field_validator("local_command")
    @classmethod
    def _local_command(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            argv = shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"local_command {v!r} cannot be split into arguments ({exc})") from None
        if not argv:
            raise ValueError("local_command must be a command line, e.g. 'python service.py' or './bin/service'")
        return v

    @model_validator(mode="after")
    def _one_endpoint(self) -> ServiceDeclaration:
        if self.local_app and self.local_command:
            raise ValueError(
                "give either local_app (an ASGI app run with uvicorn) or local_command (any command line), not both"
            )
        if self.bundled and self.local_command:
            raise ValueError("a bundled service runs its local_app in two roles: give it local_app, not local_command")
        if self.url and self.bundled:
            raise ValueError("give either url (an existing service) or bundled (built from a folder here), not both")
        if not (self.url or self.bundled or self.local_app or self.local_command):
            raise ValueError(
                "a service needs an endpoint: url = 'https://...' (existing), bundled = '<folder>' (built here), "
                "and/or local_app = 'module:app' or local_command = 'command line' (run by `microprocess local up`)"
            )
        return self


class TableDeclaration(BaseModel):
    """A DynamoDB table the stack creates and a job reads as its source (a table *role*).

    Attributes:
        name: the role (`customers`); jobs name it in `source.table`.
        partition_key: the table's string partition key.
        local_seed: `module:function(dynamodb_client, table_name, n, *, seed)` that fills it
            on the local stack.
        local_items: how many items `local up` seeds by default.
        local_item_ids: format of the seeded items' ids, `{n}` is 1, 2, ... (chaos scenarios
            address items by number), e.g. `C{n:07d}`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    partition_key: str = Field(min_length=1, max_length=255)
    local_seed: str | None = None
    local_items: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    local_item_ids: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("name must be 2-32 chars of lowercase letters, digits and '-', e.g. 'customers'")
        return v

    @field_validator("partition_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not _ATTRIBUTE.match(v):
            raise ValueError("partition_key must be an attribute name of letters, digits and '_'")
        return v

    @field_validator("local_seed")
    @classmethod
    def _seed(cls, v: str | None) -> str | None:
        if v is not None and not _APP.match(v):
            raise ValueError("local_seed must be 'module:function'")
        return v

    @field_validator("local_item_ids")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.format(n=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"local_item_ids must be a format with {{n}}, e.g. 'C{{n:07d}}' ({exc})") from None
        return v


class ServiceRegistry:
    """The declared services, by name."""

    def __init__(self, services: list[ServiceDeclaration]) -> None:
        names = [s.name for s in services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise JobDeclarationError(f"service names must be unique; declared twice: {dupes}")
        self._services = {s.name: s for s in services}

    def get(self, name: str) -> ServiceDeclaration:
        try:
            return self._services[name]
        except KeyError:
            raise UnknownServiceError(
                f"unknown service '{name}'; declared services: {sorted(self._services)}"
            ) from None

    def __iter__(self) -> Iterator[ServiceDeclaration]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def names(self) -> list[str]:
        return sorted(self._services)
