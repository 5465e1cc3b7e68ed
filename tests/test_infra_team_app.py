"""The platform as one construct in a team's own CDK app (examples/team_cdk_app)."""

from __future__ import annotations

import functools
import importlib.util
import json
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cdk_nag import AwsSolutionsChecks

from infra import contract
from microprocess.declarations import load_declarations
from tests.test_infra_synth import ROOT, render_json

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

EXAMPLE = ROOT / "examples" / "team_cdk_app"
BILLING_URL = "https://billing-queue.prod.example.com"


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("team_cdk_app", EXAMPLE / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def synthesized_team_app() -> tuple[Any, Path, dict[str, Any]]:
    outdir = Path(tempfile.mkdtemp(prefix="team-cdk-app-"))
    app = example_module().create_app(
        outdir=str(outdir), context={"service_urls": json.dumps({"billing": BILLING_URL})}
    )
    app.synth()
    return app, outdir, json.loads((outdir / "Billing.template.json").read_text())


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def test_the_team_app_synthesizes_its_own_resources_and_the_platform() -> None:
    # GIVEN the team's app with its declaration file and its service URL WHEN it synthesizes
    _, _, template = synthesized_team_app()
    declared = load_declarations(EXAMPLE / "jobs.toml")
    # THEN its own bucket is there next to the platform
    assert any("InvoiceArchive" in logical_id for logical_id in resources(template, "AWS::S3::Bucket"))
    # one task queue and event source per job of ITS file, with that job's numbers
    mappings = {
        m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]: m["Properties"]
        for m in resources(template, "AWS::Lambda::EventSourceMapping").values()
    }
    assert mappings["DunningLettersTaskQueue"]["ScalingConfig"] == {"MaximumConcurrency": 20}
    assert mappings["StatementPdfsTaskQueue"]["ScalingConfig"] == {"MaximumConcurrency": 5}
    assert mappings["StatementPdfsTaskQueue"]["BatchSize"] == 2
    assert template["Resources"]["CustomersTable"]["Properties"]["KeySchema"] == [
        {"AttributeName": "customer_id", "KeyType": "HASH"}
    ]
    assert {job.name for job in declared.jobs} == {"dunning-letters", "statement-pdfs"}
    # the service URL is the parameter's, not the file's default
    outputs = template["Outputs"]
    assert tuple(outputs) == contract.CLOUD_OUTPUTS
    assert render_json(outputs["ServiceUrls"]["Value"]) == {"billing": BILLING_URL}
    # an external service only: no VPC, Fargate, load balancer or NAT gateway
    types = {r["Type"] for r in template["Resources"].values()}
    assert not {"AWS::EC2::VPC", "AWS::EC2::NatGateway", "AWS::ECS::Service"} & types
    assert "AWS::ElasticLoadBalancingV2::LoadBalancer" not in types


def test_the_team_apps_code_asset_ships_its_declaration_file() -> None:
    _, outdir, _ = synthesized_team_app()
    assets = json.loads((outdir / "Billing.assets.json").read_text())["files"]
    (folder,) = [outdir / a["source"]["path"] for a in assets.values() if a["source"]["path"].startswith("asset.")]
    assert (folder / "microprocess.toml").read_text() == (EXAMPLE / "jobs.toml").read_text()
    assert (folder / "functions" / "forwarder" / "handler.py").is_file()


def test_the_platform_construct_passes_aws_solutions_checks_in_the_team_stack() -> None:
    app, _, _ = synthesized_team_app()
    stack = app.node.find_child("Billing")
    report = AwsSolutionsChecks().validate_scope(stack.node.find_child("Jobs"))
    errors = [
        (v.rule_name, r.construct_path)
        for v in report.violations
        if v.severity == "error"
        for r in v.violating_resources
    ]
    assert not errors, errors


def test_a_team_app_without_the_needed_feature_flag_is_told_which_to_set(tmp_path: Path) -> None:
    flag = "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy"
    with pytest.raises(ValueError, match=f"needs the CDK feature flag.*{flag}.*cdk.json"):
        example_module().create_app(outdir=str(tmp_path), context={flag: False})
