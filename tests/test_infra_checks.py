"""Policy and lint gates on the synthesized app: cdk-nag (AwsSolutions) on the cloud stage,
cfn-lint on both templates, `make synth` without Docker/network/credentials, context errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import Validations
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks

from tests.test_infra_synth import (
    CLOUD,
    LOCAL,
    ROOT,
    load_app_module,
    synthesize,
    synthesized,
    synthesized_external,
    synthesized_with_domain,
)

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

#: cfn-lint rules ignored, and why.
CFN_LINT_IGNORED = {
    # The zones come from cdk.json context on purpose: synth is deterministic and offline.
    "W3010": "availability zones are pinned in cdk.json so that synth never looks them up",
    # CDK writes explicit DependsOn next to GetAtt (role before function); harmless.
    "W3005": "CDK's explicit DependsOn duplicates a GetAtt dependency",
}


def violations(report: object) -> list[tuple[str, str, str]]:
    out = []
    for violation in report.violations:  # type: ignore[attr-defined]
        for resource in violation.violating_resources:
            out.append((violation.severity, violation.rule_name, resource.construct_path or ""))
    return out


@pytest.mark.parametrize(
    "synth", [synthesized, synthesized_with_domain, synthesized_external], ids=["no-domain", "domain", "external"]
)
def test_cloud_stage_passes_aws_solutions_checks(synth) -> None:  # type: ignore[no-untyped-def]
    # GIVEN the synthesized cloud stack (with the S3-manifest job invoice-reminders) WHEN the
    # AwsSolutions pack checks it
    found = violations(AwsSolutionsChecks().validate_scope(synth().stacks[CLOUD]))
    # THEN nothing is left unacknowledged (errors fail, warnings are listed)
    errors = [v for v in found if v[0] == "error"]
    assert not errors, "\n".join(f"{rule} at {path}" for _, rule, path in errors)


def test_synth_fails_on_an_unacknowledged_finding_in_the_cloud_stage(tmp_path: Path) -> None:
    # GIVEN the cloud stage with a queue that has neither a DLQ nor a TLS-only policy
    app, stacks = load_app_module().create_app(outdir=str(tmp_path), context={"stage": "cloud"})
    sqs.Queue(stacks[CLOUD], "Careless")
    # WHEN it synthesizes THEN the nag plugin stops it
    with pytest.raises(Exception, match="ValidationFailed"):
        app.synth()


def test_the_local_stage_is_not_nagged(tmp_path: Path) -> None:
    # GIVEN the same careless queue in the local stage, which the AwsSolutions pack does flag
    app, stacks = load_app_module().create_app(outdir=str(tmp_path), context={"stage": "local"})
    careless = sqs.Queue(stacks[LOCAL], "Careless")
    flagged = [v for v in violations(AwsSolutionsChecks().validate_scope(careless)) if v[0] == "error"]
    assert {rule for _, rule, _ in flagged} >= {"AwsSolutions-SQS3", "AwsSolutions-SQS4"}
    # WHEN the app synthesizes THEN the plugin, which checks the cloud stack only, lets it through
    assembly = app.synth()
    template = assembly.get_stack_by_name(stacks[LOCAL].stack_name).template
    assert [k for k, r in template["Resources"].items() if k.startswith("Careless") and r["Type"] == "AWS::SQS::Queue"]


def test_every_acknowledgment_states_a_reason() -> None:
    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    acknowledged = 0
    for node in synthesized().stacks[CLOUD].node.find_all():
        for entry in node.node.metadata:
            if entry.type == key:
                for rule, reason in entry.data.items():
                    acknowledged += 1
                    assert isinstance(reason, str) and len(reason.split()) >= 5, (node.node.path, rule, reason)
    assert acknowledged > 0


def test_templates_pass_cfn_lint() -> None:
    synth = synthesized()
    templates = [str(synth.outdir / f"{name}.template.json") for name in (CLOUD, LOCAL)]
    templates.append(str(synthesized_with_domain().outdir / f"{CLOUD}.template.json"))
    templates.append(str(synthesized_external().outdir / f"{CLOUD}.template.json"))
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run(
        [str(cfn_lint), "--ignore-checks", *CFN_LINT_IGNORED, "--", *templates],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # exit code 0: no errors and no warnings beyond the ignored ones (2 = errors, 4 = warnings)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_synth_needs_no_docker_network_or_credentials(tmp_path: Path) -> None:
    # GIVEN no credentials, no Docker daemon and no proxy to reach anything
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    env |= {
        "CDK_OUTDIR": str(tmp_path),
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    # WHEN `make synth` runs app.py
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN both stages are written
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / f"{CLOUD}.template.json").is_file()
    assert (tmp_path / f"{LOCAL}.template.json").is_file()


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"stage": "staging"}, "context 'stage' must be one of"),
        ({"stage": "cloud", "domain": "example.com"}, "'hosted_zone_id', 'certificate_arn'] missing"),
        ({"stage": "local", "intermediate_expiry_days": "soon"}, "'intermediate_expiry_days' must be an integer"),
    ],
)
def test_bad_context_fails_with_a_message_naming_the_key(context: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        synthesize(context)
