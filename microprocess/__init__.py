"""microprocess: run background jobs too big for one process as millions of small pushed tasks.

The front door of the core: job declarations (`microprocess.declarations`), the task envelope
(`microprocess.pipeline.envelope`), the run ledger (`microprocess.ledger`), request signing
(`microprocess.service.signing`), and the splitter / forwarder / dead-letter / sweeper logic
that the thin Lambda handlers in `functions/` call.
"""

__version__ = "0.1.0"

import os as _os

if _os.environ.get("MICROPROCESS_AWS_CALL_LOG"):  # the e2e suite's record of AWS calls (microprocess.local.calls)
    from microprocess.local.calls import install as _record_aws_calls

    _record_aws_calls()
