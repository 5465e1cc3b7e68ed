"""Every way the local stage's IAM differs from the cloud stage's, each with its reason: the one list.

The local stack enforces the local stage's IAM (ministack with `AUTH=true`, over TLS), so "local green
means AWS green" holds exactly as far as the two stages' roles and resource policies agree.
`tests/test_infra_stage_parity.py` compares every role's statements, trust and managed policies and every
resource policy between the two synthesized templates and fails on any difference not listed here.
"""

from __future__ import annotations

from typing import Final

#: Actions only the cloud stage grants, on every role that has them, and why.
CLOUD_ONLY_ACTIONS: Final = {
    "xray:PutTraceSegments": "X-Ray tracing is off locally (the emulator has no X-Ray: POWERTOOLS_TRACE_DISABLED)",
    "xray:PutTelemetryRecords": "X-Ray tracing is off locally (the emulator has no X-Ray: POWERTOOLS_TRACE_DISABLED)",
}

#: Managed policies only the cloud stage attaches, and why.
CLOUD_ONLY_MANAGED_POLICIES: Final = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole": (
        "the pushers run in the VPC of a bundled service in the cloud (network interfaces); locally the "
        "services are processes on 127.0.0.1 and there is no VPC"
    ),
}

#: Roles only one stage has, by the kind of construct that makes them (a part of the logical id), and why.
CLOUD_ONLY_ROLES: Final = {
    "TaskExecutionRole": (
        "ECS pulls a bundled service's image and ships its logs with it; locally the service is a process "
        "`local up` starts (its task role, the one the application uses, exists in both stages)"
    ),
}
LOCAL_ONLY_ROLES: Final = {
    "Roles": (
        "an external service's local process (`local_app`) runs under a role that may read its signing secret "
        "only; in the cloud an external service is the team's own, with the team's own role"
    ),
}

#: Trust policies that differ, by the kind of role, and why.
TRUST_DIFFERENCES: Final = {
    "Roles": (
        "a service's task role is assumed by ECS tasks in the cloud and by `local up` (the account, through the "
        "emulator's STS) for the local process: the permissions are the same, only who assumes them differs"
    ),
}

#: Resource policies only the cloud stage has, by resource type or logical id part, and why.
CLOUD_ONLY_RESOURCE_POLICIES: Final = {
    "AccessLogsBucketPolicy": "the ALB and S3 access-log bucket exists only with a load balancer (cloud)",
    "MonitoringAlarmTopicPolicy": "no CloudWatch alarms locally (the emulator computes no SQS or Lambda metrics)",
    "MonitoringTopicKey": "no CloudWatch alarms locally, so no alarm topic or its key",
}
