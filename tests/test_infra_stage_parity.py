"""Local green means AWS green: the local stage's IAM is the cloud stage's (invariant 12).

Every role's statements, trust and managed policies, and every resource policy (queues, buckets,
topics, keys, Lambda permissions), compared between the two synthesized stages; a difference
passes only when `infra/stage_differences.py` lists it with its reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from infra import stage_differences as allowed
from tests.iam_policies import Template, statement_set
from tests.test_infra_synth import CLOUD, LOCAL, synthesized

pytestmark = pytest.mark.infra

RESOURCE_POLICY_TYPES = {
    "AWS::SQS::QueuePolicy": "PolicyDocument",
    "AWS::S3::BucketPolicy": "PolicyDocument",
    "AWS::SNS::TopicPolicy": "PolicyDocument",
    "AWS::KMS::Key": "KeyPolicy",
    "AWS::SecretsManager::ResourcePolicy": "ResourcePolicy",
}


def templates() -> tuple[Template, Template]:
    synth = synthesized()
    return Template(synth.templates[CLOUD]), Template(synth.templates[LOCAL])


def listed(logical_id: str, table: dict[str, str]) -> bool:
    return any(part in logical_id for part in table)


def stage_neutral(text: str) -> str:
    """A value with the stack's own name taken out (`Microprocess-Cloud` / `-Local` in generated ids)."""
    return re.sub(r"Microprocess(Cloud|Local)|Microprocess-(Cloud|Local)", "Microprocess<STAGE>", text)


def test_every_role_exists_in_both_stages_or_is_listed() -> None:
    cloud, local = templates()
    cloud_only = set(cloud.roles()) - set(local.roles())
    local_only = set(local.roles()) - set(cloud.roles())
    assert [r for r in cloud_only if not listed(r, allowed.CLOUD_ONLY_ROLES)] == []
    assert [r for r in local_only if not listed(r, allowed.LOCAL_ONLY_ROLES)] == []
    # and the lists hold nothing stale: each entry explains at least one role
    assert all(any(part in r for r in cloud_only) for part in allowed.CLOUD_ONLY_ROLES)
    assert all(any(part in r for r in local_only) for part in allowed.LOCAL_ONLY_ROLES)


def test_every_role_has_the_same_statements_in_both_stages() -> None:
    cloud, local = templates()
    differences: dict[str, dict[str, list[str]]] = {}
    used: set[str] = set()
    for role in sorted(set(cloud.roles()) & set(local.roles())):
        in_cloud = {stage_neutral(s) for s in statement_set(cloud.role_policies(role))}
        in_local = {stage_neutral(s) for s in statement_set(local.role_policies(role))}
        cloud_extra = [s for s in in_cloud - in_local if json.loads(s)["Action"] not in allowed.CLOUD_ONLY_ACTIONS]
        used |= {json.loads(s)["Action"] for s in in_cloud - in_local} & set(allowed.CLOUD_ONLY_ACTIONS)
        local_extra = sorted(in_local - in_cloud)
        if cloud_extra or local_extra:
            differences[role] = {"cloud only": sorted(cloud_extra), "local only": local_extra}
    assert differences == {}
    assert used == set(allowed.CLOUD_ONLY_ACTIONS)  # no stale entry


def test_trust_and_managed_policies_are_the_same_or_listed() -> None:
    cloud, local = templates()
    for role in sorted(set(cloud.roles()) & set(local.roles())):
        c, lo = cloud.resources[role]["Properties"], local.resources[role]["Properties"]
        if c["AssumeRolePolicyDocument"] != lo["AssumeRolePolicyDocument"]:
            assert listed(role, allowed.TRUST_DIFFERENCES), role
        managed_cloud = set(cloud.resolve(c.get("ManagedPolicyArns", [])))
        managed_local = set(local.resolve(lo.get("ManagedPolicyArns", [])))
        assert managed_local <= managed_cloud, role
        assert managed_cloud - managed_local <= set(allowed.CLOUD_ONLY_MANAGED_POLICIES), role


def resource_policies(template: Template) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for logical_id, resource in template.resources.items():
        kind = resource["Type"]
        if kind in RESOURCE_POLICY_TYPES:
            doc = template.resolve(resource["Properties"][RESOURCE_POLICY_TYPES[kind]])
            found[logical_id] = sorted(stage_neutral(s) for s in statement_set([doc]))
        elif kind == "AWS::Lambda::Permission":
            # its logical id hashes the stack's name: keyed by what it allows instead
            found[stage_neutral(json.dumps(resource["Properties"], sort_keys=True))] = "Lambda permission"
    return found


def test_every_resource_policy_is_the_same_in_both_stages_or_listed() -> None:
    cloud, local = templates()
    in_cloud, in_local = resource_policies(cloud), resource_policies(local)
    assert set(in_local) - set(in_cloud) == set()
    cloud_only = set(in_cloud) - set(in_local)
    assert [r for r in cloud_only if not listed(r, allowed.CLOUD_ONLY_RESOURCE_POLICIES)] == []
    for logical_id in sorted(set(in_cloud) & set(in_local)):
        assert in_cloud[logical_id] == in_local[logical_id], logical_id


def test_the_tls_only_denies_are_in_both_stages() -> None:
    # GIVEN both stages WHEN the queues' and the reports bucket's policies are read THEN each denies
    # every request without TLS (what the local stack now enforces too, over its own CA)
    for template in templates():
        guarded = [
            logical_id
            for logical_id, resource in template.resources.items()
            if resource["Type"] == "AWS::SQS::QueuePolicy" or logical_id.startswith("PlatformReportsBucketPolicy")
        ]
        assert len(guarded) == 5  # two task queues, the reduce queue, the DLQ, the reports bucket
        for logical_id in guarded:
            statements = template.resources[logical_id]["Properties"]["PolicyDocument"]["Statement"]
            assert any(
                s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
                for s in statements
            ), logical_id
