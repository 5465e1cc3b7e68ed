"""The deployed stacks' names and the outputs the tools read: declared once.

The CDK app names its stacks and creates these outputs (`infra/`); the local stack
runner and the CLI read them. A test checks the synthesized templates against this.
"""

from __future__ import annotations

from typing import Final

CLOUD_STACK: Final = "Microprocess-Cloud"
LOCAL_STACK: Final = "Microprocess-Local"

LOCAL_OUTPUTS: Final = (
    "TaskQueueUrl",
    "DeadLetterQueueUrl",
    "LedgerTable",
    "CompaniesTable",
    "ReportsBucket",
    "SplitterFunctionName",
    "ForwarderFunctionName",
    "DeadLetterFunctionName",
    "SweeperFunctionName",
    "SigningSecretArn",
    "ReduceQueueUrl",
    "ReduceForwarderFunctionName",
)
CLOUD_OUTPUTS: Final = (*LOCAL_OUTPUTS, "LiveServiceUrl", "QueueServiceUrl", "DashboardName", "AlarmTopicArn")
