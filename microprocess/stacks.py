"""The deployed stacks' names and the outputs the tools read: declared once.

The CDK app names its stacks and creates these outputs (`infra/`); the local stack
runner and the CLI read them. A test checks the synthesized templates against this.

JSON outputs: `JobQueueUrls` `{"<job>": "<task queue url>"}`, `SourceTables`
`{"<table role>": "<table name>"}`, `ServiceSecretArns` `{"<service>": "<signing secret arn>"}`,
`ApiKeyArns` `{"<bundled service>": "<its live API key secret arn>"}` and (cloud) `ServiceUrls`
`{"<service>": "<queue endpoint base url>"}`.
"""

from __future__ import annotations

from typing import Final

CLOUD_STACK: Final = "Microprocess-Cloud"
LOCAL_STACK: Final = "Microprocess-Local"

#: The cloud stage's Lambda architecture (`Architectures`; the Powertools layer's variant; the
#: price `microprocess plan` and `make bench` use). The functions are pure Python: on arm64
#: (Graviton) a GB-second costs 20 % less than on x86_64. The local stage runs them on the
#: host's own CPU.
LAMBDA_ARCHITECTURE: Final = "arm64"

LOCAL_OUTPUTS: Final = (
    "JobQueueUrls",
    "ReduceQueueUrl",
    "DeadLetterQueueUrl",
    "LedgerTable",
    "ReportsBucket",
    "SourceTables",
    "ServiceSecretArns",
    "ApiKeyArns",
    "ServiceRoleArns",
    "SplitterFunctionName",
    "ForwarderFunctionName",
    "ReduceForwarderFunctionName",
    "DeadLetterFunctionName",
    "SweeperFunctionName",
)
CLOUD_OUTPUTS: Final = (*LOCAL_OUTPUTS, "ServiceUrls", "DashboardName", "AlarmTopicArn")
#: Outputs whose value is a JSON document.
JSON_OUTPUTS: Final = (
    "JobQueueUrls",
    "SourceTables",
    "ServiceSecretArns",
    "ApiKeyArns",
    "ServiceRoleArns",
    "ServiceUrls",
)

#: Key prefix, in the reports bucket, of the manifests `microprocess run --items FILE` uploads
#: (the splitter may read it; the infra grants that).
MANIFESTS_PREFIX: Final = "manifests/"
