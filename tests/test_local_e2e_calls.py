"""Every AWS call the functions and the services made during the e2e suite, checked against the cloud
stage's IAM (issue 24, item 6), and the call sites of the code the record never saw.

The e2e suite runs with IAM enforced, so a call on a path it drives fails there already; this check adds
what the emulator cannot: the *cloud* template's roles (not the local stage's), and the paths no e2e test
drives, each listed here with the role that makes it and checked to be granted. A call added in code and
neither recorded nor listed fails this test, so it cannot reach AWS without its permission reviewed.
It runs last in a serial e2e session (tests/conftest.py orders it) over the record the whole session wrote;
`make test` runs the e2e modules in parallel and this check alone after them, over their shared record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from microprocess.local.calls import CALL_LOG_ENV
from tests.aws_calls import CallRecord, code_call_sites, role_of_principal
from tests.iam_policies import Template
from tests.test_infra_stacks import service_roles
from tests.test_infra_synth import CLOUD, LOCAL, synthesized

pytestmark = [pytest.mark.e2e, pytest.mark.aws_calls]

ROOT = Path(__file__).resolve().parent.parent

ADAPTIVE = (
    "the adaptive controller's function exists only for a job with `adaptive` (none in the default "
    "declarations; the e2e test drives the controller from the CLI): its grants are pinned by "
    "tests/test_infra_adaptive.py"
)
#: Operations in the code that the e2e suite does not drive: who makes each, and the action it needs
#: (checked below to be granted to that role in the cloud template).
UNSEEN: dict[tuple[str, str], tuple[str, str, str]] = {
    # (who, the action it needs, why no e2e test drives it)
    ("s3", "CreateMultipartUpload"): ("reducer", "s3:PutObject", "a report file over one 8 MiB part"),
    ("s3", "UploadPart"): ("reducer", "s3:PutObject", "a report file over one 8 MiB part"),
    ("s3", "CompleteMultipartUpload"): ("reducer", "s3:PutObject", "a report file over one 8 MiB part"),
    ("s3", "AbortMultipartUpload"): ("reducer", "s3:AbortMultipartUpload", "a multipart report upload that failed"),
    ("cloudwatch", "GetMetricData"): ("adaptive", "cloudwatch:GetMetricData", ADAPTIVE),
    ("lambda", "ListEventSourceMappings"): ("adaptive", "lambda:ListEventSourceMappings", ADAPTIVE),
    ("lambda", "UpdateEventSourceMapping"): ("adaptive", "lambda:UpdateEventSourceMapping", ADAPTIVE),
}


def record() -> CallRecord:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip(
            "a parallel worker sees only part of the e2e session's record: run this check alone after "
            f"the session, with the same {CALL_LOG_ENV} (make test does)"
        )
    folder = os.environ.get(CALL_LOG_ENV)
    if not folder or not list(Path(folder).glob("stack-resources.*.json")):
        pytest.skip("no AWS call record: this check runs at the end of the e2e suite (pytest -m e2e)")
    return CallRecord(Path(folder))


def test_every_recorded_call_is_allowed_by_the_cloud_roles() -> None:
    calls = record()
    cloud, local = Template(synthesized().templates[CLOUD]), Template(synthesized().templates[LOCAL])
    roles = service_roles(CLOUD)
    local_roles = service_roles(LOCAL)
    denied: list[str] = []
    unknown: set[str] = set()
    checked = 0
    for check in calls.checks(cloud):
        # an external service's local role exists only locally (in the cloud it is the team's own)
        template = cloud if check.who in roles or check.who not in local_roles else local
        role = role_of_principal(calls, check.who, template, roles if template is cloud else local_roles)
        if role is None:
            unknown.add(check.who)
            continue
        checked += 1
        if not template.allows(role, check.action, check.resource):
            denied.append(str(check))
    assert not unknown, f"principals with no role in the templates: {sorted(unknown)}"
    assert checked > 500, f"only {checked} calls were checked: is the record on?"
    assert sorted(set(denied)) == []
    # the pushers, the splitter and the bundled service's queue process were all seen
    principals = " ".join(sorted(calls.principals()))
    for part in ("Splitter", "Forwarder", "Reducer", "scores-queue"):
        assert part in principals, principals


def test_every_call_site_was_recorded_or_is_listed_with_its_permission() -> None:
    calls = record()
    seen = {(c["service"], c["operation"]) for c in calls.calls if c["who"] != "operator"}
    sites = code_call_sites(ROOT)
    unseen = {key: where for key, where in sites.items() if key not in seen}
    report = "\n".join(
        f"{service}:{op} never recorded; called at {', '.join(where)}"
        for (service, op), where in sorted(unseen.items())
    )
    print(report)
    Path(os.environ[CALL_LOG_ENV], "unseen-call-sites.txt").write_text(report + "\n")
    assert sorted(set(unseen) - set(UNSEEN)) == [], report
    cloud = Template(synthesized().templates[CLOUD])
    roles = service_roles(CLOUD)
    for (service, op), (who, action, _why) in UNSEEN.items():
        if who == "adaptive":  # not in the default template (see ADAPTIVE)
            continue
        role = roles.get(who) or next(
            (
                str(r["Properties"]["Role"]["Fn::GetAtt"][0])
                for r in cloud.resources.values()
                if r["Type"] == "AWS::Lambda::Function" and r["Properties"]["Handler"].split(".")[1] == who
            ),
            None,
        )
        assert role is not None, (service, op, who)
        docs = json.dumps(cloud.role_policies(role))
        assert f'"{action}"' in docs, (service, op, who, action)
