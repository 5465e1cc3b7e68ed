"""The console's web app: thin routes over `views` (reads), `cli.steer` (actions) and `live` (SSE).

`create_app` assembles it; every request passes `auth` first (see `auth.py`), and every page
carries a Content-Security-Policy that allows only the console's own scripts and styles.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from microprocess.cli import steer
from microprocess.console.auth import COOKIE, CSRF_HEADER, ConsoleAuth, Session
from microprocess.console.live import RunSampler, sse_event
from microprocess.console.views import ConsoleData, RunLive
from microprocess.ledger import RunNotFound, RunStatus

HERE = Path(__file__).parent
#: What a page shows for a figure it does not have.
DASH = "\N{EN DASH}"
#: Allows only the console's own files: no inline script or style, no other origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
STATUSES = [str(s) for s in RunStatus]
#: The steer actions on a run, with the confirmation's wording.
RUN_ACTIONS = {
    "pause": "Pause: no pushes within one visibility timeout, the split stops; attempts and messages are kept.",
    "resume": "Resume: re-send the kept messages with their attempts; restart the split if it was splitting.",
    "stop": "Stop early: no more pushes; the report is built now from what was done, the rest not attempted.",
    "cancel": "Cancel: no more service calls; the remaining messages are dropped and no report is built.",
    "retry": "Retry failed: start a new run over the failed tasks of this run.",
    "retry-all": "Retry failed and not attempted: start a new run over the failed tasks of this run and the "
    "tasks it never attempted (it was stopped early or cancelled).",
}
#: The CLI command each steer action does (the confirmation names it).
RUN_ACTION_COMMANDS = {
    "retry": "retry-failed {run}",
    "retry-all": "retry-failed {run} --include-not-attempted",
}
#: The buttons' words where the action's name is not enough.
RUN_ACTION_LABELS = {"retry": "Retry failed", "retry-all": "Retry failed and not attempted", "stop": "Stop early"}


@dataclass
class ConsoleSettings:
    """How the app behaves: seconds between live updates."""

    interval_s: float = 1.0


def _fmt_int(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _fmt_time(value: Any) -> str:
    if value is None:
        return DASH
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("T", " ").split(".")[0].removesuffix("+00:00").removesuffix("Z") + " UTC"


def create_app(data: ConsoleData, auth: ConsoleAuth, *, sampler: RunSampler, settings: ConsoleSettings) -> FastAPI:
    app = FastAPI(title="microprocess console", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["n"] = _fmt_int
    env.filters["duration"] = _fmt_duration
    env.filters["when"] = _fmt_time
    env.globals["statuses"] = STATUSES
    env.globals["run_actions"] = RUN_ACTIONS
    env.globals["run_action_labels"] = RUN_ACTION_LABELS

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await _guarded(request, call_next)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _guarded(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path == "/login":
            return await call_next(request)
        session = auth.session(request.cookies.get(COOKIE))
        new_session = None
        if session is None:
            if auth.token_required:
                if request.cookies.get(COOKIE):
                    return _plain(403, "unknown session: open the link `microprocess console` printed")
                return _plain(401, "not logged in: open the link with the token that `microprocess console` printed")
            session = new_session = auth.open_session()
        if request.method not in ("GET", "HEAD") and not auth.csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return _plain(403, f"missing or wrong {CSRF_HEADER} header: reload the page and try again")
        request.state.session = session
        response = await call_next(request)
        if new_session is not None:
            _set_cookie(response, new_session)
        return response

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("csrf", request.state.session.csrf)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/login")
    def login(token: str | None = None) -> Response:
        session = auth.exchange(token)
        if session is None:
            return _plain(403, "this login link is wrong or was used already: restart `microprocess console`")
        response = RedirectResponse("/", status_code=303)
        _set_cookie(response, session)
        return response

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request, job: str | None = None, status: str | None = None) -> HTMLResponse:
        job, status = job or None, status or None
        if status is not None and status not in STATUSES:
            return _plain(400, f"unknown status {status!r}: one of {', '.join(STATUSES)}")  # type: ignore[return-value]
        rows = data.runs(job=job, status=status)
        jobs = [j.name for j in data.declared_jobs()]
        name = "_runs_table.html" if request.headers.get("HX-Request") else "runs.html"
        return page(request, name, rows=rows, jobs=jobs, job=job, status=status)

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request) -> HTMLResponse:
        return page(request, "jobs.html", jobs=data.jobs())

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        try:
            live = data.run(run_id)
        except RunNotFound:
            return page(request, "not_found.html", 404, what=f"run {run_id}")
        history = [s.as_dict() for s in sampler.history(run_id)]
        return page(request, "run.html", live=live, history=history)

    @app.get("/runs/{run_id}/events")
    async def run_events(request: Request, run_id: str) -> Response:
        try:
            await run_in_threadpool(data.dep.ledger().require_run, run_id)
        except RunNotFound:
            return _plain(404, f"unknown run {run_id}")
        panel = templates.get_template("_run_panel.html")

        async def stream() -> AsyncIterator[str]:
            n = 0
            yield sse_event("hello", {"run_id": run_id}, retry_ms=3000)
            while not await request.is_disconnected():
                live: RunLive = await run_in_threadpool(data.run, run_id)
                sample = await run_in_threadpool(
                    sampler.add,
                    run_id,
                    live.run.job,
                    done=live.row.done,
                    failed=live.row.failed,
                    concurrency=live.concurrency,
                )
                html = panel.render(live=live, csrf=request.state.session.csrf)
                n += 1
                payload = {"html": html, "sample": sample.as_dict(), "status": live.row.status}
                yield sse_event("progress", payload, event_id=str(n))
                if live.finished:
                    yield sse_event("end", {"status": live.row.status}, event_id=str(n + 1))
                    return
                await asyncio.sleep(settings.interval_s)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"}
        )

    @app.get("/runs/{run_id}/find", response_class=HTMLResponse)
    def find(request: Request, run_id: str, q: str = "") -> HTMLResponse:
        query = q.strip()
        found = data.find(run_id, query) if query else []
        return page(request, "_find.html", run_id=run_id, query=query, found=found)

    @app.get("/runs/{run_id}/tasks/{task_id}", response_class=HTMLResponse)
    def task_page(request: Request, run_id: str, task_id: str) -> HTMLResponse:
        try:
            detail = data.task(run_id, task_id)
        except RunNotFound:
            detail = None
        if detail is None:
            return page(request, "not_found.html", 404, what=f"task {task_id} of run {run_id}")
        return page(request, "task.html", run_id=run_id, task=detail)

    @app.get("/runs/{run_id}/report/{name:path}")
    def report_file(run_id: str, name: str) -> Response:
        try:
            obj = data.report_object(run_id, name)
        except (KeyError, RunNotFound):
            return _plain(404, f"run {run_id} has no report file {name!r}")
        media = "text/html; charset=utf-8" if name.endswith(".html") else "application/octet-stream"
        if name.endswith((".csv", ".json", ".jsonl", ".txt")):
            media = "text/plain; charset=utf-8"
        return StreamingResponse(
            obj["Body"].iter_chunks(chunk_size=64 * 1024),
            media_type=media,
            headers={"Content-Disposition": f'inline; filename="{Path(name).name}"'},
        )

    @app.get("/runs/{run_id}/steer/{action}", response_class=HTMLResponse)
    def confirm_run_action(request: Request, run_id: str, action: str) -> HTMLResponse:
        if action not in RUN_ACTIONS:
            return _plain(404, f"no action {action!r}: one of {', '.join(RUN_ACTIONS)}")  # type: ignore[return-value]
        target = f"/runs/{run_id}/steer/{action}"
        command = RUN_ACTION_COMMANDS.get(action, "{action} {run}").format(action=action, run=run_id)
        return page(
            request,
            "_confirm.html",
            action=action,
            what=RUN_ACTIONS[action],
            target=target,
            run_id=run_id,
            command=command,
            label=RUN_ACTION_LABELS.get(action, action.capitalize()),
        )

    @app.post("/runs/{run_id}/steer/{action}", response_class=HTMLResponse)
    def run_action(request: Request, run_id: str, action: str) -> HTMLResponse:
        if action not in RUN_ACTIONS:
            return _plain(404, f"no action {action!r}: one of {', '.join(RUN_ACTIONS)}")  # type: ignore[return-value]
        try:
            message = _do(action, run_id)
            ok = True
        except (steer.SteerError, RunNotFound) as exc:
            message, ok = str(exc), False
        return page(request, "_steer_result.html", ok=ok, message=message)

    def _do(action: str, run_id: str) -> str:
        dep = data.dep
        if action == "pause":
            was = steer.pause_run(dep, run_id)
            return f"paused run {run_id} (was {was}); its messages are kept until it is resumed"
        if action == "resume":
            result = steer.resume_run(dep, run_id)
            return f"resumed run {run_id} ({result.status}); {result.requeued} kept messages re-sent"
        if action == "stop":
            left = steer.stop_run_now(dep, run_id)
            return f"stopped run {run_id}; {left} tasks not attempted; its report is being built"
        if action == "cancel":
            steer.cancel_run(dep, run_id)
            return f"cancelled run {run_id}; its remaining messages are acknowledged without calls"
        everything = action == "retry-all"
        started = steer.retry_failed_run(dep, run_id, include_not_attempted=everything)
        return steer.retry_message(started, include_not_attempted=everything)

    @app.get("/jobs/{job}/scale", response_class=HTMLResponse)
    def confirm_scale(request: Request, job: str, concurrency: int | None = None) -> HTMLResponse:
        try:
            declared = data.job(job)
        except Exception:
            return page(request, "not_found.html", 404, what=f"job {job}")
        return page(request, "_confirm_scale.html", job=declared, concurrency=concurrency)

    @app.post("/jobs/{job}/scale", response_class=HTMLResponse)
    async def scale(request: Request, job: str) -> HTMLResponse:
        form = parse_qs((await request.body()).decode(errors="replace"))
        raw = (form.get("concurrency") or [""])[0].strip()
        if not raw.isdigit():
            return page(request, "_steer_result.html", ok=False, message=f"concurrency {raw!r} is not a whole number")
        try:
            before, after = await run_in_threadpool(steer.scale_job, data.dep, job, int(raw))
            message = (
                f"{job}: concurrency {before.concurrency} → {after.concurrency} (declared max {after.declared}); "
                "new batches follow within about a minute"
            )
            ok = True
        except steer.SteerError as exc:
            message, ok = str(exc), False
        return page(request, "_steer_result.html", ok=ok, message=message)

    return app


def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain; charset=utf-8")


def _set_cookie(response: Response, session: Session) -> None:
    response.set_cookie(COOKIE, session.sid, httponly=True, samesite="strict", path="/")
