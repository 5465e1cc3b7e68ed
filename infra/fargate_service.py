"""One role of a bundled service as an ECS Fargate service behind a target group."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import contract
from .nag import acknowledge, skip_checkov


class FargateWebService(Construct):
    """A Fargate service running `image` with its own log group, target group and CPU scaling.

    Args:
        cluster: the ECS cluster.
        image: the container image.
        service_name: the declared service (`scores`): the log stream prefix is `<name>-<role>`.
        service_role: the service's role (`live` or `queue`), set as `SERVICE_ROLE`.
        environment: the container's other variables.
        subnets: where the tasks run.
        cpu: task CPU units (256 = 0.25 vCPU).
        memory_mib: task memory, MiB.
        min_capacity, max_capacity: task count bounds of the auto scaling.
        cpu_target_percent: the average CPU the scaling aims at.
        port: the container port.
        health_check_path: the target group's health check path.
        log_retention: how long the log group keeps events.
        removal_policy: for the log group.

    Attributes:
        service: the `ecs.FargateService`.
        task_definition: its task definition.
        task_role: the role the application runs with (given, e.g. `ServiceRoles`, or a new empty one).
        log_group: the container's log group.
        target_group: the `elbv2.ApplicationTargetGroup` (health check on `health_check_path`).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster: ecs.ICluster,
        image: ecs.ContainerImage,
        service_name: str,
        service_role: str,
        environment: Mapping[str, str],
        subnets: ec2.SubnetSelection,
        cpu: int = 256,
        memory_mib: int = 512,
        min_capacity: int = 1,
        max_capacity: int = 4,
        cpu_target_percent: int = 60,
        port: int = contract.SERVICE_PORT,
        health_check_path: str = contract.HEALTH_CHECK_PATH,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        removal_policy: RemovalPolicy = RemovalPolicy.DESTROY,
        task_role: iam.IRole | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=removal_policy)
        skip_checkov(
            self.log_group,
            "CloudWatch Logs encrypts every log group at rest with its service keys; the service logs requests "
            "and errors, no secrets, and a customer-managed key would add a key policy for the logs service "
            "without narrowing who may read (IAM does).",
            "CKV_AWS_158",
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=cpu,
            memory_limit_mib=memory_mib,
            task_role=task_role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.task_role: iam.IRole = self.task_definition.task_role
        self.task_definition.add_container(
            "App",
            image=image,
            environment={contract.SERVICE_ROLE: service_role, **environment},
            logging=ecs.LogDrivers.aws_logs(stream_prefix=f"{service_name}-{service_role}", log_group=self.log_group),
            port_mappings=[ecs.PortMapping(container_port=port)],
        )
        execution_role = self.task_definition.execution_role
        assert execution_role is not None  # created by add_container for the image and the logs
        acknowledge(
            execution_role,
            "ecr:GetAuthorizationToken, which pulling the image needs, supports no resource-level permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            self.task_definition,
            "The container variables are resource names and tuning values, not secrets; the signing "
            "key is passed by its Secrets Manager ARN and read at runtime with the task role.",
            "AwsSolutions-ECS2",
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            task_definition=self.task_definition,
            desired_count=min_capacity,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            vpc_subnets=subnets,
            assign_public_ip=False,
            health_check_grace_period=Duration.seconds(60),
        )
        self.target_group = elbv2.ApplicationTargetGroup(
            self,
            "Targets",
            vpc=cluster.vpc,
            port=port,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.IP,
            targets=[self.service],
            deregistration_delay=Duration.seconds(30),
            health_check=elbv2.HealthCheck(
                path=health_check_path,
                healthy_http_codes="200",
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
        )
        scaling = self.service.auto_scale_task_count(min_capacity=min_capacity, max_capacity=max_capacity)
        scaling.scale_on_cpu_utilization(
            "Cpu",
            target_utilization_percent=cpu_target_percent,
            scale_in_cooldown=Duration.seconds(120),
            scale_out_cooldown=Duration.seconds(60),
        )
