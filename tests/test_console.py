"""The operator console (`microprocess console`) against moto: its token and session, CSRF,
the pages' views, the server-sent events, and steer actions that go through the CLI's code."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.cli import steer
from microprocess.console import ConsoleHostError, check_listen, is_loopback
from microprocess.console.app import ConsoleSettings, create_app
from microprocess.console.auth import COOKIE, CSRF_HEADER, ConsoleAuth
from microprocess.console.live import RunSampler, sse_event
from microprocess.console.schedule import describe, next_fire
from microprocess.console.views import ConsoleData
from microprocess.control.adaptive import Signals
from microprocess.ledger import Ledger, RunStatus, TaskState
from tests.declared import CREDIT_SCORES
from tests.test_control_cli import deployment, five_tasks, outcome  # noqa: F401 (a fixture)

JOB = CREDIT_SCORES
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def console(deployment: Any) -> tuple[TestClient, ConsoleAuth, cli.Deployment]:  # noqa: F811
    dep, _ = deployment
    auth = ConsoleAuth()
    app = create_app(ConsoleData(dep), auth, sampler=RunSampler(), settings=ConsoleSettings(interval_s=0.05))
    return TestClient(app), auth, dep


def logged_in(console: tuple[TestClient, ConsoleAuth, Any]) -> tuple[TestClient, str]:
    """A client with a session cookie, and the session's CSRF token (from the page's meta tag)."""
    client, auth, _ = console
    resp = client.get(f"/login?token={auth.login_token}", follow_redirects=False)
    assert resp.status_code == 303
    page = client.get("/jobs")
    assert page.status_code == 200
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert csrf
    return client, csrf.group(1)


# ----------------------------------------------------------------------------- auth


def test_every_request_without_the_token_or_its_cookie_is_refused(console: Any, ledger: Ledger) -> None:
    client, _, _ = console
    five_tasks(ledger)
    for path in ("/", "/jobs", "/runs/r1", "/runs/r1/events", "/runs/r1/find?q=C0000002", "/static/console.js"):
        assert client.get(path).status_code == 401, path
    assert client.post("/runs/r1/steer/pause").status_code == 401
    # a made-up session cookie: 403
    client.cookies.set(COOKIE, "not-a-session")
    assert client.get("/jobs").status_code == 403
    client.cookies.clear()
    # a wrong token: 403, and no cookie
    resp = client.get("/login?token=wrong", follow_redirects=False)
    assert resp.status_code == 403 and COOKIE not in resp.cookies
    assert ledger.require_run("r1").status is RunStatus.RUNNING


def test_the_token_is_exchanged_once_for_an_httponly_samesite_strict_cookie(console: Any) -> None:
    client, auth, _ = console
    resp = client.get(f"/login?token={auth.login_token}", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/jobs").status_code == 200
    # the same link again (another browser): refused
    other = TestClient(client.app)
    assert other.get(f"/login?token={auth.login_token}", follow_redirects=False).status_code == 403
    assert other.get("/jobs").status_code == 401


def test_pages_forbid_inline_and_foreign_scripts(console: Any) -> None:
    client, _ = logged_in(console)
    resp = client.get("/jobs")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in resp.text and " style=" not in resp.text


def test_the_console_listens_beyond_loopback_only_with_its_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.4") and not is_loopback("example.org")
    check_listen("127.0.0.1", token=False)
    check_listen("0.0.0.0", token=True)
    with pytest.raises(ConsoleHostError, match="loopback"):
        check_listen("0.0.0.0", token=False)


def test_the_cli_refuses_no_token_beyond_loopback(deployment: Any) -> None:  # noqa: F811
    result = CliRunner().invoke(cli.app, ["console", "--host", "0.0.0.0", "--no-token"])
    assert result.exit_code == cli.EXIT_USAGE
    assert "not a loopback address" in result.stderr


# ----------------------------------------------------------------------------- CSRF and steer


def test_a_steer_post_without_the_csrf_header_is_refused_and_does_nothing(console: Any, ledger: Ledger) -> None:
    five_tasks(ledger)
    client, csrf = logged_in(console)
    assert client.post("/runs/r1/steer/pause").status_code == 403
    assert client.post("/runs/r1/steer/pause", headers={CSRF_HEADER: "guess"}).status_code == 403
    assert ledger.require_run("r1").status is RunStatus.RUNNING
    # the confirmation step names the action and the CLI command it equals
    confirm = client.get("/runs/r1/steer/pause")
    assert (
        confirm.status_code == 200
        and "microprocess pause r1" in confirm.text
        and 'hx-post="/runs/r1/steer/pause"' in confirm.text
    )
    # with it: paused, as `microprocess pause` does
    resp = client.post("/runs/r1/steer/pause", headers={CSRF_HEADER: csrf})
    assert resp.status_code == 200 and "paused run r1" in resp.text
    assert ledger.require_run("r1").status is RunStatus.PAUSED
    # a second pause says why not, as the CLI does
    again = client.post("/runs/r1/steer/pause", headers={CSRF_HEADER: csrf})
    assert 'class="result error"' in again.text


def test_retry_failed_and_not_attempted_starts_the_run_the_cli_starts(
    console: Any,
    ledger: Ledger,
    deployment: Any,  # noqa: F811
) -> None:
    # GIVEN a cancelled run of 5 tasks: 2 succeeded, 1 failed, 2 never attempted
    five_tasks(ledger)
    assert ledger.cancel("r1")
    _, lam = deployment
    client, csrf = logged_in(console)
    # WHEN the operator confirms "Retry failed and not attempted"
    confirm = client.get("/runs/r1/steer/retry-all")
    assert "microprocess retry-failed r1 --include-not-attempted" in confirm.text
    resp = client.post("/runs/r1/steer/retry-all", headers={CSRF_HEADER: csrf})
    # THEN the splitter got the start event `retry-failed --include-not-attempted` sends
    assert "over the 1 failed tasks and the 2 tasks not attempted of r1" in resp.text
    CliRunner().invoke(cli.app, ["retry-failed", "r1", "--include-not-attempted"], catch_exceptions=False)
    console_event, cli_event = lam.invocations
    assert console_event["include_not_attempted"] is True and console_event["retry_of"] == "r1"
    assert {k: v for k, v in console_event.items() if k != "run_id"} == {
        k: v for k, v in cli_event.items() if k != "run_id"
    }
    # AND the plain "Retry failed" still retries the failures only
    client.post("/runs/r1/steer/retry", headers={CSRF_HEADER: csrf})
    assert "include_not_attempted" not in lam.invocations[-1]


def test_console_and_cli_steer_through_the_same_functions(
    console: Any, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    five_tasks(ledger)
    client, csrf = logged_in(console)
    calls: list[tuple[str, str]] = []
    for name in ("pause_run", "resume_run", "stop_run_now", "cancel_run", "retry_failed_run"):
        original = getattr(steer, name)

        def recorded(dep: Any, run_id: str, _name: str = name, _original: Any = original) -> Any:
            calls.append((_name, run_id))
            return _original(dep, run_id)

        monkeypatch.setattr(steer, name, recorded)
    # the CLI module holds its own reference to the names it imported: patch those too
    from microprocess.cli import control

    for name in ("pause_run", "resume_run", "stop_run_now"):
        monkeypatch.setattr(control, name, getattr(steer, name))
    client.post("/runs/r1/steer/pause", headers={CSRF_HEADER: csrf})
    CliRunner().invoke(cli.app, ["pause", "r1"])
    client.post("/runs/r1/steer/cancel", headers={CSRF_HEADER: csrf})
    CliRunner().invoke(cli.app, ["cancel", "r1"])
    assert calls == [("pause_run", "r1"), ("pause_run", "r1"), ("cancel_run", "r1"), ("cancel_run", "r1")]
    assert ledger.require_run("r1").status is RunStatus.CANCELLED


def test_stop_early_from_the_console_claims_the_reduce_and_enqueues_its_parts(console: Any, ledger: Ledger) -> None:
    five_tasks(ledger)
    client, csrf = logged_in(console)
    _, _, dep = console
    resp = client.post("/runs/r1/steer/stop", headers={CSRF_HEADER: csrf})
    assert "stopped run r1; 2 tasks not attempted" in resp.text
    run = ledger.require_run("r1")
    assert run.status is RunStatus.REDUCING and "stopped early by the operator" in (run.error or "")
    sqs = dep.client("sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=dep.outputs["ReduceQueueUrl"], AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )
    # (delayed until the run's batches in flight have settled: control.stop.settle_s)
    assert int(attrs["Attributes"]["ApproximateNumberOfMessagesDelayed"]) == run.shard_count


def test_scale_from_the_console_sets_the_event_source_cap(console: Any) -> None:
    client, csrf = logged_in(console)
    _, _, dep = console
    assert "Scale credit-scores?" in client.get("/jobs/credit-scores/scale").text
    too_big = client.post(
        "/jobs/credit-scores/scale",
        content=f"concurrency={JOB.max_concurrency + 1}",
        headers={CSRF_HEADER: csrf, "content-type": "application/x-www-form-urlencoded"},
    )
    assert 'class="result error"' in too_big.text
    resp = client.post(
        "/jobs/credit-scores/scale",
        content="concurrency=5",
        headers={CSRF_HEADER: csrf, "content-type": "application/x-www-form-urlencoded"},
    )
    assert "concurrency 10 → 5" in resp.text
    from microprocess.cli.control import scaler

    assert scaler(dep).cap(JOB).concurrency == 5


# ----------------------------------------------------------------------------- views


def test_runs_jobs_run_task_and_find_show_the_ledger(console: Any, ledger: Ledger) -> None:
    five_tasks(ledger)
    client, _ = logged_in(console)
    runs = client.get("/")
    assert 'href="/runs/r1"' in runs.text and "RUNNING" in runs.text
    assert "r1" not in client.get("/?status=SUCCEEDED").text
    assert client.get("/?status=NOPE").status_code == 400
    jobs = client.get("/jobs").text
    assert "credit-scores" in jobs and "declared max" in jobs and "next run" in jobs
    page = client.get("/runs/r1").text
    # done / failed / to do, the failure group with its example opening the task's history
    assert 'id="n-succeeded">2<' in page and 'id="n-failed">1<' in page and 'id="n-pending">2<' in page
    assert "HTTP 400: unknown company" in page
    assert 'href="/runs/r1/tasks/0-000000002"' in page
    task = client.get("/runs/r1/tasks/0-000000002").text
    assert "HTTP 400: unknown company" in task and "FAILED" in task
    found = client.get("/runs/r1/find?q=C0000003").text
    assert "0-000000003" in found and "PENDING" in found
    assert "0-000000001" in client.get("/runs/r1/find?q=0-000000001").text
    assert 'id="find-none"' in client.get("/runs/r1/find?q=C9999999").text
    assert client.get("/runs/nope").status_code == 404
    assert client.get("/runs/r1/tasks/0-000000099").status_code == 404


def test_a_run_page_reads_a_bounded_number_of_items_whatever_the_run_size(
    console: Any, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a run of 10 tasks and one whose counters say 19 million
    five_tasks(ledger)
    ledger.create_run("big", JOB)
    ledger.account_page("big", segment="0", cursor_from="", cursor_to="<done>", count=19_000_000)
    ledger.finish_split("big")
    client, _ = logged_in(console)
    _, _, dep = console
    ddb = dep.client("dynamodb")
    calls: list[str] = []
    for op in ("query", "scan", "get_item", "batch_get_item"):
        original = getattr(ddb, op)

        def counted(*args: Any, _op: str = op, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_op)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ddb, op, counted)
    # WHEN each run page is read THEN the same calls, never a Scan
    client.get("/runs/r1")
    small = sorted(calls)
    calls.clear()
    client.get("/runs/big")
    assert sorted(calls) == small and "scan" not in calls


def test_a_finished_run_lists_its_report_files_and_serves_them(console: Any, ledger: Ledger) -> None:
    client, _ = logged_in(console)
    _, _, dep = console
    finished_run(ledger, dep)
    page = client.get("/runs/r1").text
    assert 'href="/runs/r1/report/report.csv"' in page and "parts/" not in page
    assert client.get("/runs/r1/report/report.csv").text == "task_id,state\n"
    assert client.get("/runs/r1/report/parts/0.csv").status_code == 404


def finished_run(ledger: Ledger, dep: Any) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="reports")
    s3.put_object(Bucket="reports", Key="reports/r1/report.csv", Body=b"task_id,state\n")
    s3.put_object(Bucket="reports", Key="reports/r1/parts/0.csv", Body=b"x\n")
    clients = dep.client

    def with_s3(service: str) -> Any:
        return s3 if service == "s3" else clients(service)

    dep.client = with_s3
    five_tasks(ledger)
    ledger.record_outcomes("r1", JOB.counter_count, [outcome(3, TaskState.SUCCEEDED), outcome(4, TaskState.SUCCEEDED)])
    assert ledger.require_run("r1").status is RunStatus.REDUCING
    ledger.finish_run("r1", tolerated_failure_pct=50, report_uri="s3://reports/reports/r1/")


# ----------------------------------------------------------------------------- live updates


def test_sse_events_are_well_formed() -> None:
    text = sse_event("progress", {"html": "<p>a\nb</p>", "n": 1}, event_id="7", retry_ms=3000)
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    lines = text.rstrip("\n").split("\n")
    assert lines[:3] == ["retry: 3000", "id: 7", "event: progress"]
    assert all(line.startswith("data: ") for line in lines[3:])
    assert json.loads("".join(line[6:] for line in lines[3:])) == {"html": "<p>a\nb</p>", "n": 1}


def test_the_event_stream_sends_the_panel_and_a_sample_and_ends_with_the_run(console: Any, ledger: Ledger) -> None:
    client, _ = logged_in(console)
    _, _, dep = console
    finished_run(ledger, dep)
    with client.stream("GET", "/runs/r1/events") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        body = "".join(resp.iter_text())
    events = [block for block in body.split("\n\n") if block.strip()]
    names = [re.search(r"^event: (\w+)$", e, re.M).group(1) for e in events]  # type: ignore[union-attr]
    assert names == ["hello", "progress", "end"]
    progress = json.loads(re.search(r"^data: (.*)$", events[1], re.M).group(1))  # type: ignore[union-attr]
    assert progress["status"] == "SUCCEEDED" and 'id="n-succeeded">4<' in progress["html"]
    assert progress["sample"]["done"] == 5 and progress["sample"]["failed"] == 1


def test_the_sampler_computes_rates_and_throttling_per_second() -> None:
    now = [1000.0]
    signals = Signals(pushes=200, throttled=50, interval_s=10.0)
    sampler = RunSampler(lambda job: signals, clock=lambda: now[0])
    first = sampler.add("r", "j", done=100, failed=0, concurrency=8)
    now[0] += 2
    second = sampler.add("r", "j", done=300, failed=4, concurrency=6)
    assert first.rate is None and second.rate == 100.0
    assert second.throttled == 5.0 and second.pushes == 20.0 and second.concurrency == 6
    assert [s.done for s in sampler.history("r")] == [100, 300]


# ----------------------------------------------------------------------------- schedule, assets


def test_next_fire_reads_eventbridge_cron_expressions() -> None:
    now = datetime(2026, 12, 7, 1, 30, tzinfo=UTC)  # a Monday
    assert next_fire("cron(0 2 * * ? *)", now) == datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert next_fire("cron(0 2 1 * ? *)", now) == datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
    assert next_fire("cron(*/15 * * * ? *)", now) == datetime(2026, 12, 7, 1, 45, tzinfo=UTC)
    assert next_fire("cron(0 9 ? * MON-FRI *)", now) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert next_fire("cron(0 9 ? * 1 *)", now) == datetime(2026, 12, 13, 9, 0, tzinfo=UTC)  # 1 = Sunday
    assert next_fire("cron(0 9 L * ? *)", now) is None
    assert next_fire("rate(5 minutes)", now) is None
    assert describe("rate(1 hour)") == "every 1 hour" and describe("rate(5 minutes)") == "every 5 minutes"


def test_the_vendored_browser_libraries_are_the_pinned_versions_with_their_licences() -> None:
    pins = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    vendor = ROOT / "microprocess" / "console" / "static" / "vendor"
    assert f'version:"{pins["htmx.org"]}"' in (vendor / "htmx.min.js").read_text()
    assert f"(v{pins['uplot']})" in (vendor / "uPlot.iife.min.js").read_text()[:200]
    assert "MIT" in (vendor / "uPlot.LICENSE").read_text()
    assert "Zero-Clause BSD" in (vendor / "htmx.LICENSE").read_text()
