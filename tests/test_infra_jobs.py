"""Your own jobs and services in the stack: each job's own queue and event source, services
that are bundled or external (an external-only stage builds no VPC, Fargate or load balancer),
a team's VPC for the pushers, S3 manifest sources, and where service URLs come from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import assertions

from infra import contract
from infra.endpoints import EndpointError, resolve_endpoints
from infra.push_settings import PushSettings
from microprocess.declarations import load_declarations
from tests.declared import DECLARATIONS, INVOICE_REMINDERS, JOBS
from tests.test_infra_synth import (
    CLOUD,
    EXTERNAL_SCORES_URL,
    ROOT,
    render,
    render_json,
    synthesize,
    synthesized,
    synthesized_external,
)

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

TEAM_VPC = {
    "stage": "cloud",
    "service_urls": json.dumps({"scores": "https://scores-queue.internal.team.example"}),
    "vpc_id": "vpc-0123456789abcdef0",
    "subnet_ids": "subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb",
    "security_group_id": "sg-0cccccccccccccccc",
}


def function(templates: dict[str, Any], name: str) -> dict[str, Any]:
    (fn,) = [
        {"LogicalId": k, **v["Properties"]}
        for k, v in templates["Resources"].items()
        if v["Type"] == "AWS::Lambda::Function"
        and v["Properties"]["Handler"] == f"functions.{name}.handler.lambda_handler"
    ]
    return fn


def types(template: dict[str, Any]) -> set[str]:
    return {r["Type"] for r in template["Resources"].values()}


def splitter_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    role = function(template, "splitter")["Role"]["Fn::GetAtt"][0]
    out = []
    for policy in template["Resources"].values():
        if policy["Type"] == "AWS::IAM::Policy" and {"Ref": role} in policy["Properties"]["Roles"]:
            out += policy["Properties"]["PolicyDocument"]["Statement"]
    return out


# ---------------------------------------------------------------------------- one queue per job


def test_each_job_gets_its_own_queue_settings_from_its_own_declaration() -> None:
    # GIVEN two jobs that declare different batches, caps and attempts
    push = PushSettings.from_jobs(JOBS)
    # THEN each job's queue and event source carry its own numbers, not the strictest of all
    for job in JOBS:
        consumer = push.jobs[job.name]
        assert (consumer.batch_size, consumer.max_concurrency, consumer.max_receive_count) == (
            job.batch_size,
            job.max_concurrency,
            job.max_attempts + 2,
        )
    assert push.jobs["credit-scores"].max_concurrency == 50 and push.jobs["invoice-reminders"].max_concurrency == 10


def test_a_laptop_cap_below_what_an_event_source_accepts_is_refused() -> None:
    with pytest.raises(ValueError, match="forwarder_max_concurrency must be at least 2"):
        PushSettings.from_jobs(JOBS).capped(1)


# ---------------------------------------------------------------------------- external services only


def test_an_external_only_stage_has_no_fargate_load_balancer_nat_or_vpc() -> None:
    # GIVEN every service external (scores given a URL, reminders declared with one)
    template = synthesized_external().templates[CLOUD]
    found = types(template)
    # THEN nothing is built for the services, and the pushers need no VPC
    for absent in (
        "AWS::ECS::Service",
        "AWS::ECS::Cluster",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "AWS::EC2::NatGateway",
        "AWS::EC2::VPC",
        "AWS::EC2::EIP",
    ):
        assert absent not in found, absent
    assert all("VpcConfig" not in function(template, name) for name in ("forwarder", "reducer"))
    # no image to build either
    assets = json.loads((synthesized_external().outdir / f"{CLOUD}.assets.json").read_text())
    assert not assets.get("dockerImages")
    # and the serverless core, monitoring and outputs are all there
    assert {"AWS::SQS::Queue", "AWS::Lambda::Function", "AWS::CloudWatch::Dashboard"} <= found
    assert tuple(template["Outputs"]) == contract.CLOUD_OUTPUTS
    assert render_json(template["Outputs"]["ServiceUrls"]["Value"]) == {
        "scores": EXTERNAL_SCORES_URL,
        "reminders": "https://reminders-queue.example.com",
    }
    endpoints = render_json(function(template, "forwarder")["Environment"]["Variables"][contract.SERVICE_ENDPOINTS])
    assert endpoints["scores"] == {"url": EXTERNAL_SCORES_URL, "secret_arn": "<ScoresSigningSecret>"}


def test_a_bundled_service_is_what_brings_the_vpc_and_fargate() -> None:
    found = types(synthesized().templates[CLOUD])
    assert {"AWS::ECS::Service", "AWS::ElasticLoadBalancingV2::LoadBalancer", "AWS::EC2::NatGateway"} <= found


def test_the_pushers_can_run_in_the_teams_own_vpc() -> None:
    # GIVEN external services reachable only inside the team's VPC
    template = synthesize(TEAM_VPC).templates[CLOUD]
    # THEN the forwarder and the reducer run in its subnets with its security group; nothing else is built
    for name in ("forwarder", "reducer"):
        config = function(template, name)["VpcConfig"]
        assert config["SubnetIds"] == TEAM_VPC["subnet_ids"].split(",")
        assert config["SecurityGroupIds"] == [TEAM_VPC["security_group_id"]]
    assert not {"AWS::EC2::VPC", "AWS::EC2::NatGateway", "AWS::ECS::Service"} & types(template)
    assert all("VpcConfig" not in function(template, n) for n in ("splitter", "dead_letter", "sweeper"))


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"vpc_id": "vpc-0123"}, "'vpc_id' and 'subnet_ids' go together"),
        ({"vpc_id": "vpc-0123", "subnet_ids": "sn-1"}, r"subnet_ids must list the VPC's private subnet ids"),
        (
            {"vpc_id": "vpc-0123", "subnet_ids": "subnet-1"},
            r"vpc_id is for stages whose services are all external; \['scores'\] are bundled",
        ),
        ({"service_urls": "scores=http://x"}, "context 'service_urls' must be a JSON object"),
        ({"service_urls": json.dumps({"billing": "https://b.example"})}, r"undeclared service\(s\) \['billing'\]"),
        ({"service_urls": json.dumps({"scores": "ftp://b.example"})}, r"service_urls\['scores'\] = 'ftp://b.example'"),
        ({"queue_service_url": "http://127.0.0.1:8001"}, "context 'queue_service_url' is gone: pass service_urls="),
    ],
)
def test_bad_service_or_vpc_context_fails_with_the_fix(context: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize({"stage": "cloud", **context})


def test_a_service_with_only_a_local_app_needs_a_url_in_the_cloud(tmp_path: Path) -> None:
    # GIVEN a service that only runs locally
    text = (ROOT / "microprocess.toml").read_text().replace('url = "https://reminders-queue.example.com"\n', "")
    file = tmp_path / "microprocess.toml"
    file.write_text(text)
    declarations = load_declarations(file)
    # THEN the cloud stage says how to give it one; the local stage does not need one
    with pytest.raises(
        EndpointError, match=r"""service 'reminders' has no cloud endpoint .* service_urls='\{"reminders\""""
    ):
        resolve_endpoints(declarations, {}, local=False)
    assert resolve_endpoints(declarations, {}, local=True)["reminders"].url == "http://127.0.0.1:8002"
    given = resolve_endpoints(declarations, {"reminders": "https://r.example/"}, local=False)
    assert given["reminders"].url == "https://r.example" and given["reminders"].bundled is None
    # a URL given for a bundled service means it runs elsewhere: nothing is built for it
    assert resolve_endpoints(DECLARATIONS, {"scores": "https://s.example"}, local=False)["scores"].bundled is None


# ---------------------------------------------------------------------------- S3 manifest sources


def test_the_splitter_reads_a_declared_s3_manifest_under_its_template_prefix_only() -> None:
    assert INVOICE_REMINDERS.source.uri == "s3://invoice-manifests/unpaid/{date}.jsonl"
    statements = splitter_statements(synthesized().templates[CLOUD])
    reads = [s for s in statements if s["Action"] == "s3:GetObject"]
    assert {render(s["Resource"]) for s in reads} == {
        "arn:<AWS::Partition>:s3:::invoice-manifests/unpaid/*",
        "<ReportsBucket.Arn>/manifests/*",
    }
    # nothing else of that bucket, and no action wildcard
    assert not [s for s in statements if "invoice-manifests" in render(s["Resource"]) and s["Action"] != "s3:GetObject"]


def test_the_s3_manifest_job_synthesizes_in_the_external_only_cloud_stage_too() -> None:
    statements = splitter_statements(synthesized_external().templates[CLOUD])
    assert any(render(s["Resource"]).endswith("invoice-manifests/unpaid/*") for s in statements)


# ---------------------------------------------------------------------------- no plain HTTP


def test_a_real_accounts_bundled_service_without_a_domain_is_refused_plain_http() -> None:
    with pytest.raises(ValueError, match=r"\['scores'\] would listen on plain HTTP without a domain: pass -c domain="):
        synthesize({"stage": "cloud", "account": "123456789012"})


def test_plain_http_only_when_asked_for_or_with_nothing_listening() -> None:
    # asked for explicitly (a throwaway stage)
    asked = synthesize({"stage": "cloud", "account": "123456789012", "allow_plain_http": "true"})
    assert asked.resources(CLOUD, "AWS::ElasticLoadBalancingV2::Listener")
    # every service external: no listener at all, so no domain is needed
    external = synthesize(
        {"stage": "cloud", "account": "123456789012", "service_urls": json.dumps({"scores": EXTERNAL_SCORES_URL})}
    )
    assert not external.resources(CLOUD, "AWS::ElasticLoadBalancingV2::Listener")


def test_the_team_vpc_stage_passes_aws_solutions_checks_without_a_given_security_group() -> None:
    from cdk_nag import AwsSolutionsChecks

    context = {k: v for k, v in TEAM_VPC.items() if k != "security_group_id"}
    synth = synthesize(context)
    # a new outbound-only security group in the team's VPC, shared by both pushers
    forwarder, reducer = (function(synth.templates[CLOUD], n)["VpcConfig"] for n in ("forwarder", "reducer"))
    assert forwarder == reducer and len(forwarder["SecurityGroupIds"]) == 1
    report = AwsSolutionsChecks().validate_scope(synth.stacks[CLOUD])
    errors = [
        (v.rule_name, r.construct_path)
        for v in report.violations
        if v.severity == "error"
        for r in v.violating_resources
    ]
    assert not errors, errors


def test_the_local_stage_sweeps_every_minute_and_caps_the_queue_depth() -> None:
    # GIVEN the local stage as `microprocess local up` deploys it (its laptop context)
    from microprocess.local.stack import LOCAL_MAX_QUEUE_DEPTH, LOCAL_STUCK_AFTER_S, LocalStack, UpOptions

    context = {"stage": "local", **LocalStack._laptop_context(UpOptions(forwarder_concurrency=0))}
    template = synthesize(context).templates["Microprocess-Local"]
    # THEN the sweeper runs every minute and acts after LOCAL_STUCK_AFTER_S quiet seconds (a dead
    # splitter is restarted within about a minute), and the splitter waits below the emulator's depth
    rules = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    assert any(r.get("ScheduleExpression") == "rate(1 minute)" for r in rules)
    assert function(template, "sweeper")["Environment"]["Variables"][contract.STUCK_AFTER_S] == str(LOCAL_STUCK_AFTER_S)
    splitter_env = function(template, "splitter")["Environment"]["Variables"]
    assert splitter_env[contract.MAX_QUEUE_DEPTH_CAP] == str(LOCAL_MAX_QUEUE_DEPTH)


def test_the_cloud_stage_synthesizes_offline_for_any_account_and_region() -> None:
    # GIVEN a real account and another region, as the README's deploy command passes them
    context = {
        "stage": "cloud",
        "account": "123456789012",
        "region": "eu-west-1",
        "domain": "example.com",
        "hosted_zone_id": "Z0123456789ABC",
        "certificate_arn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
    }
    # WHEN synthesized (no network, no credentials: no availability-zone lookup may be needed)
    synth = synthesize(context)
    # THEN the VPC spans the region's zones, and nothing is left for a lookup to fill
    template = synth.templates[CLOUD]
    zones = {
        r["Properties"]["AvailabilityZone"] for r in template["Resources"].values() if r["Type"] == "AWS::EC2::Subnet"
    }
    assert zones == {"eu-west-1a", "eu-west-1b"}
    manifest = json.loads((synth.outdir / "manifest.json").read_text())
    assert "missing" not in manifest, manifest.get("missing")


def test_bad_availability_zones_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at least two zones of eu-west-1"):
        synthesize(
            {"stage": "cloud", "account": "123456789012", "region": "eu-west-1", "availability_zones": "us-east-1a"}
        )


def _with_reminders(tmp_path: Path, lines: str) -> Path:
    """The repository's declaration file with `lines` in place of the reminders service's url."""
    text = (ROOT / "microprocess.toml").read_text().replace('url = "https://reminders-queue.example.com"\n', lines)
    file = tmp_path / "microprocess.toml"
    file.write_text(text)
    return file


def test_a_plain_http_service_url_is_refused_in_the_cloud_unless_the_declaration_says_why(tmp_path: Path) -> None:
    # GIVEN a service declared at an http:// URL, and one given an http:// URL at synth
    declared = load_declarations(_with_reminders(tmp_path, 'url = "http://reminders.internal"\n'))
    # THEN the cloud stage refuses both, naming the field that would accept it
    with pytest.raises(EndpointError, match=r"plain HTTP \(http://reminders.internal\).*plain_http_reason"):
        resolve_endpoints(declared, {}, local=False)
    with pytest.raises(EndpointError, match=r"service 'scores' is reached over plain HTTP"):
        resolve_endpoints(DECLARATIONS, {"scores": "http://scores.internal"}, local=False)
    # AND the local stage (loopback processes) is not concerned
    assert resolve_endpoints(declared, {}, local=True)["reminders"].url.startswith("http://127.0.0.1:")
    # WHEN the declaration says why plain HTTP is acceptable THEN it is accepted with that reason
    reason = "inside the VPC, private subnets only"
    ok = load_declarations(
        _with_reminders(tmp_path, f'url = "http://reminders.internal"\nplain_http_reason = "{reason}"\n')
    )
    endpoint = resolve_endpoints(ok, {}, local=False)["reminders"]
    assert (endpoint.url, endpoint.plain_http_reason) == ("http://reminders.internal", reason)
    # AND an https:// URL needs no reason
    assert resolve_endpoints(DECLARATIONS, {}, local=False)["reminders"].plain_http_reason is None


def test_a_vague_plain_http_reason_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="plain_http_reason must say why"):
        load_declarations(_with_reminders(tmp_path, 'url = "http://reminders.internal"\nplain_http_reason = "ok"\n'))


def test_synth_prints_the_reason_for_a_plain_http_service(tmp_path: Path) -> None:
    # GIVEN the cloud stage with the reminders service on plain HTTP, for a declared reason
    reason = "inside the VPC, private subnets only"
    file = _with_reminders(tmp_path, f'url = "http://reminders.internal"\nplain_http_reason = "{reason}"\n')
    synth = synthesize(
        {"stage": "cloud", "declarations": str(file), "service_urls": json.dumps({"scores": EXTERNAL_SCORES_URL})}
    )
    # THEN synth warns with the URL and the reason (cdk synth prints it)
    found = assertions.Annotations.from_stack(synth.stacks[CLOUD]).find_warning("*", assertions.Match.any_value())
    warnings = [str(w.entry.data) for w in found]
    assert any("http://reminders.internal" in w and reason in w for w in warnings), warnings
