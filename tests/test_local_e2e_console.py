"""The operator console in a real browser on a real local stack.

Debian's headless Chromium (`make chromium`), driven by Playwright through `executable_path`
(no browser download), logs in with the console's one-time link and watches a run of the
job `invoice-reminders`, whose `reminders` service refuses invoices that are not overdue (a
permanent 4xx: the run's failures, one kind of error). The service's access log counts the
pushes, as in `test_local_e2e_control`. With `MICROPROCESS_CONSOLE_SHOTS=DIR` (`make
console-shots`), the run page's screenshots mid-run and at the end are written to DIR.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from microprocess.cli import commands as cli
from microprocess.cli.control import signals_of
from microprocess.console import ConsoleServer
from microprocess.console.live import SIGNALS_EVERY_S
from microprocess.control.pause import FORWARDER_CACHE_S
from microprocess.ledger import Ledger, RunStatus
from microprocess.local import LocalStack, UpOptions
from tests.declared import INVOICE_REMINDERS
from tests.local_e2e_support import cli_json, invoices_file, module_stack, stack_ledger, stack_state
from tests.test_local_e2e_control import pushes, steady_pushes, wait_for

pytestmark = pytest.mark.e2e

JOB = INVOICE_REMINDERS
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Long enough that the run is still going when it is paused (see test_local_e2e_control).
INVOICES = 6000
#: One invoice in 50 is not overdue (refused: 2 %, under the job's tolerated 5 %), from the first.
REFUSED = frozenset(range(0, INVOICES, 50))
RUN_TIMEOUT_S = 240.0
SHOTS_ENV = "MICROPROCESS_CONSOLE_SHOTS"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    options = UpOptions(items=10, seed=5, access_log=True, max_queue_depth=20_000)
    with module_stack("console", options, workdir_env=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def console(stack: LocalStack) -> Iterator[ConsoleServer]:
    dep = cli.connect(cli.Target.local)
    server = ConsoleServer(dep, interval_s=0.5, signals=signals_of(dep, SIGNALS_EVERY_S)).start()
    yield server
    server.stop()


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs it (as root)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.on(
            "console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        )
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        try:
            yield page, errors
        finally:
            browser.close()


def number(page: Any, selector: str) -> int:
    text = page.inner_text(selector).replace(",", "").rstrip("+").strip()
    return int(text) if text.isdigit() else 0


def attr(page: Any, selector: str, name: str) -> str:
    return str(page.get_attribute(selector, name) or "")


def shot(page: Any, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def confirm(page: Any, action: str) -> str:
    """Click a steer button, then its confirmation; the result's text."""
    page.click(f"#steer-{action}")
    page.click(f"#confirm-{action}")
    page.wait_for_selector("#steer-result")
    return str(page.inner_text("#steer-result"))


def test_a_run_watched_and_steered_in_the_browser(
    stack: LocalStack, console: ConsoleServer, browser_page: Any, tmp_path: Path
) -> None:
    page, errors = browser_page
    ledger: Ledger = stack_ledger(stack_state(stack))
    # GIVEN the console, logged in with its one-time link
    page.goto(console.login_url)
    assert page.url == console.url + "/"
    assert page.context.cookies()[0]["httpOnly"] and page.context.cookies()[0]["sameSite"] == "Strict"
    # WHEN a run starts
    items = invoices_file(tmp_path / "invoices.jsonl", INVOICES, first=1, not_overdue=REFUSED)
    (started,) = cli_json("run", JOB.name, "--items", str(items), "--json")
    run_id = str(started["run_id"])
    wait_for("the run in the ledger", lambda: ledger.get_run(run_id), 30)
    page.goto(f"{console.url}/runs/{run_id}")
    # THEN its progress moves on the page without a reload
    # (polled from here: the page's CSP forbids the string evaluation `wait_for_function` uses)
    wait_for("a live update", lambda: int(attr(page, "#run", "data-updates") or 0) >= 1, 30)
    first = number(page, "#n-succeeded")
    wait_for("the progress to move", lambda: number(page, "#n-succeeded") > first, 60)
    # AND a failure group appears with its example, which opens the task's history
    page.wait_for_selector("#failure-groups .example", timeout=60_000)
    group = page.inner_text("#failure-groups")
    assert "not overdue" in group and "INV-#" in group, group
    wait_for("some chart history", lambda: int(attr(page, "#run", "data-updates") or 0) >= 20, 30)
    shot(page, "console-run-midway.png", tmp_path)
    example = page.get_attribute("#failure-groups .example", "href")
    # WHEN it is paused from the console (after the confirmation)
    assert "paused run" in confirm(page, "pause")
    # THEN after the batches in flight the service gets no push at all
    time.sleep(FORWARDER_CACHE_S)
    frozen = steady_pushes(stack, quiet_s=3.0)
    time.sleep(3.0)
    assert pushes(stack) == frozen
    at_pause = ledger.progress(run_id)
    assert at_pause.status is RunStatus.PAUSED
    assert at_pause.succeeded + at_pause.failed < INVOICES, "the run ended before the pause: raise INVOICES"
    wait_for("PAUSED on the page", lambda: page.inner_text("#run-status") == "PAUSED", 10)
    # AND the item search finds a task (by its invoice id), and the example opens its history
    page.fill("#find-q", "INV-00001")
    page.click("#find-go")
    page.wait_for_selector("#find-found")
    assert "INV-00001" in page.inner_text("#find-found")
    # WHEN it is resumed
    assert "resumed run" in confirm(page, "resume")
    # THEN it ends SUCCEEDED with exact counts, shown on the page, and the stream ends
    wait_for("the run's end on the page", lambda: attr(page, "#run", "data-ended") == "true", RUN_TIMEOUT_S, 1.0)
    final = ledger.progress(run_id)
    assert (final.status, final.expected, final.succeeded, final.failed) == (
        RunStatus.SUCCEEDED,
        INVOICES,
        INVOICES - len(REFUSED),
        len(REFUSED),
    )
    assert page.inner_text("#run-status") == "SUCCEEDED"
    assert number(page, "#n-succeeded") == INVOICES - len(REFUSED) and number(page, "#n-failed") == len(REFUSED)
    groups = page.inner_text("#failure-groups")
    assert re.search(rf"\b{len(REFUSED)}\b", groups), groups
    assert page.query_selector("#report-files a") is not None
    shot(page, "console-run-end.png", tmp_path)
    page.goto(f"{console.url}{example}")
    assert "FAILED" in page.inner_text("main")
    # AND the browser logged no script error
    assert errors == []
