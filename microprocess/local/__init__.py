"""The embedded local stack: ministack + the CDK app's local stage + the declared services' processes.

Front door:

* `LocalStack(ws).up(UpOptions(...))` starts everything and writes `local.json`;
  `.down()` stops what it started.
* `stop_recorded(ws)` stops the stack `local.json` describes (`microprocess local down`).
* `read_live_state(path)` gives the CLI the endpoint and the stack outputs.
"""

from microprocess.local.emulator import captured_emails, function_log_messages
from microprocess.local.stack import (
    LocalStack,
    LocalStackError,
    StackAlreadyRunning,
    UpOptions,
    aws_client,
    stop_recorded,
)
from microprocess.local.state import LocalState, NoLocalStack, read_live_state, read_state
from microprocess.local.workspace import Workspace

__all__ = [
    "LocalStack",
    "LocalStackError",
    "LocalState",
    "NoLocalStack",
    "StackAlreadyRunning",
    "UpOptions",
    "Workspace",
    "aws_client",
    "captured_emails",
    "function_log_messages",
    "read_live_state",
    "read_state",
    "stop_recorded",
]
