"""cdk-nag 3 (AwsSolutions) for the cloud stage, and a helper to acknowledge a finding with a reason.

cdk-nag 3 is a CDK policy-validation plugin (`Validations.of(app).add_plugins(...)`), not an
Aspect. A plugin added to the app sees the whole app, so `CloudStageChecks` narrows it to
the cloud stack: the local stage runs in an emulator and is not a deployment target.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, App, Validations
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
