"""What the stacks promise, checked on the synthesized templates (`assertions.Template`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from infra import contract
from tests.test_infra_synth import CLOUD, LOCAL, synthesized, synthesized_with_domain

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]
BOTH = pytest.mark.parametrize("stack", [CLOUD, LOCAL])


def only(resources: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    assert len(resources) == 1, list(resources)
    return next(iter(resources.items()))


def functions(stack: str) -> dict[str, dict[str, Any]]:
    """The four microprocess functions by entry point name (splitter, forwarder, ...)."""
    out = {}
    for logical_id, fn in synthesized().resources(stack, "AWS::Lambda::Function").items():
        handler = fn["Properties"]["Handler"]
        out[handler.split(".")[1]] = {"LogicalId": logical_id, **fn["Properties"]}
    return out


def role_of(function: dict[str, Any]) -> str:
    return function["Role"]["Fn::GetAtt"][0]


def statements_of(stack: str, role_logical_id: str) -> list[dict[str, Any]]:
    out = []
    for policy in synthesized().resources(stack, "AWS::IAM::Policy").values():
        if {"Ref": role_logical_id} in policy["Properties"]["Roles"]:
            out += policy["Properties"]["PolicyDocument"]["Statement"]
    return out


def dashboard_body(stack: str) -> str:
    _, dashboard = only(synthesized().resources(stack, "AWS::CloudWatch::Dashboard"))
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


# ---------------------------------------------------------------------------- ledger and companies


@BOTH
def test_tables_are_on_demand_encrypted_and_recoverable(stack: str) -> None:
    template = synthesized().template(stack)
    template.resource_count_is("AWS::DynamoDB::Table", 2)
    template.all_resources_properties(
        "AWS::DynamoDB::Table",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "SSESpecification": {"SSEEnabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        },
    )


@BOTH
def test_companies_table_is_keyed_by_company_id(stack: str) -> None:
    table = synthesized().templates[stack]["Resources"]["CompaniesTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "company_id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "company_id", "AttributeType": "S"}]


@BOTH
def test_stateful_resources_are_retained_in_the_cloud_only(stack: str) -> None:
    resources = synthesized().templates[stack]["Resources"]
    expected = "Retain" if stack == CLOUD else "Delete"
    for logical_id in ("LedgerTable", "CompaniesTable", "ReportsBucket"):
        assert resources[logical_id]["DeletionPolicy"] == expected, logical_id


# ---------------------------------------------------------------------------- push queue


@BOTH
def test_queues_are_encrypted_and_refuse_plain_http(stack: str) -> None:
    synth = synthesized()
    template = synth.template(stack)
    template.all_resources_properties("AWS::SQS::Queue", {"SqsManagedSseEnabled": True})
    policies = synth.resources(stack, "AWS::SQS::QueuePolicy").values()
    protected = set()
    for policy in policies:
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}:
                protected |= {q["Fn::GetAtt"][0] for q in policy["Properties"]["Queues"] if "Fn::GetAtt" in q}
                protected |= {q["Ref"] for q in policy["Properties"]["Queues"] if "Ref" in q}
    assert protected == {"TaskQueue", "ReduceQueue", "DeadLetterQueue"}


@BOTH
def test_task_queue_redrives_to_the_dead_letter_queue(stack: str) -> None:
    queue = synthesized().templates[stack]["Resources"]["TaskQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


@BOTH
def test_reduce_queue_redrives_to_the_same_dead_letter_queue(stack: str) -> None:
    queue = synthesized().templates[stack]["Resources"]["ReduceQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600


@BOTH
def test_forwarder_event_source_reports_partial_batch_failures(stack: str) -> None:
    forwarder = functions(stack)["forwarder"]
    mappings = synthesized().resources(stack, "AWS::Lambda::EventSourceMapping")
    (mapping,) = [
        m["Properties"] for m in mappings.values() if m["Properties"]["FunctionName"] == {"Ref": forwarder["LogicalId"]}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["TaskQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["MaximumBatchingWindowInSeconds"] >= 1


@BOTH
def test_dead_letter_function_has_its_own_event_source_on_the_dlq(stack: str) -> None:
    dead_letter = functions(stack)["dead_letter"]
    mappings = synthesized().resources(stack, "AWS::Lambda::EventSourceMapping")
    (mapping,) = [
        m["Properties"]
        for m in mappings.values()
        if m["Properties"]["FunctionName"] == {"Ref": dead_letter["LogicalId"]}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    dlq = synthesized().templates[stack]["Resources"]["DeadLetterQueue"]["Properties"]
    assert dlq["VisibilityTimeout"] >= 6 * dead_letter["Timeout"]


@BOTH
def test_forwarder_may_send_to_both_queues_and_change_visibility(stack: str) -> None:
    statements = statements_of(stack, role_of(functions(stack)["forwarder"]))

    def allowed(action: str, queue: str) -> bool:
        return any(action in s["Action"] and s["Resource"] == {"Fn::GetAtt": [queue, "Arn"]} for s in statements)

    assert allowed("sqs:SendMessage", "TaskQueue")
    assert allowed("sqs:SendMessage", "DeadLetterQueue")
    assert allowed("sqs:ChangeMessageVisibility", "TaskQueue")
    assert allowed("sqs:SendMessage", "ReduceQueue")  # the completion that finishes a run enqueues its reduce


@BOTH
def test_reducer_consumes_the_reduce_queue_and_may_send_finalizes_and_dead_letters(stack: str) -> None:
    statements = statements_of(stack, role_of(functions(stack)["reducer"]))

    def allowed(action: str, queue: str) -> bool:
        return any(action in s["Action"] and s["Resource"] == {"Fn::GetAtt": [queue, "Arn"]} for s in statements)

    assert allowed("sqs:ChangeMessageVisibility", "ReduceQueue")
    assert allowed("sqs:SendMessage", "ReduceQueue")
    assert allowed("sqs:SendMessage", "DeadLetterQueue")
    assert not allowed("sqs:ChangeMessageVisibility", "TaskQueue")


@BOTH
def test_every_function_that_enqueues_reduce_tasks_may_send_to_the_reduce_queue(stack: str) -> None:
    fns = functions(stack)
    for name in ("forwarder", "reducer", "splitter", "dead_letter", "sweeper"):
        statements = statements_of(stack, role_of(fns[name]))
        assert any(
            "sqs:SendMessage" in s["Action"] and s["Resource"] == {"Fn::GetAtt": ["ReduceQueue", "Arn"]}
            for s in statements
        ), name
        variables = fns[name]["Environment"]["Variables"]
        assert variables[contract.REDUCE_QUEUE_URL] == {"Ref": "ReduceQueue"}, name
        assert variables[contract.TASK_QUEUE_URL] == {"Ref": "TaskQueue"}, name


# ---------------------------------------------------------------------------- functions


@BOTH
def test_functions_run_python_311_handlers_with_powertools_settings(stack: str) -> None:
    fns = functions(stack)
    assert set(fns) == {"splitter", "forwarder", "reducer", "dead_letter", "sweeper"}
    for name, fn in fns.items():
        assert fn["Runtime"] == "python3.11"
        assert fn["Handler"] == f"functions.{name}.handler.lambda_handler"
        variables = fn["Environment"]["Variables"]
        assert variables[contract.POWERTOOLS_SERVICE_NAME] == contract.POWERTOOLS_SERVICE
        assert variables[contract.POWERTOOLS_METRICS_NAMESPACE] == "Microprocess"
        assert variables[contract.LOG_LEVEL] == "INFO"


@BOTH
def test_each_function_gets_the_variables_it_reads(stack: str) -> None:
    fns = functions(stack)
    common = {contract.LEDGER_TABLE, contract.TASK_QUEUE_URL}
    wanted = {
        "splitter": common | {contract.COMPANIES_TABLE, contract.REPORTS_BUCKET},
        "forwarder": common
        | {
            contract.DEAD_LETTER_QUEUE_URL,
            contract.QUEUE_SERVICE_URL,
            contract.SIGNING_SECRET_ARN,
            contract.REPORTS_BUCKET,
        },
        "reducer": common
        | {
            contract.REDUCE_QUEUE_URL,
            contract.DEAD_LETTER_QUEUE_URL,
            contract.QUEUE_SERVICE_URL,
            contract.SIGNING_SECRET_ARN,
        },
        "dead_letter": common | {contract.DEAD_LETTER_QUEUE_URL, contract.REPORTS_BUCKET},
        "sweeper": common | {contract.SPLITTER_FUNCTION_NAME},
    }
    for name, variables in wanted.items():
        assert variables <= set(fns[name]["Environment"]["Variables"]), name
    assert fns["sweeper"]["Environment"]["Variables"][contract.SPLITTER_FUNCTION_NAME] == {
        "Ref": fns["splitter"]["LogicalId"]
    }


def test_cloud_functions_use_the_powertools_layer_and_tracing() -> None:
    for fn in functions(CLOUD).values():
        (layer,) = fn["Layers"]
        assert layer.startswith(
            "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64:"
        )
        assert fn["TracingConfig"] == {"Mode": "Active"}


def test_local_functions_use_no_public_layer_and_no_tracing() -> None:
    for fn in functions(LOCAL).values():
        assert "Layers" not in fn
        assert "TracingConfig" not in fn
        assert fn["Environment"]["Variables"][contract.POWERTOOLS_TRACE_DISABLED] == "true"


def test_local_layer_path_adds_a_dependencies_layer(tmp_path: Any) -> None:
    from tests.test_infra_synth import synthesize

    (tmp_path / "python").mkdir()
    (tmp_path / "python" / "marker.py").write_text("")
    synth = synthesize({"stage": "local", "local_layer_path": str(tmp_path)})
    (layer_id, layer) = only(synth.resources(LOCAL, "AWS::Lambda::LayerVersion"))
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.11"]
    for fn in synth.resources(LOCAL, "AWS::Lambda::Function").values():
        assert fn["Properties"]["Layers"] == [{"Ref": layer_id}]


def test_local_forwarder_pushes_to_the_local_queue_service() -> None:
    variables = functions(LOCAL)["forwarder"]["Environment"]["Variables"]
    assert variables[contract.QUEUE_SERVICE_URL] == "http://127.0.0.1:8001"
    reducer = functions(LOCAL)["reducer"]["Environment"]["Variables"]
    assert reducer[contract.QUEUE_SERVICE_URL] == "http://127.0.0.1:8001"


def test_forwarder_runs_in_the_vpc_in_the_cloud_only() -> None:
    assert "VpcConfig" in functions(CLOUD)["forwarder"]
    pushers = ("forwarder", "reducer")
    assert all("VpcConfig" not in fn for name, fn in functions(CLOUD).items() if name not in pushers)
    assert all("VpcConfig" not in fn for fn in functions(LOCAL).values())
    # the reducer pushes too: in the VPC, in the forwarder's security group (the one the queue service admits)
    forwarder, reducer = functions(CLOUD)["forwarder"]["VpcConfig"], functions(CLOUD)["reducer"]["VpcConfig"]
    assert reducer == forwarder


@BOTH
def test_each_function_logs_to_its_own_log_group_with_retention(stack: str) -> None:
    groups = synthesized().resources(stack, "AWS::Logs::LogGroup")
    for fn in functions(stack).values():
        group = fn["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[group]["Properties"]["RetentionInDays"] > 0


# ---------------------------------------------------------------------------- splitter and sweeper


@BOTH
def test_splitter_may_invoke_itself(stack: str) -> None:
    splitter = functions(stack)["splitter"]
    statements = statements_of(stack, role_of(splitter))
    assert {
        "Action": "lambda:InvokeFunction",
        "Effect": "Allow",
        "Resource": {"Fn::GetAtt": [splitter["LogicalId"], "Arn"]},
    } in statements


@BOTH
def test_sweeper_runs_every_five_minutes(stack: str) -> None:
    sweeper = functions(stack)["sweeper"]
    rules = [
        r["Properties"]
        for r in synthesized().resources(stack, "AWS::Events::Rule").values()
        if r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [sweeper["LogicalId"], "Arn"]}
    ]
    assert [r["ScheduleExpression"] for r in rules] == ["rate(5 minutes)"]
    statements = statements_of(stack, role_of(sweeper))
    splitter_arn = {"Fn::GetAtt": [functions(stack)["splitter"]["LogicalId"], "Arn"]}
    (invoke,) = [s for s in statements if s["Action"] == "lambda:InvokeFunction"]
    assert splitter_arn in invoke["Resource"]


# ---------------------------------------------------------------------------- reports


@BOTH
def test_reports_bucket_is_private_encrypted_and_tls_only(stack: str) -> None:
    resources = synthesized().templates[stack]["Resources"]
    bucket = resources["ReportsBucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    policies = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in synthesized().resources(stack, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": "ReportsBucket"}
    ]
    (statements,) = policies
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
    )


@BOTH
def test_reports_bucket_expires_intermediate_objects(stack: str) -> None:
    bucket = synthesized().templates[stack]["Resources"]["ReportsBucket"]["Properties"]
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-quarantine"]["Prefix"] == "quarantine/"
    assert rules["expire-claims"]["Prefix"] == "claims/"
    parts = rules["expire-report-parts"]
    assert parts["Prefix"] == "reports/"
    assert parts["TagFilters"] == [{"Key": "microprocess:lifecycle", "Value": "intermediate"}]
    for rule in (rules["expire-quarantine"], rules["expire-claims"], parts):
        assert rule["ExpirationInDays"] == 30
        assert rule["Status"] == "Enabled"
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


@BOTH
def test_ses_identity_for_the_default_sender(stack: str) -> None:
    synthesized().template(stack).has_resource_properties(
        "AWS::SES::EmailIdentity", {"EmailIdentity": "reports@example.com"}
    )


# ---------------------------------------------------------------------------- signing secret


@BOTH
def test_signing_secret_is_generated(stack: str) -> None:
    secret = synthesized().templates[stack]["Resources"]["SigningSecret"]["Properties"]
    assert secret["GenerateSecretString"]["PasswordLength"] == 64
    assert secret["GenerateSecretString"]["ExcludePunctuation"] is True


@BOTH
def test_only_the_forwarder_and_the_queue_service_read_the_signing_secret(stack: str) -> None:
    readers = set()
    for policy in synthesized().resources(stack, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if "secretsmanager:GetSecretValue" in actions or "secretsmanager:*" in actions:
                assert statement["Resource"] == {"Ref": "SigningSecret"}
                readers |= {r["Ref"] for r in policy["Properties"]["Roles"]}
    # the two pushers: the forwarder (tasks) and the reducer (reduce parts and finalizes) sign their calls
    expected = {role_of(functions(stack)["forwarder"]), role_of(functions(stack)["reducer"])}
    if stack == CLOUD:
        task_defs = synthesized().resources(CLOUD, "AWS::ECS::TaskDefinition").values()
        (queue_task,) = [
            t
            for t in task_defs
            if {"Name": "SERVICE_ROLE", "Value": "queue"} in t["Properties"]["ContainerDefinitions"][0]["Environment"]
        ]
        expected.add(queue_task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0])
    assert readers == expected


# ---------------------------------------------------------------------------- scores service (cloud)


def test_two_fargate_services_live_and_queue() -> None:
    synth = synthesized()
    template = synth.template(CLOUD)
    template.resource_count_is("AWS::ECS::Service", 2)
    template.all_resources_properties("AWS::ECS::Service", {"LaunchType": "FARGATE"})
    roles = set()
    for task in synth.resources(CLOUD, "AWS::ECS::TaskDefinition").values():
        (container,) = task["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        roles.add(env[contract.SERVICE_ROLE])
        assert container["PortMappings"] == [{"ContainerPort": contract.SERVICE_PORT, "Protocol": "tcp"}]
        assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert roles == {"live", "queue"}
    # each service logs to its own group
    groups = {
        t["Properties"]["ContainerDefinitions"][0]["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]
        for t in synth.resources(CLOUD, "AWS::ECS::TaskDefinition").values()
    }
    assert len(groups) == 2


def test_each_service_has_a_health_checked_target_group_and_cpu_scaling() -> None:
    synth = synthesized()
    template = synth.template(CLOUD)
    template.resource_count_is("AWS::ElasticLoadBalancingV2::TargetGroup", 2)
    template.all_resources_properties(
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        {
            "HealthCheckPath": "/healthz",
            "Matcher": {"HttpCode": "200"},
            "TargetType": "ip",
            "Port": contract.SERVICE_PORT,
        },
    )
    template.resource_count_is("AWS::ApplicationAutoScaling::ScalingPolicy", 2)
    template.all_resources_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": Match.object_like(
                {"PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}}
            ),
        },
    )


def test_live_is_public_and_queue_is_internal() -> None:
    template = synthesized().template(CLOUD)
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::LoadBalancer", {"Scheme": "internet-facing"})
    template.has_resource_properties("AWS::ElasticLoadBalancingV2::LoadBalancer", {"Scheme": "internal"})


def test_only_the_forwarder_reaches_the_queue_service() -> None:
    synth = synthesized()
    resources = synth.templates[CLOUD]["Resources"]
    (internal_alb,) = [
        r
        for r in synth.resources(CLOUD, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
        if r["Properties"]["Scheme"] == "internal"
    ]
    (alb_group,) = [g["Fn::GetAtt"][0] for g in internal_alb["Properties"]["SecurityGroups"]]
    assert "SecurityGroupIngress" not in resources[alb_group]["Properties"]
    ingress = [
        r["Properties"]
        for r in synth.resources(CLOUD, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [alb_group, "GroupId"]}
    ]
    forwarder_groups = functions(CLOUD)["forwarder"]["VpcConfig"]["SecurityGroupIds"]
    assert [i["SourceSecurityGroupId"] for i in ingress] == forwarder_groups
    assert all("CidrIp" not in i for i in ingress)


def test_without_a_domain_the_services_answer_on_the_alb_names() -> None:
    outputs = synthesized().templates[CLOUD]["Outputs"]
    live = json.dumps(outputs["LiveServiceUrl"]["Value"])
    queue = json.dumps(outputs["QueueServiceUrl"]["Value"])
    assert "http://" in live and "DNSName" in live
    assert "http://" in queue and "DNSName" in queue
    synthesized().template(CLOUD).all_resources_properties(
        "AWS::ElasticLoadBalancingV2::Listener", {"Port": 80, "Protocol": "HTTP"}
    )


def test_with_a_domain_hosts_route_over_https() -> None:
    synth = synthesized_with_domain()
    template = synth.template(CLOUD)
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {"Port": 443, "Protocol": "HTTPS", "DefaultActions": [Match.object_like({"Type": "fixed-response"})]},
    )
    for host in ("scores-live.example.com", "scores-queue.example.com"):
        template.has_resource_properties(
            "AWS::ElasticLoadBalancingV2::ListenerRule",
            {"Conditions": [{"Field": "host-header", "HostHeaderConfig": {"Values": [host]}}]},
        )
        template.has_resource_properties(
            "AWS::Route53::RecordSet", {"Name": f"{host}.", "Type": "A", "HostedZoneId": "Z0123456789ABCDEFGHIJ"}
        )
    outputs = synth.templates[CLOUD]["Outputs"]
    assert outputs["LiveServiceUrl"]["Value"] == "https://scores-live.example.com"
    assert outputs["QueueServiceUrl"]["Value"] == "https://scores-queue.example.com"
    (forwarder,) = [
        f["Properties"]
        for f in synth.resources(CLOUD, "AWS::Lambda::Function").values()
        if f["Properties"]["Handler"].startswith("functions.forwarder.")
    ]
    assert forwarder["Environment"]["Variables"][contract.QUEUE_SERVICE_URL] == "https://scores-queue.example.com"
    # plain HTTP on the public ALB only redirects
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {"Port": 80, "DefaultActions": [Match.object_like({"Type": "redirect"})]},
    )


def test_queue_service_may_send_the_report_email() -> None:
    synth = synthesized()
    task_defs = synth.resources(CLOUD, "AWS::ECS::TaskDefinition").values()
    (queue_task,) = [
        t
        for t in task_defs
        if {"Name": "SERVICE_ROLE", "Value": "queue"} in t["Properties"]["ContainerDefinitions"][0]["Environment"]
    ]
    statements = statements_of(CLOUD, queue_task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0])
    assert any("ses:SendEmail" in s["Action"] for s in statements)


# ---------------------------------------------------------------------------- monitoring (cloud)


def test_dashboard_shows_the_reduce_queue_and_the_reducer() -> None:
    body = dashboard_body(CLOUD)
    assert "Reduce queue: visible / in flight" in body and "Reduce queue: age of oldest message (s)" in body
    assert '"ReduceQueue","QueueName"' in body.replace(" ", "")
    assert functions(CLOUD)["reducer"]["LogicalId"] in body


def test_dashboard_shows_the_queue_the_forwarder_the_services_and_each_job() -> None:
    body = dashboard_body(CLOUD)
    for metric in (
        "ApproximateNumberOfMessagesVisible",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateAgeOfOldestMessage",
        "Invocations",
        "Errors",
        "Throttles",
        "ConcurrentExecutions",
        "Duration",
        "RequestCount",
        "HTTPCode_Target_5XX_Count",
        "TargetResponseTime",
        *contract.JOB_METRICS,
    ):
        assert f'"{metric}"' in body, metric
    assert '"p95"' in body
    assert '"Microprocess"' in body and '"job"' in body and '"credit-scores"' in body


def test_alarms_page_through_an_encrypted_topic() -> None:
    synth = synthesized()
    resources = synth.templates[CLOUD]["Resources"]
    topic_id, topic = only(synth.resources(CLOUD, "AWS::SNS::Topic"))
    assert "KmsMasterKeyId" in topic["Properties"]
    alarms = {
        a["Properties"]["MetricName"]: a["Properties"]
        for a in synth.resources(CLOUD, "AWS::CloudWatch::Alarm").values()
    }
    assert set(alarms) == {"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage", "Errors", "StuckRuns"}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]
    dlq = alarms["ApproximateNumberOfMessagesVisible"]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    assert dlq["Threshold"] == 1 and dlq["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarms["ApproximateAgeOfOldestMessage"]["Threshold"] == 3600
    forwarder = functions(CLOUD)["forwarder"]["LogicalId"]
    assert alarms["Errors"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": forwarder}}]
    assert alarms["StuckRuns"]["Namespace"] == "Microprocess"
    assert {d["Name"]: d["Value"] for d in alarms["StuckRuns"]["Dimensions"]} == {
        "job": "credit-scores",
        "service": contract.POWERTOOLS_SERVICE,
    }
    assert resources[topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]]["Properties"]["EnableKeyRotation"] is True


# ---------------------------------------------------------------------------- outputs and the local stage


def test_outputs_are_exactly_the_contract() -> None:
    synth = synthesized()
    assert list(synth.templates[LOCAL]["Outputs"]) == list(contract.LOCAL_OUTPUTS)
    assert list(synth.templates[CLOUD]["Outputs"]) == list(contract.CLOUD_OUTPUTS)
    assert contract.LOCAL_OUTPUTS == (
        "TaskQueueUrl",
        "DeadLetterQueueUrl",
        "LedgerTable",
        "CompaniesTable",
        "ReportsBucket",
        "SplitterFunctionName",
        "ForwarderFunctionName",
        "DeadLetterFunctionName",
        "SweeperFunctionName",
        "SigningSecretArn",
        "ReduceQueueUrl",
        "ReduceForwarderFunctionName",
    )
    assert contract.CLOUD_OUTPUTS[len(contract.LOCAL_OUTPUTS) :] == (
        "LiveServiceUrl",
        "QueueServiceUrl",
        "DashboardName",
        "AlarmTopicArn",
    )


def test_local_stage_has_nothing_the_emulator_cannot_create() -> None:
    resources = synthesized().templates[LOCAL]["Resources"]
    types = {r["Type"] for r in resources.values()}
    assert not [t for t in types if t.startswith("Custom::") or t == "AWS::CloudFormation::CustomResource"]
    assert "AWS::CDK::Metadata" not in types
    assert not [
        t for t in types if t.split("::")[1] in ("EC2", "ECS", "ElasticLoadBalancingV2", "CloudWatch", "SNS", "KMS")
    ]
    assert len([t for t in resources.values() if t["Type"] == "AWS::Lambda::Function"]) == 5
    assert "017000801446" not in json.dumps(resources)


def test_cloud_stage_has_no_custom_resources() -> None:
    types = {r["Type"] for r in synthesized().templates[CLOUD]["Resources"].values()}
    assert not [t for t in types if t.startswith("Custom::") or t == "AWS::CloudFormation::CustomResource"]


def test_local_stage_takes_a_laptop_cap_on_forwarder_concurrency() -> None:
    from infra.push_settings import REDUCE_MAX_CONCURRENCY
    from tests.declared import JOBS
    from tests.test_infra_synth import synthesize

    declared = min(job.max_concurrency for job in JOBS)
    synth = synthesize({"stage": "all", "forwarder_max_concurrency": "8"})

    def forwarder_concurrency(stack: str, queue: str = "TaskQueue") -> set[int]:
        mappings = synth.resources(stack, "AWS::Lambda::EventSourceMapping").values()
        return {
            m["Properties"]["ScalingConfig"]["MaximumConcurrency"]
            for m in mappings
            if "ScalingConfig" in m["Properties"]
            and m["Properties"]["EventSourceArn"] == {"Fn::GetAtt": [queue, "Arn"]}
        }

    assert forwarder_concurrency(LOCAL) == {min(8, declared)}
    assert forwarder_concurrency(CLOUD) == {declared}  # the cloud keeps the declarations
    # the reducer's small cap, lowered by the laptop cap too
    assert forwarder_concurrency(LOCAL, "ReduceQueue") == {min(8, REDUCE_MAX_CONCURRENCY, declared)}
    assert forwarder_concurrency(CLOUD, "ReduceQueue") == {min(REDUCE_MAX_CONCURRENCY, declared)}


def test_local_stage_takes_a_short_visibility_timeout() -> None:
    from tests.test_infra_synth import synthesize

    synth = synthesize({"stage": "all", "task_visibility_timeout_s": "20"})

    def task_queue_visibility(stack: str) -> int:
        return synth.templates[stack]["Resources"]["TaskQueue"]["Properties"]["VisibilityTimeout"]

    assert task_queue_visibility(LOCAL) == 20
    assert task_queue_visibility(CLOUD) == synthesized().stacks[CLOUD].push_settings.visibility_timeout_s


def test_local_stage_takes_a_short_reduce_visibility_timeout() -> None:
    from tests.test_infra_synth import synthesize

    synth = synthesize({"stage": "all", "task_visibility_timeout_s": "20", "reduce_visibility_timeout_s": "20"})

    def visibility(stack: str, queue: str) -> int:
        return synth.templates[stack]["Resources"][queue]["Properties"]["VisibilityTimeout"]

    assert visibility(LOCAL, "TaskQueue") == visibility(LOCAL, "ReduceQueue") == 20
    cloud = synthesized().stacks[CLOUD].push_settings
    assert visibility(CLOUD, "ReduceQueue") == cloud.reduce_visibility_timeout_s
    assert visibility(CLOUD, "TaskQueue") == cloud.visibility_timeout_s


def test_push_settings_derive_a_short_task_forwarder_and_a_long_reducer() -> None:
    from infra.push_settings import FORWARDER_OVERHEAD_S, VISIBILITY_FACTOR, PushSettings
    from microprocess.pipeline.forwarder import REDUCE_TIMEOUT_S
    from tests.declared import JOBS

    push = PushSettings.from_jobs(JOBS)
    assert push.forwarder_timeout_s == max(job.task_timeout_s for job in JOBS) + FORWARDER_OVERHEAD_S == 70
    assert push.visibility_timeout_s == VISIBILITY_FACTOR * push.forwarder_timeout_s == 420
    assert push.reduce_forwarder_timeout_s == REDUCE_TIMEOUT_S + FORWARDER_OVERHEAD_S == 660
    assert push.reduce_visibility_timeout_s == VISIBILITY_FACTOR * push.reduce_forwarder_timeout_s == 3960
    assert (push.reduce_batch_size, push.tasks.timeout_s, push.reduces.timeout_s) == (1, 70, 660)


def test_reduce_visibility_is_a_local_stage_setting() -> None:
    from pathlib import Path

    from infra.stack import MicroprocessStack, StageSettings

    settings = StageSettings(repo_root=Path("."), ses_sender="a@example.com", reduce_visibility_timeout_s=20)
    with pytest.raises(ValueError, match="reduce_visibility_timeout_s is a local-stage setting"):
        MicroprocessStack(None, "X", settings=settings)  # type: ignore[arg-type]
