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
COMPANIES_TABLE: Final = "COMPANIES_TABLE"
TASK_QUEUE_URL: Final = "TASK_QUEUE_URL"
REDUCE_QUEUE_URL: Final = "REDUCE_QUEUE_URL"
DEAD_LETTER_QUEUE_URL: Final = "DEAD_LETTER_QUEUE_URL"
REPORTS_BUCKET: Final = "REPORTS_BUCKET"
QUEUE_SERVICE_URL: Final = "QUEUE_SERVICE_URL"
SIGNING_SECRET_ARN: Final = "SIGNING_SECRET_ARN"
SPLITTER_FUNCTION_NAME: Final = "SPLITTER_FUNCTION_NAME"
POWERTOOLS_SERVICE_NAME: Final = "POWERTOOLS_SERVICE_NAME"
POWERTOOLS_METRICS_NAMESPACE: Final = "POWERTOOLS_METRICS_NAMESPACE"
POWERTOOLS_TRACE_DISABLED: Final = "POWERTOOLS_TRACE_DISABLED"
LOG_LEVEL: Final = "LOG_LEVEL"

#: Variables read by Powertools itself rather than by `microprocess.pipeline.settings.RuntimeSettings`.
POWERTOOLS_VARIABLES: Final = frozenset(
    {POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_TRACE_DISABLED, LOG_LEVEL}
)

# ---------------------------------------------------------------- service environment

SERVICE_ROLE: Final = "SERVICE_ROLE"
SES_SENDER: Final = "SES_SENDER"
SCORE_WORK_MS: Final = "SCORE_WORK_MS"

# ---------------------------------------------------------------- metrics (Powertools EMF)

METRIC_NAMESPACE: Final = "Microprocess"
#: Every function publishes with this Powertools service name. Powertools adds it as a
#: `service` dimension next to `job`, so the dashboard and alarms name both dimensions.
POWERTOOLS_SERVICE: Final = "microprocess"
JOB_DIMENSION: Final = "job"
SERVICE_DIMENSION: Final = "service"
TASKS_SUCCEEDED: Final = "TasksSucceeded"
TASKS_FAILED: Final = "TasksFailed"
RUNS_SUCCEEDED: Final = "RunsSucceeded"
RUNS_FAILED: Final = "RunsFailed"
STUCK_RUNS: Final = "StuckRuns"
JOB_METRICS: Final = (TASKS_SUCCEEDED, TASKS_FAILED, RUNS_SUCCEEDED, RUNS_FAILED, STUCK_RUNS)

# ---------------------------------------------------------------- the scores microservice

#: The port the microservice image listens on (microservice/Dockerfile: EXPOSE and uvicorn --port).
SERVICE_PORT: Final = 8080
HEALTH_CHECK_PATH: Final = "/healthz"
LIVE_HOST_PREFIX: Final = "scores-live"
QUEUE_HOST_PREFIX: Final = "scores-queue"

# ---------------------------------------------------------------- stack outputs (the CLI reads them)

# Declared in the core package, which the CLI and the local stack read them from.
