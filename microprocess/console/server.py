"""Runs the console app with uvicorn: in the foreground (`microprocess console`) or in a thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from microprocess.console.app import ConsoleSettings, create_app
from microprocess.console.auth import ConsoleAuth, check_listen
from microprocess.console.live import RunSampler
from microprocess.console.views import ConsoleData

if TYPE_CHECKING:
    from microprocess.cli.deployment import Deployment


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ConsoleServer:
    """The console over one deployment.

    Args:
        dep: the deployment the CLI targets (local stack or AWS).
        host: the address to listen on (loopback unless a token is used: `check_listen`).
        port: the port (0: a free one).
        token: require the one-time login token (False: `--no-token`, loopback only).
        interval_s: seconds between a run page's live updates.
        signals: reads a job's service signals (pushes, 429/503s) for the charts; None: none.
    """

    def __init__(
        self,
        dep: Deployment,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: bool = True,
        interval_s: float = 1.0,
        signals: Any = None,
    ) -> None:
        check_listen(host, token=token)
        self.host = host
        self.port = port or free_port(host)
        self.auth = ConsoleAuth(token_required=token)
        self.app = create_app(
            ConsoleData(dep), self.auth, sampler=RunSampler(signals), settings=ConsoleSettings(interval_s=interval_s)
        )
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=host, port=self.port, log_level="warning", access_log=False)
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def login_url(self) -> str:
        """The URL to open: with the one-time token, or the plain URL without a token."""
        return f"{self.url}/login?token={self.auth.login_token}" if self.auth.token_required else f"{self.url}/"

    def run(self) -> None:
        """Serve in the foreground until Ctrl-C."""
        self._server.run()

    def start(self, timeout_s: float = 15.0) -> ConsoleServer:
        """Serve in a background thread; returns once it listens."""
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the console did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
