"""The operator console: see and steer runs in a browser (`microprocess console`).

* `views`: what the pages show, read from the deployment without scanning the ledger.
* `live`: server-sent events and the chart samples of a watched run.
* `auth`: the one-time login token, the session cookie, the CSRF check, loopback by default.
* `schedule`: when a job's EventBridge schedule fires next.
* `app`: the FastAPI routes (thin) and their templates; steer actions call `cli.steer`, the
  same functions as the CLI commands.
* `server`: runs the app with uvicorn (in the foreground, or in a thread for tests).
"""

from microprocess.console.auth import ConsoleAuth, ConsoleHostError, check_listen, is_loopback
from microprocess.console.server import ConsoleServer

__all__ = ["ConsoleAuth", "ConsoleHostError", "ConsoleServer", "check_listen", "is_loopback"]
