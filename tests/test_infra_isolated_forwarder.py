"""A service declared `isolated_forwarder = true` (issue 27, item 8): its jobs' tasks are pushed by a forwarder
of its own, whose role reads that service's signing secret only; the shared forwarder's role no longer reads it.

Synthesized from the repository's declarations with `isolated_forwarder = true` on `reminders`, both stages.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from infra import contract, logical_ids
from infra.platform import isolated_services
from microprocess.declarations import load_declarations
from tests.iam_policies import Template, statement_set
from tests.test_infra_stage_parity import stage_neutral
from tests.test_infra_synth import CLOUD, LOCAL, ROOT, Synth, render_json, synthesize, synthesized

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

FORWARDER_HANDLER = "functions.forwarder.handler.lambda_handler"


def declarations_file(folder: Path, service_lines: dict[str, str], name: str = "microprocess.toml") -> Path:
    """The repository's declarations with `lines` added to each named service's table, written to
    `folder`/`name` (services resolve from the file's folder: a stack that runs them needs ROOT)."""
    text = (ROOT / "microprocess.toml").read_text()
    for service, lines in service_lines.items():
        text = text.replace(f"[services.{service}]\n", f"[services.{service}]\n{lines}", 1)
    file = folder / name
    if file.resolve() == (ROOT / "microprocess.toml").resolve():
        raise ValueError("declarations_file would overwrite the repository's microprocess.toml: give another name")
    file.write_text(text)
    return file


@functools.cache
def isolated() -> Synth:
    folder = Path(tempfile.mkdtemp(prefix="microprocess-isolated-"))
    return synthesize({"declarations": str(declarations_file(folder, {"reminders": "isolated_forwarder = true\n"}))})


def forwarders(template: dict[str, Any]) -> dict[str, str]:
    """The task forwarder functions' logical ids: `shared`, or the isolated service's name."""
    found = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function" and resource["Properties"]["Handler"] == FORWARDER_HANDLER:
            endpoints = render_json(resource["Properties"]["Environment"]["Variables"][contract.SERVICE_ENDPOINTS])
            found["shared" if "scores" in endpoints else ",".join(sorted(endpoints))] = logical_id
    return found


def role(template: dict[str, Any], function: str) -> str:
    return str(template["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0])


def secret(template: Template, service: str) -> str:
    return str(template.resolve({"Ref": logical_ids.signing_secret(service)}))


@pytest.mark.parametrize("stage", [CLOUD, LOCAL])
def test_the_isolated_forwarder_reads_its_services_secret_only_and_the_shared_one_not_it(stage: str) -> None:
    # GIVEN reminders declared isolated_forwarder = true
    body = isolated().templates[stage]
    template = Template(body)
    found = forwarders(body)
    assert set(found) == {"shared", "reminders"}
    own, shared = role(body, found["reminders"]), role(body, found["shared"])
    scores, reminders = secret(template, "scores"), secret(template, "reminders")
    read = "secretsmanager:GetSecretValue"
    # THEN its own forwarder reads the reminders secret and not the scores one
    assert template.allows(own, read, reminders)
    assert not template.allows(own, read, scores)
    # AND the shared forwarder reads the scores secret and no longer the reminders one
    assert template.allows(shared, read, scores)
    assert not template.allows(shared, read, reminders)
    # (before: the one forwarder read both)
    default = Template(synthesized().templates[stage])
    (only,) = forwarders(synthesized().templates[stage]).values()
    assert default.allows(role(synthesized().templates[stage], only), read, secret(default, "reminders"))
    # AND each forwarder knows only the endpoints whose secrets it may read
    for name, function in found.items():
        variables = body["Resources"][function]["Properties"]["Environment"]["Variables"]
        assert sorted(render_json(variables[contract.SERVICE_ENDPOINTS])) == (
            ["scores"] if name == "shared" else ["reminders"]
        )


@pytest.mark.parametrize("stage", [CLOUD, LOCAL])
def test_each_jobs_queue_is_mapped_to_its_services_forwarder(stage: str) -> None:
    body = isolated().templates[stage]
    found = forwarders(body)
    variables = body["Resources"][found["shared"]]["Properties"]["Environment"]["Variables"]
    job_of_queue = {url.strip("<>"): job for job, url in render_json(variables[contract.JOB_QUEUES]).items()}
    mapped: dict[str, set[str]] = {}
    for resource in body["Resources"].values():
        if resource["Type"] == "AWS::Lambda::EventSourceMapping":
            queue = resource["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
            if queue in job_of_queue:
                mapped.setdefault(resource["Properties"]["FunctionName"]["Ref"], set()).add(job_of_queue[queue])
    assert mapped == {found["shared"]: {"credit-scores"}, found["reminders"]: {"invoice-reminders"}}


@pytest.mark.parametrize("stage", [CLOUD, LOCAL])
def test_the_isolated_forwarder_may_do_what_the_shared_one_does_for_its_jobs(stage: str) -> None:
    # GIVEN both forwarders' statements WHEN the secrets and the consumed queues are set aside THEN they are
    # the same (ledger, reduce queue, DLQ, claim checks, the task queues' chaos duplicates, logs, tracing)
    body = isolated().templates[stage]
    template = Template(body)
    found = forwarders(body)

    def kept(function: str) -> set[str]:
        out = set()
        for text in statement_set(template.role_policies(role(body, function))):
            statement = json.loads(text)
            if statement["Action"] == "secretsmanager:GetSecretValue":
                continue
            if statement["Action"].startswith("sqs:") and statement["Action"] != "sqs:SendMessage":
                continue  # consuming its own queues: granted by its event sources
            # the log group is each function's own
            out.add(stage_neutral(text).replace(found["reminders"], "<F>").replace(found["shared"], "<F>"))
        return out

    shared, own = kept(found["shared"]), kept(found["reminders"])
    strip = {s for s in shared | own if "log-group" in s or "LogGroup" in s}
    assert shared - strip == own - strip


def test_parity_of_the_two_stages_holds_with_an_isolated_forwarder() -> None:
    cloud, local = Template(isolated().templates[CLOUD]), Template(isolated().templates[LOCAL])
    for name in ("shared", "reminders"):
        c = role(cloud.body, forwarders(cloud.body)[name])
        lo = role(local.body, forwarders(local.body)[name])
        in_cloud = {stage_neutral(s) for s in statement_set(cloud.role_policies(c))}
        in_local = {stage_neutral(s) for s in statement_set(local.role_policies(lo))}
        assert {json.loads(s)["Action"] for s in in_cloud ^ in_local} <= {
            "xray:PutTraceSegments",
            "xray:PutTelemetryRecords",
        }, name


def test_isolation_that_would_leave_the_shared_forwarder_nothing_or_an_adaptive_job_is_refused(
    tmp_path: Path,
) -> None:
    every = load_declarations(
        declarations_file(
            tmp_path, {"reminders": "isolated_forwarder = true\n", "scores": "isolated_forwarder = true\n"}
        )
    )
    with pytest.raises(ValueError, match="leave it off for one service"):
        isolated_services(every, {name: None for name in every.services.names()})
    text = declarations_file(tmp_path, {"reminders": "isolated_forwarder = true\n"}).read_text()
    text = text.replace("[jobs.invoice-reminders]\n", "[jobs.invoice-reminders]\nadaptive = true\n")
    (tmp_path / "adaptive.toml").write_text(text)
    adaptive = load_declarations(tmp_path / "adaptive.toml")
    with pytest.raises(ValueError, match=r"\['invoice-reminders'\] have their caps moved by the controller"):
        isolated_services(adaptive, {name: None for name in adaptive.services.names()})
    # a declared capacity is the controller's too (it sets the jobs' caps on the shared forwarder)
    capped = load_declarations(
        declarations_file(tmp_path, {"reminders": "isolated_forwarder = true\ncapacity = { concurrent_pushes = 20 }\n"})
    )
    with pytest.raises(ValueError, match=r"\['invoice-reminders'\] have their caps moved by the controller"):
        isolated_services(capped, {name: None for name in capped.services.names()})
    assert isolated_services(load_declarations(ROOT / "microprocess.toml"), {"scores": None, "reminders": None}) == []
