"""A bundled service in the cloud (`bundled = "<folder>"` in the declaration file): one image
built from `<folder>/Dockerfile`, two Fargate services, two load balancers.

* `<name>-live` (public): an internet-facing ALB, host `<name>-live.<domain>`.
* `<name>-queue` (private): an internal ALB, host `<name>-queue.<domain>` in a private hosted
  zone of the VPC, reachable only from the security groups the stack allows (the forwarder's).

The public ALB carries a WAF web ACL with a per-IP rate rule and AWS's known-bad-inputs rules.

Without a domain both ALBs listen on plain HTTP and are reached by their DNS names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from . import contract
from .fargate_service import FargateWebService
from .nag import acknowledge, skip_checkov

#: Never sent to the Docker build context (the image is built from the repository root).
IMAGE_EXCLUDE = (
    ".venv",
    ".venv-checkov",
    "node_modules",
    "cdk.out",
    ".git",
    "tests",
    "bench",
    "out",
    ".microprocess",
    "**/__pycache__",
    "**/*.pyc",
    ".hypothesis",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
)


#: Requests per client IP per 5 minutes the public ALB accepts before WAF blocks the IP.
LIVE_RATE_LIMIT = 2000
#: The AWS managed rule group (no subscription fee; $1 a month as a rule of the web ACL) that blocks known
#: exploit patterns in requests (Log4Shell and others).
KNOWN_BAD_INPUTS = "AWSManagedRulesKnownBadInputsRuleSet"


@dataclass(frozen=True)
class DomainSettings:
    """A DNS name for the bundled services: `<service>-live.<name>` and `<service>-queue.<name>`.

    Attributes:
        name: the domain, e.g. `example.com`.
        hosted_zone_id: the Route 53 public hosted zone of `name`.
        certificate_arn: an ACM certificate (same region) covering the host names
            (e.g. `*.example.com`).
    """

    name: str
    hosted_zone_id: str
    certificate_arn: str

    def host(self, prefix: str) -> str:
        return f"{prefix}.{self.name}"


@dataclass(frozen=True)
class ServiceCapacity:
    """Size and scaling of one Fargate service."""

    cpu: int = 256
    memory_mib: int = 512
    min_capacity: int = 1
    max_capacity: int = 4
    cpu_target_percent: int = 60


class BundledService(Construct):
    """Both roles of a bundled service, their load balancers and DNS names.

    Args:
        service_name: the declared service name (`scores`): host names `<name>-live`, `<name>-queue`.
        folder: the folder (relative to `image_directory`) holding its Dockerfile.
        vpc: the network.
        subnets: where the tasks run (private).
        image_directory: the Docker build context (the repository root).
        live_environment, queue_environment: the containers' variables (besides `SERVICE_ROLE`).
        domain: host names and TLS; None serves plain HTTP on the ALBs' DNS names.
        access_logs_bucket: receives the ALBs' access logs.
        task_roles: the role each process runs with, by role (`live`, `queue`): `ServiceRoles`.
        live_capacity, queue_capacity: size and scaling of each service.
        live_rate_limit: requests per client IP per 5 minutes the public ALB's WAF rule allows
            before it blocks that IP (until its rate falls again).
        log_retention: how long the services' log groups keep events.
        removal_policy: for the log groups.

    Attributes:
        image_asset: the one Docker image asset both services run (built by `cdk deploy`,
            never by synth).
        cluster: the ECS cluster (Container Insights on).
        live, queue: the `FargateWebService` of each role.
        public_load_balancer: the internet-facing ALB of `<name>-live`.
        web_acl: the WAF web ACL on it (a per-IP rate rule).
        private_zone: with a domain, the private hosted zone (in the VPC) of `<name>-queue.<domain>`.
        internal_load_balancer: the internal ALB of `<name>-queue`.
        live_url, queue_url: base URLs of the services.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        service_name: str,
        folder: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        image_directory: Path,
        live_environment: Mapping[str, str],
        queue_environment: Mapping[str, str],
        domain: DomainSettings | None,
        access_logs_bucket: s3.IBucket,
        task_roles: Mapping[str, iam.IRole],
        live_capacity: ServiceCapacity = ServiceCapacity(),
        live_rate_limit: int = LIVE_RATE_LIMIT,
        queue_capacity: ServiceCapacity = ServiceCapacity(max_capacity=10),
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        removal_policy: RemovalPolicy = RemovalPolicy.DESTROY,
    ) -> None:
        super().__init__(scope, construct_id)
        dockerfile = f"{folder}/Dockerfile"
        if not (image_directory / dockerfile).is_file():
            raise FileNotFoundError(
                f"service '{service_name}' is bundled = '{folder}', but {image_directory / dockerfile} does not "
                "exist: add the Dockerfile, or declare the service with url = 'https://...' instead"
            )
        self.service_name = service_name
        self.live_host_prefix = f"{service_name}-{contract.LIVE_ROLE}"
        self.queue_host_prefix = f"{service_name}-{contract.QUEUE_ROLE}"
        self.image_asset = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(image_directory),
            file=dockerfile,
            exclude=list(IMAGE_EXCLUDE),
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        image = ecs.ContainerImage.from_docker_image_asset(self.image_asset)
        self.cluster = ecs.Cluster(self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED)

        def service(role: str, environment: Mapping[str, str], capacity: ServiceCapacity) -> FargateWebService:
            return FargateWebService(
                self,
                role.capitalize(),
                cluster=self.cluster,
                image=image,
                service_name=service_name,
                service_role=role,
                environment=environment,
                subnets=subnets,
                cpu=capacity.cpu,
                memory_mib=capacity.memory_mib,
                min_capacity=capacity.min_capacity,
                max_capacity=capacity.max_capacity,
                cpu_target_percent=capacity.cpu_target_percent,
                log_retention=log_retention,
                removal_policy=removal_policy,
                task_role=task_roles[role],
            )

        self.live = service(contract.LIVE_ROLE, live_environment, live_capacity)
        self.queue = service(contract.QUEUE_ROLE, queue_environment, queue_capacity)

        self.public_load_balancer = elbv2.ApplicationLoadBalancer(
            self, "PublicAlb", vpc=vpc, internet_facing=True, drop_invalid_header_fields=True
        )
        acknowledge(
            self.public_load_balancer,
            f"{self.live_host_prefix} is a public API: its load balancer accepts HTTP(S) from anywhere; the tasks "
            "behind it accept traffic from the load balancer only.",
            "AwsSolutions-EC23",
        )
        self.internal_load_balancer = elbv2.ApplicationLoadBalancer(
            self, "InternalAlb", vpc=vpc, internet_facing=False, drop_invalid_header_fields=True
        )
        self.web_acl = self._rate_limit(self.public_load_balancer, live_rate_limit)
        skip_checkov(
            self.public_load_balancer.connections.security_groups[0],
            (
                f"{self.live_host_prefix} is a public API: port 80 only redirects to HTTPS (443)."
                if domain
                else f"{self.live_host_prefix} listens on plain HTTP (port 80) because this stage has no domain: "
                "allowed only for the synth-only placeholder account or with -c allow_plain_http=true "
                "(a throwaway stage); a stage with a domain serves HTTPS and port 80 only redirects."
            ),
            "CKV_AWS_260",
        )
        self.public_load_balancer.log_access_logs(access_logs_bucket, f"alb/{self.live_host_prefix}")
        self.internal_load_balancer.log_access_logs(access_logs_bucket, f"alb/{self.queue_host_prefix}")

        certificate = (
            acm.Certificate.from_certificate_arn(self, "Certificate", domain.certificate_arn) if domain else None
        )
        self._route(self.public_load_balancer, self.live, self.live_host_prefix, domain, certificate, open_=True)
        self._internal_listener = self._route(
            self.internal_load_balancer, self.queue, self.queue_host_prefix, domain, certificate, open_=False
        )
        self._port = 443 if domain else 80
        self.private_zone: route53.PrivateHostedZone | None = None
        if domain:
            zone = route53.HostedZone.from_hosted_zone_attributes(
                self, "Zone", hosted_zone_id=domain.hosted_zone_id, zone_name=domain.name
            )
            route53.ARecord(
                self,
                f"{self.live_host_prefix}-record",
                zone=zone,
                record_name=self.live_host_prefix,
                target=route53.RecordTarget.from_alias(route53_targets.LoadBalancerTarget(self.public_load_balancer)),
            )
            # The queue host resolves inside the VPC only: a private zone named exactly that host
            # (so it shadows no other name of the domain), never a public record of an internal ALB.
            self.private_zone = route53.PrivateHostedZone(
                self, "QueueZone", zone_name=domain.host(self.queue_host_prefix), vpc=vpc
            )
            route53.ARecord(
                self,
                f"{self.queue_host_prefix}-record",
                zone=self.private_zone,
                target=route53.RecordTarget.from_alias(route53_targets.LoadBalancerTarget(self.internal_load_balancer)),
            )
            self.live_url = f"https://{domain.host(self.live_host_prefix)}"
            self.queue_url = f"https://{domain.host(self.queue_host_prefix)}"
        else:
            self.live_url = f"http://{self.public_load_balancer.load_balancer_dns_name}"
            self.queue_url = f"http://{self.internal_load_balancer.load_balancer_dns_name}"

    def _route(
        self,
        alb: elbv2.ApplicationLoadBalancer,
        target: FargateWebService,
        host_prefix: str,
        domain: DomainSettings | None,
        certificate: acm.ICertificate | None,
        *,
        open_: bool,
    ) -> elbv2.ApplicationListener:
        """Send `host_prefix.<domain>` on `alb` to `target` (HTTPS), or everything (HTTP, no domain)."""
        if domain is None or certificate is None:
            plain = alb.add_listener(
                "Http",
                port=80,
                protocol=elbv2.ApplicationProtocol.HTTP,
                open=open_,
                default_target_groups=[target.target_group],
            )
            skip_checkov(
                plain,
                f"Plain HTTP because this stage has no domain (no certificate to serve {host_prefix} with): allowed "
                "only for the synth-only placeholder account or with -c allow_plain_http=true (a throwaway stage); "
                "with domain, hosted_zone_id and certificate_arn the listener is HTTPS (TLS 1.2+).",
                "CKV_AWS_2",
                "CKV_AWS_103",
            )
            return plain
        listener = alb.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[certificate],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=open_,
            default_action=elbv2.ListenerAction.fixed_response(
                404, content_type="text/plain", message_body="unknown host"
            ),
        )
        listener.add_target_groups(
            "Host",
            target_groups=[target.target_group],
            conditions=[elbv2.ListenerCondition.host_headers([domain.host(host_prefix)])],
            priority=10,
        )
        if open_:
            alb.add_redirect(source_port=80, target_port=443)
        return listener

    def _rate_limit(self, alb: elbv2.ApplicationLoadBalancer, limit: int) -> wafv2.CfnWebACL:
        """A regional WAF web ACL on `alb`: allow, but block an IP above `limit` requests per 5 minutes, and
        block requests AWS's known-bad-inputs rule group matches (exploit patterns such as Log4Shell)."""
        metric = f"{self.live_host_prefix}-rate"
        acl = wafv2.CfnWebACL(
            self,
            "PublicWebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True,
                metric_name=f"{self.live_host_prefix}-acl",
                sampled_requests_enabled=True,
            ),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="rate-per-ip",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=limit, aggregate_key_type="IP", evaluation_window_sec=300
                        )
                    ),
                    visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                        cloud_watch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True
                    ),
                ),
                wafv2.CfnWebACL.RuleProperty(
                    name=KNOWN_BAD_INPUTS,
                    priority=1,
                    override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS", name=KNOWN_BAD_INPUTS
                        )
                    ),
                    visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                        cloud_watch_metrics_enabled=True,
                        metric_name=f"{self.live_host_prefix}-bad-inputs",
                        sampled_requests_enabled=True,
                    ),
                ),
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "PublicWebAclAssociation", resource_arn=alb.load_balancer_arn, web_acl_arn=acl.attr_arn
        )
        return acl

    def allow_queue_access_from(self, *peers: ec2.IConnectable) -> None:
        """Let `peers` (e.g. the forwarder) reach the queue service's internal load balancer."""
        for peer in peers:
            self.internal_load_balancer.connections.allow_from(
                peer, ec2.Port.tcp(self._port), f"{self.queue_host_prefix}: only the forwarder pushes tasks"
            )
