"""The chaos middleware: seeded, configured faults on the task route only; inert when unset."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from microservice.main import create_app
from microservice.settings import SettingsError
from tests.declared import CREDIT_SCORES
from tests.microservice_fixtures import (  # noqa: F401  (env: fixture)
    Env,
    client_for,
    env,
    queue_settings,
    reduce_payload,
    signed_post,
    task_payload,
)

TASK = CREDIT_SCORES.task_path


def chaos_client(env: Env, config: dict[str, Any] | str) -> Any:
    setting = config if isinstance(config, str) else json.dumps(config)
    return client_for(queue_settings(microprocess_chaos=setting), env)


def expected_statuses(seed: int, rate_503: float, rate_429: float, n: int) -> list[int]:
    """The documented decision: one draw per task request from random.Random(seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        draw = rng.random()
        out.append(503 if draw < rate_503 else 429 if draw < rate_503 + rate_429 else 200)
    return out


def has_score(env: Env, company_id: str) -> bool:
    item = env.ddb.get_item(TableName="companies", Key={"company_id": {"S": company_id}})["Item"]
    return "score" in item


def test_chaos_is_inert_when_unset(env: Env) -> None:
    # GIVEN no MICROPROCESS_CHAOS
    with client_for(queue_settings(), env) as client:
        # WHEN tasks arrive, including for ids a chaos config would poison
        statuses = [signed_post(client, TASK, task_payload(f"C{n:07d}")).status_code for n in range(1, 21)]
        # THEN every one is served, and there are no chaos stats
        assert statuses == [200] * 20
        assert client.get("/_chaos/stats").status_code == 404


def test_503_and_429_follow_the_seed_with_retry_after(env: Env) -> None:
    config = {"seed": 7, "rate_503": 0.25, "rate_429": 0.25, "retry_after_s": 2}
    expected = expected_statuses(7, 0.25, 0.25, 24)
    assert {503, 429, 200} <= set(expected)  # the seed exercises every outcome
    # GIVEN a service with seeded 503 and 429 faults
    with chaos_client(env, config) as client:
        # WHEN 24 valid tasks arrive
        responses = [signed_post(client, TASK, task_payload(f"C{n:07d}")) for n in range(1, 25)]
        stats = client.get("/_chaos/stats").json()
    # THEN the faults are exactly the seeded ones, with Retry-After, and faulted tasks did nothing
    assert [r.status_code for r in responses] == expected
    for n, r in enumerate(responses, start=1):
        if r.status_code in (503, 429):
            assert r.headers["Retry-After"] == "2"
            assert r.json()["error"].startswith("chaos_")
        assert has_score(env, f"C{n:07d}") is (r.status_code == 200)
    # AND the stats count them
    assert stats["requests"] == 24
    assert stats["injected"]["http_503"] == expected.count(503)
    assert stats["injected"]["http_429"] == expected.count(429)
    # AND the same seed, in a fresh service, injects the same sequence; another seed does not
    with chaos_client(env, config) as client:
        again = [signed_post(client, TASK, task_payload(f"C{n:07d}")).status_code for n in range(1, 25)]
    assert again == expected
    with chaos_client(env, {**config, "seed": 8}) as client:
        other = [signed_post(client, TASK, task_payload(f"C{n:07d}")).status_code for n in range(1, 25)]
    assert other != expected


def test_poison_and_bad_request_ids_always_fail(env: Env) -> None:
    # GIVEN poison and bad-request ids, and no random faults
    config = {"seed": 1, "poison_ids": ["C0000013"], "bad_request_ids": ["C0000021"]}
    with chaos_client(env, config) as client:
        # WHEN each is pushed three times, next to a healthy company
        poison = [signed_post(client, TASK, task_payload("C0000013")).status_code for _ in range(3)]
        bad = [signed_post(client, TASK, task_payload("C0000021")).status_code for _ in range(3)]
        fine = signed_post(client, TASK, task_payload("C0000014")).status_code
        stats = client.get("/_chaos/stats").json()
    # THEN the poison id always gets 500 (retried, then FAILED), the bad one always 400 (permanent)
    assert (poison, bad, fine) == ([500] * 3, [400] * 3, 200)
    assert stats["injected"] == {
        "http_503": 0,
        "http_429": 0,
        "timeout": 0,
        "poison_500": 3,
        "bad_request_400": 3,
        "crash": 0,
        "shed_503": 0,
    }
    assert not has_score(env, "C0000013") and not has_score(env, "C0000021")


def test_a_shedding_window_answers_503_with_the_seconds_left_to_every_task_then_serves_again(env: Env) -> None:
    # GIVEN a service that sheds load for 10 s once it has served 2 task requests
    now = [1000.0]
    with chaos_client(env, {"seed": 1, "shed_after_requests": 2, "shed_s": 10}) as client:
        client.app.state.chaos.clock = lambda: now[0]  # type: ignore[attr-defined]

        def push(company: str) -> tuple[int, str | None]:
            resp = signed_post(client, TASK, task_payload(company))
            return resp.status_code, resp.headers.get("Retry-After")

        served = [push("C0000001"), push("C0000002")]
        # WHEN tasks arrive in the window, and after it
        first = push("C0000003")
        now[0] += 4.2
        later = push("C0000004")
        now[0] += 6.0
        after = push("C0000005")
        stats = client.get("/_chaos/stats").json()
    # THEN the first two were served, the window answered 503 with the seconds left, then service resumed
    assert served == [(200, None), (200, None)]
    assert (first, later, after) == ((503, "10"), (503, "6"), (200, None))
    assert stats["injected"]["shed_503"] == 2
    assert stats["shedding"] == {"from": 1000.0, "until": 1010.0, "first_request_after": 1010.2}
    assert has_score(env, "C0000005") and not has_score(env, "C0000003")


def test_a_shedding_window_needs_its_length() -> None:
    from microservice.chaos import load_chaos

    with pytest.raises(ValueError, match="shed_after_requests needs shed_s > 0"):
        load_chaos(json.dumps({"shed_after_requests": 5}))


def test_timeout_delays_the_answer(env: Env) -> None:
    # GIVEN every task delayed 0.3 s
    with chaos_client(env, {"seed": 3, "rate_timeout": 1.0, "timeout_s": 0.3}) as client:
        # WHEN a task arrives
        start = time.perf_counter()
        resp = signed_post(client, TASK, task_payload("C0000002"))
        elapsed = time.perf_counter() - start
        stats = client.get("/_chaos/stats").json()
    # THEN it is answered only after the delay (a forwarder with a shorter timeout gives up first)
    assert elapsed >= 0.3
    assert resp.status_code == 200
    assert stats["injected"]["timeout"] == 1


def test_only_the_task_route_is_faulted(env: Env) -> None:
    # GIVEN every task request set to fail with 503
    with chaos_client(env, {"seed": 5, "rate_503": 1.0, "poison_ids": ["C0000001"]}) as client:
        # THEN health, the reduce routes and unsigned requests elsewhere are untouched
        assert client.get("/healthz").status_code == 200
        part = signed_post(client, CREDIT_SCORES.reduce_part_path, reduce_payload("no-such-run", 0))
        assert part.status_code == 404
        # AND the task route is faulted
        assert signed_post(client, TASK, task_payload("C0000002")).status_code == 503
        assert client.get("/_chaos/stats").json()["requests"] == 1


def test_chaos_config_from_a_file(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "chaos.json"
    path.write_text(json.dumps({"seed": 2, "bad_request_ids": ["C0000003"]}))
    with chaos_client(env, str(path)) as client:
        assert signed_post(client, TASK, task_payload("C0000003")).status_code == 400
        assert client.get("/_chaos/stats").json()["injected"]["bad_request_400"] == 1


@pytest.mark.parametrize(
    "setting",
    ["/no/such/chaos.json", '{"rate_503": 0.7, "rate_429": 0.7}', "{not json"],
)
def test_invalid_chaos_setting_stops_the_start(setting: str) -> None:
    with pytest.raises(SettingsError, match="MICROPROCESS_CHAOS"):
        create_app(queue_settings(microprocess_chaos=setting))


def test_a_crash_id_kills_the_process_once_its_request_is_read(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import microservice.chaos as chaos_module

    class Killed(Exception):
        """Stands in for the process ending (os._exit does not return)."""

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Killed

    monkeypatch.setattr(chaos_module.os, "_exit", fake_exit)
    # GIVEN a crash id
    with chaos_client(env, {"seed": 1, "crash_ids": ["C0000017"]}) as client:
        # WHEN a healthy company is pushed THEN it is served
        assert signed_post(client, TASK, task_payload("C0000016")).status_code == 200
        # WHEN the crash id is pushed THEN the process exits without an answer, having done nothing
        with pytest.raises(Killed):
            signed_post(client, TASK, task_payload("C0000017"))
    assert exits == [chaos_module.CRASH_EXIT_CODE] and not has_score(env, "C0000017")
