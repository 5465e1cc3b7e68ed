"""Loading a team's declaration file: jobs, the services they push to, and source tables.

The file is TOML (`microprocess.toml` at the repository root, or the path in
`MICROPROCESS_DECLARATIONS`). The CDK app, the Lambda functions (the file ships in their
code asset), the CLI, the local stack and the planner all read it through `get_declarations()`.

    [services.reminders]
    url = "https://reminders-queue.example.com"   # cloud: an existing endpoint
    local_app = "reminders_service.main:app"     # local: run by `microprocess local up`

    [jobs.invoice-reminders]
    service = "reminders"
    schedule = "cron(0 8 * * ? *)"
    task_path = "/tasks/remind"
    source = { kind = "s3", uri = "s3://my-bucket/invoices.jsonl", format = "jsonl" }

Every error names the file, the job or service, the field and the fix.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from microprocess.declarations.models import (
    JobDeclaration,
    JobDeclarationError,
    JobRegistry,
    SourceKind,
    explain,
)
from microprocess.declarations.run_keys import overlapping_run_keys
from microprocess.declarations.services import (
    ServiceDeclaration,
    ServiceRegistry,
    TableDeclaration,
)

#: The environment variable that names the declaration file (absolute, or relative to the
#: working directory or to the folder that holds the `microprocess` package).
DECLARATIONS_ENV = "MICROPROCESS_DECLARATIONS"
#: The file looked for when the variable is not set.
DEFAULT_FILE = "microprocess.toml"
_TOP_LEVEL = ("jobs", "services", "tables", "local")
_LOCAL_KEYS = ("demo_job", "chaos_job")


@dataclass(frozen=True)
class LocalDefaults:
    """The `[local]` table: what `make run` (`microprocess demo`) and `make chaos` run.

    Attributes:
        demo_job: the job `microprocess demo` runs (default: the first declared job).
        chaos_job: the job the chaos suite drives (default: the demo job).
    """

    demo_job: str
    chaos_job: str


@dataclass(frozen=True)
class Declarations:
    """Everything a team declares, validated together.

    Attributes:
        path: the file it came from.
        jobs: the jobs, by name.
        services: the services, by name.
        tables: the DynamoDB source tables the stack creates, by role.
        local: what the local demo and chaos suite run.
    """

    path: Path
    jobs: JobRegistry
    services: ServiceRegistry
    tables: Mapping[str, TableDeclaration] = field(default_factory=dict)
    local: LocalDefaults | None = None

    def service_of(self, job: JobDeclaration | str) -> ServiceDeclaration:
        """The service a job pushes to."""
        declared = self.jobs.get(job) if isinstance(job, str) else job
        return self.services.get(declared.service)

    def jobs_of(self, service: str) -> list[JobDeclaration]:
        """The jobs that push to `service`."""
        return [job for job in self.jobs if job.service == service]

    @property
    def demo_job(self) -> JobDeclaration:
        assert self.local is not None
        return self.jobs.get(self.local.demo_job)


def _error(path: Path, message: str) -> JobDeclarationError:
    return JobDeclarationError(f"{path}: {message}")


def _table_of(path: Path, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise _error(path, f"'{key}' must be a table of [{key}.<name>] entries, got {type(value).__name__}")
    for name, entry in value.items():
        if not isinstance(entry, Mapping):
            raise _error(path, f"[{key}.{name}] must be a table of settings, got {type(entry).__name__}")
    return value


def parse_declarations(data: Mapping[str, Any], path: Path) -> Declarations:
    """Validate parsed TOML (`data`) from `path`; raise one `JobDeclarationError` naming the problem."""
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise _error(path, f"unknown top-level key(s) {unknown}; the file holds only {list(_TOP_LEVEL)}")

    services: list[ServiceDeclaration] = []
    for name, entry in _table_of(path, data, "services").items():
        try:
            services.append(ServiceDeclaration.model_validate({"name": name, **entry}))
        except ValidationError as exc:
            raise _error(path, explain(exc, f"service '{name}'", ServiceDeclaration)) from None
    tables: dict[str, TableDeclaration] = {}
    for name, entry in _table_of(path, data, "tables").items():
        try:
            tables[name] = TableDeclaration.model_validate({"name": name, **entry})
        except ValidationError as exc:
            raise _error(path, explain(exc, f"table '{name}'", TableDeclaration)) from None
    jobs: list[JobDeclaration] = []
    for name, entry in _table_of(path, data, "jobs").items():
        try:
            jobs.append(JobDeclaration.model_validate({"name": name, **entry}))
        except ValidationError as exc:
            raise _error(path, explain(exc, f"job '{name}'", JobDeclaration)) from None
    if not jobs:
        raise _error(path, "no jobs declared: add a [jobs.<name>] table (see README, 'Your own job')")
    try:
        registry, service_registry = JobRegistry(jobs), ServiceRegistry(services)
    except JobDeclarationError as exc:
        raise _error(path, str(exc)) from None

    for job in registry:
        if job.service not in service_registry:
            raise _error(
                path,
                f"job '{job.name}' is invalid: field 'service': unknown service '{job.service}'; declared services: "
                f"{service_registry.names()}. Declare [services.{job.service}] or name one of those",
            )
        if job.source.kind is SourceKind.DYNAMODB and job.source.table not in tables:
            raise _error(
                path,
                f"job '{job.name}' is invalid: field 'source.table': unknown table '{job.source.table}'; declared "
                f"tables: {sorted(tables)}. Declare [tables.{job.source.table}] with its partition_key",
            )
    overlap = overlapping_run_keys(registry, lambda job: registry.get(job).service)
    if overlap:
        raise _error(path, overlap)
    for service in service_registry:
        missing = [t for t in service.tables if t not in tables]
        if missing:
            raise _error(
                path,
                f"service '{service.name}' is invalid: field 'tables': unknown table(s) {missing}; declared "
                f"tables: {sorted(tables)}",
            )

    local = data.get("local", {})
    if not isinstance(local, Mapping):
        raise _error(path, f"[local] must be a table of settings, got {type(local).__name__}")
    unknown_local = sorted(set(local) - set(_LOCAL_KEYS))
    if unknown_local:
        raise _error(path, f"[local] has unknown key(s) {unknown_local}; it holds only {list(_LOCAL_KEYS)}")
    demo = str(local.get("demo_job") or jobs[0].name)
    chaos = str(local.get("chaos_job") or demo)
    for key, name in (("demo_job", demo), ("chaos_job", chaos)):
        if name not in registry.names():
            raise _error(path, f"[local] field '{key}': unknown job '{name}'; declared jobs: {registry.names()}")
    return Declarations(
        path=path, jobs=registry, services=service_registry, tables=tables, local=LocalDefaults(demo, chaos)
    )


def find_declarations_file(environ: Mapping[str, str] | None = None) -> Path:
    """The declaration file: `MICROPROCESS_DECLARATIONS`, else `microprocess.toml` in the working
    directory or one of its parents, else beside the folder that holds the `microprocess` package
    (the repository, or a Lambda's code root)."""
    env = os.environ if environ is None else environ
    package_root = Path(__file__).resolve().parents[2]
    named = env.get(DECLARATIONS_ENV, "")
    if named:
        candidate = Path(named)
        if candidate.is_absolute():
            return candidate
        for base in (Path.cwd(), package_root, Path(env.get("LAMBDA_TASK_ROOT", "") or package_root)):
            if (base / candidate).is_file():
                return base / candidate
        return Path.cwd() / candidate
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / DEFAULT_FILE).is_file():
            return folder / DEFAULT_FILE
    return package_root / DEFAULT_FILE


def load_declarations(path: Path | str | None = None) -> Declarations:
    """Read and validate a declaration file (default: `find_declarations_file()`)."""
    file = Path(path) if path is not None else find_declarations_file()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobDeclarationError(
            f"{file}: no declaration file. Create it (see README, 'Your own job') or point {DECLARATIONS_ENV} at yours"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobDeclarationError(f"{file}: not valid TOML: {exc}") from None
    return parse_declarations(data, file)


@lru_cache(maxsize=1)
def get_declarations() -> Declarations:
    """The process-wide declarations (read once)."""
    return load_declarations()
