"""microprocess: run background jobs too big for one process as millions of small pushed tasks.

The front door of the core: job declarations (`microprocess.declarations`), the task envelope
(`microprocess.pipeline.envelope`), the run ledger (`microprocess.ledger`), request signing
(`microprocess.service.signing`), and the splitter / forwarder / dead-letter / sweeper logic
that the thin Lambda handlers in `functions/` call.
"""

__version__ = "0.1.0"
