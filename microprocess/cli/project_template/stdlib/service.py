"""The counter service: one signed task endpoint, `POST /tasks/count-words`, on the standard
library's HTTP server (plus the microprocess service SDK, which checks each push's signature,
body and Idempotency-Key).

`microprocess local up` starts it (`local_command = "python service.py"` in microprocess.toml)
with `PORT` and `SIGNING_SECRET_ARN` in its environment; anywhere else set `SIGNING_SECRET`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import BaseModel, Field

from microprocess.service import MAX_BODY_BYTES, PermanentFailure, TaskRequest, Verifier, secret_from_environment
from microprocess.service.tasks import Answer, error_answer, parse_task, result_body

log = logging.getLogger("counter")
PATH = "/tasks/count-words"


class Text(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    text: str = Field(max_length=100_000)


def count_words(task: TaskRequest[Text]) -> dict[str, object]:
    """One item's result (retries of the same task give the same answer)."""
    words = task.item.text.split()
    if not words:
        raise PermanentFailure(f"text {task.item.id} is empty: nothing to count")
    return {"id": task.item.id, "words": len(words)}


def answer_push(verifier: Verifier, headers: object, raw: bytes, path: str) -> Answer:
    """Verify, parse and handle one push (the SDK's pipeline); every refusal is its answer."""
    try:
        key = verifier.check(headers, raw, "POST", path)
        task = parse_task(raw, TaskRequest[Text], kind="task", key=key)
        return Answer(200, result_body(count_words(task)))
    except Exception as exc:
        known = error_answer(exc)
        if known is None:
            log.exception("count-words failed")
            return Answer(500, {"error": "internal_error", "message": type(exc).__name__})
        return known


def make_handler(verifier: Verifier) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send(self, answer: Answer) -> None:
            body = answer.encoded()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self.send(Answer(200, {"status": "ok"}))
            else:
                self.send(Answer(404, {"error": "not_found", "message": f"no endpoint {self.path}"}))

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length", "")
            if self.path != PATH or not length.isascii() or not length.isdigit():
                self.close_connection = True  # the body is not read
                status = (404, "not_found") if self.path != PATH else (411, "length_required")
                self.send(Answer(status[0], {"error": status[1], "message": f"POST {PATH} with a Content-Length"}))
                return
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True  # refused before it is read
                self.send(Answer(413, {"error": "too_large", "message": f"bodies are at most {MAX_BODY_BYTES} bytes"}))
                return
            self.send(answer_push(verifier, dict(self.headers.items()), self.rfile.read(int(length)), self.path))

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    return Handler


def serve(port: int, secrets: Callable[[], str | Sequence[str]] | None = None) -> ThreadingHTTPServer:
    """The server on 127.0.0.1:`port` (0: any free port), not yet serving."""
    return ThreadingHTTPServer(("127.0.0.1", port), make_handler(Verifier(secrets or secret_from_environment())))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    serve(int(os.environ.get("PORT", "8080"))).serve_forever()
