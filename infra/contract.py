"""The names the deployed code and the tools rely on: environment variables, stack outputs,
metrics and the service's port and health path.

Declared once here; the constructs set them, the tests check them against the runtime's
`RuntimeSettings` (so a renamed setting cannot drift silently).
"""

from __future__ import annotations

from typing import Final

from microprocess.stacks import CLOUD_OUTPUTS, LOCAL_OUTPUTS  # noqa: F401 - re-exported

# ---------------------------------------------------------------- function environment

LEDGER_TABLE: Final = "LEDGER_TABLE"
REPORTS_BUCKET: Final = "REPORTS_BUCKET"
#: The declaration file, relative to the code asset's root (where the stack stages it).
MICROPROCESS_DECLARATIONS: Final = "MICROPROCESS_DECLARATIONS"
#: JSON `{"<job>": "<task queue url>"}`.
JOB_QUEUES: Final = "JOB_QUEUES"
REDUCE_QUEUE_URL: Final = "REDUCE_QUEUE_URL"
DEAD_LETTER_QUEUE_URL: Final = "DEAD_LETTER_QUEUE_URL"
#: JSON `{"<table role>": "<table name>"}`.
SOURCE_TABLES: Final = "SOURCE_TABLES"
#: JSON `{"<service>": {"url": "<queue endpoint base url>", "secret_arn": "<signing secret arn>"}}`.
SERVICE_ENDPOINTS: Final = "SERVICE_ENDPOINTS"
SPLITTER_FUNCTION_NAME: Final = "SPLITTER_FUNCTION_NAME"
POWERTOOLS_SERVICE_NAME: Final = "POWERTOOLS_SERVICE_NAME"
POWERTOOLS_METRICS_NAMESPACE: Final = "POWERTOOLS_METRICS_NAMESPACE"
POWERTOOLS_TRACE_DISABLED: Final = "POWERTOOLS_TRACE_DISABLED"
LOG_LEVEL: Final = "LOG_LEVEL"
#: The declaration file's name in the code asset (MICROPROCESS_DECLARATIONS's value).
DECLARATIONS_FILE: Final = "microprocess.toml"

#: Variables read by Powertools itself rather than by `microprocess.pipeline.settings.RuntimeSettings`.
POWERTOOLS_VARIABLES: Final = frozenset(
    {POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_TRACE_DISABLED, LOG_LEVEL}
)
#: Read by `microprocess.declarations.get_declarations()` rather than by `RuntimeSettings`.
DECLARATIONS_VARIABLES: Final = frozenset({MICROPROCESS_DECLARATIONS})

# ---------------------------------------------------------------- service environment

SERVICE_ROLE: Final = "SERVICE_ROLE"
#: The reducer's (built-in reduce) and a bundled queue service's report sender.
SES_SENDER: Final = "SES_SENDER"
STUCK_AFTER_S: Final = "STUCK_AFTER_S"
#: The sweeper's period, s (on the sweeper and the task forwarder, beside `STUCK_AFTER_S`).
SWEEP_PERIOD_S: Final = "SWEEP_PERIOD_S"
MAX_QUEUE_DEPTH_CAP: Final = "MAX_QUEUE_DEPTH_CAP"
SIGNING_SECRET_ARN: Final = "SIGNING_SECRET_ARN"
SCORE_WORK_MS: Final = "SCORE_WORK_MS"
#: A bundled service's live role: the Secrets Manager secret holding the key clients send in `X-Api-Key`.
API_KEY_SECRET_ARN: Final = "API_KEY_SECRET_ARN"
#: A bundled service's roles: `true` serves /docs, /redoc and /openapi.json (the cloud default is `false`).
SERVICE_DOCS: Final = "SERVICE_DOCS"

# ---------------------------------------------------------------- metrics (Powertools EMF)

METRIC_NAMESPACE: Final = "Microprocess"
#: Every function publishes with this Powertools service name. Powertools adds it as a
#: `service` dimension next to `job`, so the dashboard and alarms name both dimensions.
POWERTOOLS_SERVICE: Final = "microprocess"
JOB_DIMENSION: Final = "job"
SERVICE_DIMENSION: Final = "service"
TASKS_SUCCEEDED: Final = "TasksSucceeded"
TASKS_FAILED: Final = "TasksFailed"
#: Pushes that found the job's service unreachable (not counted as attempts during the grace).
TASKS_UNREACHABLE: Final = "TasksUnreachable"
RUNS_SUCCEEDED: Final = "RunsSucceeded"
RUNS_FAILED: Final = "RunsFailed"
STUCK_RUNS: Final = "StuckRuns"
#: A shared service's load, per job (docs/capacity.md): the cap its controller gave the job, the pushes
#: made, the pushes held while the service asked every job to wait.
SERVICE_SHARE_CAP: Final = "ServiceShareCap"
SERVICE_PUSHES: Final = "ServicePushes"
TASKS_SHED: Final = "TasksShed"
JOB_METRICS: Final = (TASKS_SUCCEEDED, TASKS_FAILED, TASKS_UNREACHABLE, RUNS_SUCCEEDED, RUNS_FAILED, STUCK_RUNS)

# ---------------------------------------------------------------- a bundled service

#: The port a bundled service's image listens on (e.g. microservice/Dockerfile: EXPOSE and uvicorn --port).
SERVICE_PORT: Final = 8080
HEALTH_CHECK_PATH: Final = "/healthz"
#: A bundled service's two roles; its host names are `<service>-<role>.<domain>`.
LIVE_ROLE: Final = "live"
QUEUE_ROLE: Final = "queue"

# ---------------------------------------------------------------- stack outputs (the CLI reads them)

# Declared in the core package, which the CLI and the local stack read them from.
