"""The deployed stacks' names and the outputs the tools read: declared once.

The CDK app names its stacks and creates these outputs (`infra/`); the local stack
runner and the CLI read them. A test checks the synthesized templates against this.
"""

from __future__ import annotations

from typing import Final

CLOUD_STACK: Final = "Microprocess-Cloud"
LOCAL_STACK: Final = "Microprocess-Local"

LOCAL_OUTPUTS: Final = (
    "JobQueueUrls",
    "ReduceQueueUrl",
    "DeadLetterQueueUrl",
    "LedgerTable",
    "ReportsBucket",
    "SourceTables",
    "ServiceSecretArns",
    "SplitterFunctionName",
    "ForwarderFunctionName",
    "ReduceForwarderFunctionName",
    "DeadLetterFunctionName",
    "SweeperFunctionName",
)
CLOUD_OUTPUTS: Final = (*LOCAL_OUTPUTS, "ServiceUrls", "DashboardName", "AlarmTopicArn")

#: Key prefix, in the reports bucket, of the manifests `microprocess run --items FILE` uploads
#: (the splitter may read it; the infra grants that).
MANIFESTS_PREFIX: Final = "manifests/"
