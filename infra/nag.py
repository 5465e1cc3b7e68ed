"""cdk-nag 3 (AwsSolutions) for the cloud stage, a helper to acknowledge a finding with a reason,
and one to skip a checkov finding on a resource with a reason.

cdk-nag 3 is a CDK policy-validation plugin (`Validations.of(app).add_plugins(...)`), not an
Aspect. A plugin added to the app sees the whole app, so `CloudStageChecks` narrows it to
the cloud stack: the local stage runs in an emulator and is not a deployment target.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, App, CfnResource, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


class CloudStageChecks(AwsSolutionsChecks):
    """AwsSolutionsChecks that validates one construct scope (the cloud stack) only."""

    def __init__(self, scope: IConstruct) -> None:
        super().__init__(scope)
        self._checked_scope = scope

    def validate(self, context: Any) -> Any:  # overrides the jsii member `validate`
        return self.validate_scope(self._checked_scope)


def add_cloud_checks(app: App, cloud_stack: IConstruct) -> CloudStageChecks:
    """Run the AwsSolutions pack on `cloud_stack` when `app` synthesizes (unacknowledged
    errors fail the synth)."""
    checks = CloudStageChecks(cloud_stack)
    Validations.of(app).add_plugins(checks)
    return checks


def acknowledge(scope: IConstruct, reason: str, *rule_ids: str) -> None:
    """Acknowledge cdk-nag findings on `scope` and everything below it, with one stated reason.

    A rule with several findings per resource (e.g. IAM5) needs each finding's ID, as
    `AwsSolutions-IAM5[Resource::<...>]`.
    """
    if not reason.strip():
        raise ValueError("every cdk-nag acknowledgment needs a reason")
    Validations.of(scope).acknowledge(*(Acknowledgment(id=rule_id, reason=reason) for rule_id in rule_ids))


#: The template metadata key checkov reads its per-resource skips from.
CHECKOV_METADATA_KEY = "checkov"


def skip_checkov(scope: IConstruct, reason: str, *check_ids: str) -> None:
    """Skip checkov findings on one CloudFormation resource, with one stated reason.

    `scope` is the resource itself (an L1 `CfnResource`) or an L2 construct whose default child
    is one. The skips land in the resource's template metadata,
    `{"checkov": {"skip": [{"id": "CKV_AWS_21", "comment": reason}]}}`, merged with any already there.
    """
    if not reason.strip():
        raise ValueError("every checkov skip needs a reason")
    if not check_ids:
        raise ValueError("name the checkov check(s) to skip, e.g. 'CKV_AWS_21'")
    resource = scope if isinstance(scope, CfnResource) else scope.node.default_child
    if not isinstance(resource, CfnResource):
        raise TypeError(f"{scope.node.path} is not a CloudFormation resource and has none as its default child")
    existing = resource.get_metadata(CHECKOV_METADATA_KEY) or {}
    skips = [s for s in existing.get("skip", []) if s["id"] not in check_ids]
    skips += [{"id": check_id, "comment": reason} for check_id in check_ids]
    resource.add_metadata(CHECKOV_METADATA_KEY, {"skip": skips})
