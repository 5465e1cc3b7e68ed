"""The report email's sender address, as the infra code declares it.

One source of truth: the stack's own output when it has one, else the CDK app's
context default (`cdk.json`), else `reports@example.com`.
"""

from __future__ import annotations

import json
from pathlib import Path

from microprocess.local.services import DEFAULT_SES_SENDER

#: Names the infra code may use for the sender, in the outputs or the CDK context.
_OUTPUT_KEYS = ("SesSender", "ReportSender", "SenderEmail")
_CONTEXT_KEYS = ("ses_sender", "report_sender", "sender_email")


def ses_sender(root: Path, outputs: dict[str, str] | None = None) -> str:
    for key in _OUTPUT_KEYS:
        if outputs and outputs.get(key):
            return outputs[key]
    try:
        context = json.loads((root / "cdk.json").read_text()).get("context", {})
    except (OSError, json.JSONDecodeError):
        context = {}
    for key in _CONTEXT_KEYS:
        if isinstance(context.get(key), str) and "@" in context[key]:
            return str(context[key])
    return DEFAULT_SES_SENDER
