"""Who may use the console: a one-time link token, exchanged for a session cookie, and CSRF.

* `microprocess console` prints `http://127.0.0.1:PORT/login?token=...`. The token is good for
  one exchange: `GET /login?token=` sets a session cookie (HttpOnly, SameSite=Strict, path /)
  and redirects to the console; the same link again is refused (403).
* Every other request needs the session cookie: none gives 401, an unknown one 403.
* Every POST (the steer actions) also needs the session's CSRF token in the `X-CSRF-Token`
  header (htmx sends it, see `static/console.js`): without it, 403. A cross-site form cannot
  set a header, and the SameSite=Strict cookie is not sent with it anyway.
* With `token=False` (`--no-token`, loopback only) there is no login: every request passes and
  the CSRF check still applies to POSTs (a browser can be tricked into a cross-site POST).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field

#: The session cookie's name.
COOKIE = "mp_console"
#: The header that carries the CSRF token on POSTs.
CSRF_HEADER = "X-CSRF-Token"


class ConsoleHostError(ValueError):
    """A listen address the console refuses; the message says what to do."""


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, *, token: bool) -> None:
    """Refuse a non-loopback `host` without a token: anyone who reaches it could steer runs."""
    if not token and not is_loopback(host):
        raise ConsoleHostError(
            f"--host {host} is not a loopback address: the console listens beyond this machine only with its "
            "login token (drop --no-token), or keep the default --host 127.0.0.1"
        )


@dataclass
class Session:
    """A browser's session: its id (the cookie) and the CSRF token of its forms."""

    sid: str
    csrf: str


@dataclass
class ConsoleAuth:
    """The console's one-time login token and its sessions (in memory: a restart logs out)."""

    token_required: bool = True
    login_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _sessions: dict[str, Session] = field(default_factory=dict)
    _used: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def exchange(self, token: str | None) -> Session | None:
        """A new session for the login token, once; None for a wrong or used token."""
        with self._lock:
            if self._used or not token or not hmac.compare_digest(token, self.login_token):
                return None
            self._used = True
            return self._new_session()

    def _new_session(self) -> Session:
        session = Session(sid=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(24))
        self._sessions[session.sid] = session
        return session

    def open_session(self) -> Session:
        """A session without a login (`--no-token` only)."""
        if self.token_required:
            raise PermissionError("this console needs its login token")
        with self._lock:
            return self._new_session()

    def session(self, sid: str | None) -> Session | None:
        """The session of a cookie value, or None."""
        if not sid:
            return None
        with self._lock:
            found = self._sessions.get(sid)
        return found if found is not None and hmac.compare_digest(found.sid, sid) else None

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf, sent or "")
