"""The VPC the bundled services and the pushers run in (cloud stage, only with a bundled service)."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from constructs import Construct

MAX_AZS = 2


class Network(Construct):
    """Two availability zones, public subnets (load balancers, one NAT gateway) and private
    subnets with egress (Fargate tasks, the forwarder).

    Gateway endpoints keep DynamoDB and S3 traffic off the NAT gateway (free, and most of
    the forwarder's and the queue service's traffic). Rejected traffic is logged to S3.

    Args:
        nat_gateways: NAT gateways (1 keeps idle cost down; 2 survives an AZ outage).
        flow_logs_bucket: receives the VPC flow logs.

    Attributes:
        vpc: the `ec2.Vpc`.
        private_subnets: the selection for workloads.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, flow_logs_bucket: s3.IBucket, nat_gateways: int = 1
    ) -> None:
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=MAX_AZS,
            nat_gateways=nat_gateways,
            # True would add a Lambda-backed custom resource; nothing uses the default group.
            restrict_default_security_group=False,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22),
            ],
            gateway_endpoints={
                "DynamoDb": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
            },
            flow_logs={
                "Rejected": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_s3(flow_logs_bucket, "vpc-flow-logs/"),
                    traffic_type=ec2.FlowLogTrafficType.REJECT,
                )
            },
        )
        self.private_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
