"""The roles a declared service's processes run with: least privilege, the same in both stages.

* A **bundled** service runs in two roles (`live`, `queue`), each with its own task role:
  - `live` reads the items of its declared tables (`GetItem`) and its API key secret;
  - `queue` reads and updates the items of its tables (`GetItem`, `UpdateItem`), reads its
    signing secret and, only when one of its jobs reduces with `reduce = "service"`, what the
    service reduce does: the ledger's reads and the email claim (`GetItem`, `BatchGetItem`,
    `Query`, `UpdateItem`) on those jobs' runs only (`dynamodb:LeadingKeys` like `RUN#<job>-*`:
    a run id starts with its job's name, `microprocess.declarations.run_keys`), those jobs'
    report files (`reports/<job>/*`), and mail from the stage's sender.
* An **external** service (a URL) is the team's own, with the team's own role; the stage builds
  none in the cloud. Locally (`local up` runs its `local_app`), it gets a role that reads its
  signing secret and nothing else (`ServiceRoles.external`).

Who may assume them: ECS tasks in the cloud; the account itself locally, where `local up`
assumes each role through the emulator's STS and hands the process a session of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ses as ses
from constructs import Construct

from microprocess.declarations import JobDeclaration, ReduceMode
from microprocess.declarations.run_keys import job_keys_pattern

from . import contract, permissions
from .forwarder import REPORTS_PREFIX


def role_key(service: str, role: str | None) -> str:
    """The key of a process's role in `ServiceRoleArns`: `<service>-live`, `<service>-queue` (bundled)
    or `<service>` (an external service's local process)."""
    return f"{service}-{role}" if role else service


class ServiceRoles(Construct):
    """The task roles of one service.

    Args:
        service_name: the declared service.
        principal: who may assume the roles (`ecs-tasks.amazonaws.com` in the cloud, the
            account locally).
        bundled: True for a bundled service (live and queue roles), False for an external one
            run locally (one role).
        tables: the service's declared tables (by role name).
        jobs: the jobs that push to this service.
        signing_secret, api_key: its secrets (`api_key` for a bundled service only).
        ledger_table, reports_bucket, email_identity: what the service reduce uses.

    Attributes:
        roles: the roles by key (`<service>-live`, `<service>-queue`, or `<service>`).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        service_name: str,
        principal: iam.IPrincipal,
        bundled: bool,
        tables: Mapping[str, dynamodb.ITable],
        jobs: Sequence[JobDeclaration],
        signing_secret: secretsmanager.ISecret,
        api_key: secretsmanager.ISecret | None,
        ledger_table: dynamodb.ITable,
        reports_bucket: s3.IBucket,
        email_identity: ses.EmailIdentity,
    ) -> None:
        super().__init__(scope, construct_id)
        self.roles: dict[str, iam.Role] = {}

        def role(key: str, description: str) -> iam.Role:
            made = iam.Role(self, key.title().replace("-", ""), assumed_by=principal, description=description)
            self.roles[key] = made
            return made

        if not bundled:
            external = role(role_key(service_name, None), f"The local process of the external service '{service_name}'")
            permissions.allow(external, permissions.READ_SECRET, [signing_secret.secret_arn])
            return
        assert api_key is not None, "a bundled service has a live API key"
        live = role(role_key(service_name, contract.LIVE_ROLE), f"{service_name}-live: answers people")
        queue = role(role_key(service_name, contract.QUEUE_ROLE), f"{service_name}-queue: takes the pushes")
        table_arns = [table.table_arn for table in tables.values()]
        if table_arns:
            permissions.allow(live, permissions.SERVICE_TABLE_READ, table_arns)
            permissions.allow(queue, permissions.SERVICE_TABLE_WRITE, table_arns)
        permissions.allow(live, permissions.READ_SECRET, [api_key.secret_arn])
        permissions.allow(queue, permissions.READ_SECRET, [signing_secret.secret_arn])
        reducing = sorted(job.name for job in jobs if job.reduce is ReduceMode.SERVICE)
        if reducing:
            # Only its own jobs' runs: every ledger key of a run of job J starts with `RUN#J-` (run_keys).
            permissions.allow(
                queue,
                permissions.SERVICE_REDUCE_LEDGER,
                [ledger_table.table_arn],
                conditions=permissions.only_leading_keys(job_keys_pattern(job) for job in reducing),
            )
            permissions.allow(
                queue,
                permissions.REPORT_OBJECTS,
                [reports_bucket.arn_for_objects(f"{REPORTS_PREFIX}{job}/*") for job in reducing],
            )
            email_identity.grant_send_email(queue)

    def arns(self) -> dict[str, str]:
        """`{role key: role ARN}` (the `ServiceRoleArns` output)."""
        return {key: made.role_arn for key, made in self.roles.items()}


def jobs_of(service: str, jobs: Iterable[JobDeclaration]) -> list[JobDeclaration]:
    """The jobs that push to `service`."""
    return [job for job in jobs if job.service == service]
