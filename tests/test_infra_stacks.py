"""What the stacks promise, checked on the synthesized templates (`assertions.Template`)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match

from infra import contract
from microprocess.stacks import LAMBDA_ARCHITECTURE
from tests.declared import DECLARATIONS, JOBS
from tests.test_infra_synth import (
    CLOUD,
    LOCAL,
    render,
    render_json,
    synthesize,
    synthesized,
    synthesized_external,
    synthesized_with_domain,
)

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]
BOTH = pytest.mark.parametrize("stack", [CLOUD, LOCAL])
#: The task queue of each declared job, by job name (logical IDs pinned from the job names).
TASK_QUEUES = {"credit-scores": "CreditScoresTaskQueue", "invoice-reminders": "InvoiceRemindersTaskQueue"}
SIGNING_SECRETS = {"scores": "ScoresSigningSecret", "reminders": "RemindersSigningSecret"}
#: The live API key of each bundled service (the repository's one: scores).
API_KEYS = {"scores": "ScoresApiKey"}


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


def service_roles(stack: str) -> dict[str, str]:
    """The logical id of each service process's role, by its key in the `ServiceRoleArns` output
    (`scores-live`, `scores-queue`, and locally `reminders`)."""
    parts = synthesized().templates[stack]["Outputs"]["ServiceRoleArns"]["Value"]["Fn::Join"][1]
    found: dict[str, str] = {}
    for text, ref in zip(parts[0::2], parts[1::2], strict=False):
        key = re.search(r'"([^"]+)":"$', text)
        assert key is not None, text
        found[key.group(1)] = ref["Fn::GetAtt"][0]
    return found


def allowed_on(statements: list[dict[str, Any]], action: str) -> set[str]:
    """The resources (rendered) on which `statements` allow `action`."""
    out: set[str] = set()
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action in actions:
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            out |= {render(t) for t in targets}
    return out


def mappings_of(stack: str, function: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The event source mappings of `function`, by the logical ID of the queue they consume."""
    out = {}
    for mapping in synthesized().resources(stack, "AWS::Lambda::EventSourceMapping").values():
        if mapping["Properties"]["FunctionName"] == {"Ref": function["LogicalId"]}:
            out[mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]] = mapping["Properties"]
    return out


def dashboard_body(stack: str) -> str:
    _, dashboard = only(synthesized().resources(stack, "AWS::CloudWatch::Dashboard"))
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


# ---------------------------------------------------------------------------- ledger and companies


@BOTH
def test_tables_are_on_demand_encrypted_and_recoverable(stack: str) -> None:
    template = synthesized().template(stack)
    # the ledger and one table per declared [tables.<role>]
    template.resource_count_is("AWS::DynamoDB::Table", 1 + len(DECLARATIONS.tables))
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
    assert protected == {*TASK_QUEUES.values(), "ReduceQueue", "DeadLetterQueue"}


def test_one_task_queue_per_declared_job() -> None:
    assert set(TASK_QUEUES) == set(JOBS.names())


@BOTH
def test_every_task_queue_redrives_to_the_dead_letter_queue(stack: str) -> None:
    for logical_id in TASK_QUEUES.values():
        queue = synthesized().templates[stack]["Resources"][logical_id]["Properties"]
        assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
        assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600


@BOTH
def test_reduce_queue_redrives_to_the_same_dead_letter_queue(stack: str) -> None:
    queue = synthesized().templates[stack]["Resources"]["ReduceQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600


@BOTH
def test_forwarder_has_one_event_source_per_job_reporting_partial_batch_failures(stack: str) -> None:
    mappings = mappings_of(stack, functions(stack)["forwarder"])
    assert set(mappings) == set(TASK_QUEUES.values())
    for mapping in mappings.values():
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
def test_forwarder_may_send_to_every_queue_and_change_visibility_on_each_task_queue(stack: str) -> None:
    statements = statements_of(stack, role_of(functions(stack)["forwarder"]))

    def allowed(action: str, queue: str) -> bool:
        return f"<{queue}.Arn>" in allowed_on(statements, action)

    for task_queue in TASK_QUEUES.values():
        assert allowed("sqs:SendMessage", task_queue)
        assert allowed("sqs:ChangeMessageVisibility", task_queue)
    assert allowed("sqs:SendMessage", "DeadLetterQueue")
    assert allowed("sqs:SendMessage", "ReduceQueue")  # the completion that finishes a run enqueues its reduce
    assert not allowed("sqs:ChangeMessageVisibility", "ReduceQueue")


@BOTH
def test_reducer_consumes_the_reduce_queue_and_may_send_finalizes_and_dead_letters(stack: str) -> None:
    statements = statements_of(stack, role_of(functions(stack)["reducer"]))

    def allowed(action: str, queue: str) -> bool:
        return f"<{queue}.Arn>" in allowed_on(statements, action)

    assert allowed("sqs:ChangeMessageVisibility", "ReduceQueue")
    assert allowed("sqs:SendMessage", "ReduceQueue")
    assert allowed("sqs:SendMessage", "DeadLetterQueue")
    for task_queue in TASK_QUEUES.values():
        assert not allowed("sqs:ChangeMessageVisibility", task_queue)
        assert not allowed("sqs:SendMessage", task_queue)


@BOTH
def test_reducer_writes_the_built_in_reports_and_mails_them(stack: str) -> None:
    statements = statements_of(stack, role_of(functions(stack)["reducer"]))
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert writes
    for statement in writes:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        objects = [render(r) for r in resources if "/" in render(r)]
        assert objects == ["<ReportsBucket.Arn>/reports/*"]  # only the reports prefix, never claims/ or manifests/
    assert any("ses:SendEmail" in s["Action"] for s in statements)
    variables = functions(stack)["reducer"]["Environment"]["Variables"]
    assert variables[contract.SES_SENDER] == "reports@example.com"


@BOTH
def test_every_function_that_enqueues_reduce_tasks_may_send_to_the_reduce_queue(stack: str) -> None:
    fns = functions(stack)
    for name in ("forwarder", "reducer", "splitter", "dead_letter", "sweeper"):
        statements = statements_of(stack, role_of(fns[name]))
        assert "<ReduceQueue.Arn>" in allowed_on(statements, "sqs:SendMessage"), name
        variables = fns[name]["Environment"]["Variables"]
        assert variables[contract.REDUCE_QUEUE_URL] == {"Ref": "ReduceQueue"}, name
        assert render_json(variables[contract.JOB_QUEUES]) == {
            job: f"<{logical_id}>" for job, logical_id in TASK_QUEUES.items()
        }, name


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
    common = {
        contract.LEDGER_TABLE,
        contract.REPORTS_BUCKET,
        contract.MICROPROCESS_DECLARATIONS,
        contract.JOB_QUEUES,
        contract.REDUCE_QUEUE_URL,
        contract.DEAD_LETTER_QUEUE_URL,
    }
    own = {
        "splitter": {contract.SOURCE_TABLES},
        # the sweeper's timing, from which the forwarder derives how long a deferred task waits uncounted
        "forwarder": {contract.SERVICE_ENDPOINTS, contract.STUCK_AFTER_S, contract.SWEEP_PERIOD_S},
        "reducer": {contract.SERVICE_ENDPOINTS, contract.SES_SENDER},
        "dead_letter": set(),
        "sweeper": {contract.SPLITTER_FUNCTION_NAME, contract.STUCK_AFTER_S, contract.SWEEP_PERIOD_S},
    }
    for name, extra in own.items():
        variables = set(fns[name]["Environment"]["Variables"]) - contract.POWERTOOLS_VARIABLES
        assert variables == common | extra, name
        assert fns[name]["Environment"]["Variables"][contract.MICROPROCESS_DECLARATIONS] == "microprocess.toml"
    assert fns["sweeper"]["Environment"]["Variables"][contract.SPLITTER_FUNCTION_NAME] == {
        "Ref": fns["splitter"]["LogicalId"]
    }
    assert render_json(fns["splitter"]["Environment"]["Variables"][contract.SOURCE_TABLES]) == {
        role: f"<{role.capitalize()}Table>" for role in DECLARATIONS.tables
    }


@BOTH
def test_pushers_know_each_service_url_and_its_own_signing_secret(stack: str) -> None:
    for name in ("forwarder", "reducer"):
        endpoints = render_json(functions(stack)[name]["Environment"]["Variables"][contract.SERVICE_ENDPOINTS])
        assert set(endpoints) == set(DECLARATIONS.services.names())
        for service, endpoint in endpoints.items():
            assert endpoint["secret_arn"] == f"<{SIGNING_SECRETS[service]}>"
        if stack == CLOUD:
            # the bundled service behind its internal ALB; the external one at its declared URL
            assert endpoints["scores"]["url"].startswith("http://<") and "InternalAlb" in endpoints["scores"]["url"]
            assert endpoints["reminders"]["url"] == "https://reminders-queue.example.com"
        else:
            # no service_urls context: the default local ports, in declaration order
            assert endpoints == {
                "scores": {"url": "http://127.0.0.1:8001", "secret_arn": "<ScoresSigningSecret>"},
                "reminders": {"url": "http://127.0.0.1:8002", "secret_arn": "<RemindersSigningSecret>"},
            }


def test_cloud_functions_use_the_powertools_layer_and_tracing_but_the_task_forwarder() -> None:
    for name, fn in functions(CLOUD).items():
        (layer,) = fn["Layers"]
        assert layer.startswith(
            "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-arm64:"
        )
        # Graviton: a GB-second costs 20 % less (the price the planner uses: LAMBDA_ARCHITECTURE)
        assert fn["Architectures"] == ["arm64"] == [LAMBDA_ARCHITECTURE]
        variables = fn["Environment"]["Variables"]
        if name == "forwarder":  # once per batch: X-Ray traces would cost per item (trace_forwarder)
            assert "TracingConfig" not in fn
            assert variables[contract.POWERTOOLS_TRACE_DISABLED] == "true"
        else:
            assert fn["TracingConfig"] == {"Mode": "Active"}
            assert contract.POWERTOOLS_TRACE_DISABLED not in variables


def test_trace_forwarder_traces_the_task_forwarder_too() -> None:
    from tests.test_infra_synth import synthesize

    synth = synthesize({"stage": "cloud", "trace_forwarder": "true"})
    for fn in synth.resources(CLOUD, "AWS::Lambda::Function").values():
        assert fn["Properties"]["TracingConfig"] == {"Mode": "Active"}
        assert contract.POWERTOOLS_TRACE_DISABLED not in fn["Properties"]["Environment"]["Variables"]
    with pytest.raises(ValueError, match="'trace_forwarder' must be true or false"):
        synthesize({"stage": "cloud", "trace_forwarder": "yes"})


def test_local_functions_use_no_public_layer_and_no_tracing() -> None:
    for fn in functions(LOCAL).values():
        assert "Layers" not in fn
        assert "TracingConfig" not in fn
        assert "Architectures" not in fn  # the host's own CPU runs them
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


def test_local_stage_takes_the_service_urls_from_context() -> None:
    from tests.test_infra_synth import synthesize

    urls = {"scores": "http://127.0.0.1:9101", "reminders": "http://127.0.0.1:9102/v1"}
    synth = synthesize({"stage": "local", "service_urls": json.dumps(urls)})
    for fn in synth.resources(LOCAL, "AWS::Lambda::Function").values():
        variables = fn["Properties"]["Environment"]["Variables"]
        if contract.SERVICE_ENDPOINTS in variables:
            endpoints = render_json(variables[contract.SERVICE_ENDPOINTS])
            assert {name: e["url"] for name, e in endpoints.items()} == urls


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
def test_one_generated_signing_secret_per_service_and_an_api_key_per_live_role(stack: str) -> None:
    secrets = synthesized().resources(stack, "AWS::SecretsManager::Secret")
    assert set(secrets) == set(SIGNING_SECRETS.values()) | set(API_KEYS.values())
    for logical_id, secret in secrets.items():
        length = 40 if logical_id in API_KEYS.values() else 64
        assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] == length
        assert secret["Properties"]["GenerateSecretString"]["ExcludePunctuation"] is True


@BOTH
def test_only_the_pushers_and_the_bundled_queue_service_read_a_signing_secret(stack: str) -> None:
    readers: dict[str, set[str]] = {logical_id: set() for logical_id in (*SIGNING_SECRETS.values(), *API_KEYS.values())}
    for policy in synthesized().resources(stack, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if "secretsmanager:GetSecretValue" in actions or "secretsmanager:*" in actions:
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                for target in targets:
                    readers[target["Ref"]] |= {r["Ref"] for r in policy["Properties"]["Roles"]}
    # the two pushers: the forwarder (tasks) and the reducer (reduce parts and finalizes) sign their calls
    pushers = {role_of(functions(stack)["forwarder"]), role_of(functions(stack)["reducer"])}
    roles = service_roles(stack)
    # locally, the external service's process runs under a role that reads its own secret only
    assert readers["RemindersSigningSecret"] == pushers | ({roles["reminders"]} if stack == LOCAL else set())
    expected = pushers | {roles["scores-queue"]}
    if stack == CLOUD:
        task_defs = synthesized().resources(CLOUD, "AWS::ECS::TaskDefinition").values()
        (queue_task,) = [
            t
            for t in task_defs
            if {"Name": "SERVICE_ROLE", "Value": "queue"} in t["Properties"]["ContainerDefinitions"][0]["Environment"]
        ]
        expected.add(queue_task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0])
        env = {e["Name"]: e["Value"] for e in queue_task["Properties"]["ContainerDefinitions"][0]["Environment"]}
        assert env[contract.SIGNING_SECRET_ARN] == {"Ref": "ScoresSigningSecret"}
    assert readers["ScoresSigningSecret"] == expected


def secret_readers(synth: Any, stack: str, logical_id: str) -> set[str]:
    """The roles whose policies allow reading the secret `logical_id`."""
    readers: set[str] = set()
    for policy in synth.resources(stack, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if {"Ref": logical_id} in targets and any(a.startswith("secretsmanager:") for a in actions):
                readers |= {r["Ref"] for r in policy["Properties"]["Roles"]}
    return readers


def task_environments(synth: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each cloud task definition's (task role, container environment), by SERVICE_ROLE."""
    out = {}
    for task in synth.resources(CLOUD, "AWS::ECS::TaskDefinition").values():
        (container,) = task["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        out[env[contract.SERVICE_ROLE]] = (task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0], env)
    return out


def test_only_the_live_role_reads_its_api_key() -> None:
    synth = synthesized()
    tasks = task_environments(synth)
    live_role, live_env = tasks["live"]
    # the live container gets the key's ARN, never the key; the queue container gets nothing of it
    assert live_env[contract.API_KEY_SECRET_ARN] == {"Ref": "ScoresApiKey"}
    assert contract.API_KEY_SECRET_ARN not in tasks["queue"][1]
    # and the live task role is the one reader: no function, no queue role
    assert secret_readers(synth, CLOUD, "ScoresApiKey") == {live_role}


def test_local_stage_has_the_api_key_for_the_live_process() -> None:
    outputs = synthesized().templates[LOCAL]["Outputs"]
    assert render_json(outputs["ApiKeyArns"]["Value"]) == {"scores": "<ScoresApiKey>"}
    # no function reads it: only the local live process, under the live role as in the cloud
    assert secret_readers(synthesized(), LOCAL, "ScoresApiKey") == {service_roles(LOCAL)["scores-live"]}


def test_an_external_only_stage_has_no_api_key() -> None:
    synth = synthesized_external()
    assert not [k for k in synth.resources(CLOUD, "AWS::SecretsManager::Secret") if k.endswith("ApiKey")]
    assert render_json(synth.templates[CLOUD]["Outputs"]["ApiKeyArns"]["Value"]) == {}


def test_the_services_docs_are_off_in_the_cloud_unless_asked_for() -> None:
    # GIVEN the default cloud stage THEN both roles run with SERVICE_DOCS=false
    for _, env in task_environments(synthesized()).values():
        assert env[contract.SERVICE_DOCS] == "false"
    # GIVEN -c service_docs=true THEN both roles serve their docs
    asked = synthesize({"stage": "cloud", "service_docs": "true"})
    for _, env in task_environments(asked).values():
        assert env[contract.SERVICE_DOCS] == "true"
    with pytest.raises(ValueError, match="context 'service_docs' must be true or false"):
        synthesize({"stage": "cloud", "service_docs": "yes please"})


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
    urls = render_json(outputs["ServiceUrls"]["Value"])
    assert urls["scores"].startswith("http://<") and urls["scores"].endswith(".DNSName>")
    assert urls["reminders"] == "https://reminders-queue.example.com"
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
    records = {
        r["Properties"]["Name"]: r["Properties"] for r in synth.resources(CLOUD, "AWS::Route53::RecordSet").values()
    }
    assert set(records) == {"scores-live.example.com.", "scores-queue.example.com."}
    # the public host in the public zone; the queue host only in a private zone of the VPC
    assert records["scores-live.example.com."]["HostedZoneId"] == "Z0123456789ABCDEFGHIJ"
    (zone_id, zone) = only(synth.resources(CLOUD, "AWS::Route53::HostedZone"))
    assert records["scores-queue.example.com."]["HostedZoneId"] == {"Ref": zone_id}
    assert zone["Properties"]["Name"] == "scores-queue.example.com."
    (vpc_id,) = synth.resources(CLOUD, "AWS::EC2::VPC")
    assert zone["Properties"]["VPCs"] == [{"VPCId": {"Ref": vpc_id}, "VPCRegion": "us-east-1"}]
    outputs = synth.templates[CLOUD]["Outputs"]
    assert render_json(outputs["ServiceUrls"]["Value"])["scores"] == "https://scores-queue.example.com"
    (forwarder,) = [
        f["Properties"]
        for f in synth.resources(CLOUD, "AWS::Lambda::Function").values()
        if f["Properties"]["Handler"].startswith("functions.forwarder.")
    ]
    endpoints = render_json(forwarder["Environment"]["Variables"][contract.SERVICE_ENDPOINTS])
    assert endpoints["scores"]["url"] == "https://scores-queue.example.com"
    # plain HTTP on the public ALB only redirects
    template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::Listener",
        {"Port": 80, "DefaultActions": [Match.object_like({"Type": "redirect"})]},
    )


def test_the_public_load_balancer_has_a_waf_rate_rule_and_the_known_bad_inputs_rules() -> None:
    synth = synthesized()
    (acl_id, acl) = only(synth.resources(CLOUD, "AWS::WAFv2::WebACL"))
    assert acl["Properties"]["Scope"] == "REGIONAL" and acl["Properties"]["DefaultAction"] == {"Allow": {}}
    rule, bad_inputs = acl["Properties"]["Rules"]
    # the managed rule group blocks what it matches (override "None"; "Count" would only count)
    assert bad_inputs["OverrideAction"] == {"None": {}}
    assert bad_inputs["Statement"]["ManagedRuleGroupStatement"] == {
        "VendorName": "AWS",
        "Name": "AWSManagedRulesKnownBadInputsRuleSet",
    }
    assert rule["Action"] == {"Block": {}}
    assert rule["Statement"]["RateBasedStatement"] == {
        "AggregateKeyType": "IP",
        "EvaluationWindowSec": 300,
        "Limit": 2000,
    }
    (_, association) = only(synth.resources(CLOUD, "AWS::WAFv2::WebACLAssociation"))
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    (public_alb,) = [
        k
        for k, r in synth.resources(CLOUD, "AWS::ElasticLoadBalancingV2::LoadBalancer").items()
        if r["Properties"]["Scheme"] == "internet-facing"
    ]
    assert association["Properties"]["ResourceArn"] == {"Ref": public_alb}


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


def test_dashboard_has_a_row_per_job_on_its_own_queue() -> None:
    body = dashboard_body(CLOUD).replace(" ", "")
    for job, queue in TASK_QUEUES.items():
        for title in ("taskqueuevisible/inflight", "ageofoldesttask(s)", "progress", "failures"):
            assert f'"{job}:{title}"' in body, (job, title)
        assert f'"{queue}","QueueName"' in body
        assert f'"job","{job}"' in body


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
    all_alarms = [a["Properties"] for a in synth.resources(CLOUD, "AWS::CloudWatch::Alarm").values()]
    for alarm in all_alarms:
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]
    assert set(alarms) == {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "Errors",
        "RunsFailed",
        "StuckRuns",
    }
    dlq = alarms["ApproximateNumberOfMessagesVisible"]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}
    assert dlq["Threshold"] == 1 and dlq["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    forwarder = functions(CLOUD)["forwarder"]["LogicalId"]
    assert alarms["Errors"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": forwarder}}]
    # per job: its own task queue's oldest message, its failed runs, its stuck runs
    oldest = [a for a in all_alarms if a["MetricName"] == "ApproximateAgeOfOldestMessage"]
    assert sorted(a["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for a in oldest) == sorted(TASK_QUEUES.values())
    assert all(a["Threshold"] == 3600 for a in oldest)
    for metric in ("RunsFailed", "StuckRuns"):
        per_job = [a for a in all_alarms if a["MetricName"] == metric]
        assert all(a["Namespace"] == "Microprocess" for a in per_job)
        assert sorted(tuple(sorted((d["Name"], d["Value"]) for d in a["Dimensions"])) for a in per_job) == sorted(
            (("job", job), ("service", contract.POWERTOOLS_SERVICE)) for job in TASK_QUEUES
        )
    assert resources[topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]]["Properties"]["EnableKeyRotation"] is True


# ---------------------------------------------------------------------------- outputs and the local stage


def test_outputs_are_exactly_the_contract() -> None:
    synth = synthesized()
    assert list(synth.templates[LOCAL]["Outputs"]) == list(contract.LOCAL_OUTPUTS)
    assert list(synth.templates[CLOUD]["Outputs"]) == list(contract.CLOUD_OUTPUTS)
    assert contract.LOCAL_OUTPUTS == (
        "JobQueueUrls",
        "ReduceQueueUrl",
        "DeadLetterQueueUrl",
        "LedgerTable",
        "ReportsBucket",
        "SourceTables",
        "ServiceSecretArns",
        "ApiKeyArns",
        "ServiceRoleArns",
        "SplitterFunctionName",
        "ForwarderFunctionName",
        "ReduceForwarderFunctionName",
        "DeadLetterFunctionName",
        "SweeperFunctionName",
    )
    assert contract.CLOUD_OUTPUTS[len(contract.LOCAL_OUTPUTS) :] == ("ServiceUrls", "DashboardName", "AlarmTopicArn")


@BOTH
def test_json_outputs_name_each_job_table_and_service(stack: str) -> None:
    outputs = synthesized().templates[stack]["Outputs"]
    assert render_json(outputs["JobQueueUrls"]["Value"]) == {job: f"<{q}>" for job, q in TASK_QUEUES.items()}
    assert render_json(outputs["SourceTables"]["Value"]) == {"companies": "<CompaniesTable>"}
    assert render_json(outputs["ServiceSecretArns"]["Value"]) == {s: f"<{i}>" for s, i in SIGNING_SECRETS.items()}


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


def test_local_stage_takes_a_laptop_cap_on_every_event_source() -> None:
    from infra.push_settings import REDUCE_MAX_CONCURRENCY
    from tests.test_infra_synth import synthesize

    synth = synthesize({"stage": "all", "forwarder_max_concurrency": "8"})

    def concurrency(stack: str, queue: str) -> int:
        (cap,) = [
            m["Properties"]["ScalingConfig"]["MaximumConcurrency"]
            for m in synth.resources(stack, "AWS::Lambda::EventSourceMapping").values()
            if m["Properties"]["EventSourceArn"] == {"Fn::GetAtt": [queue, "Arn"]}
        ]
        return cap

    for job, queue in TASK_QUEUES.items():
        declared = JOBS.get(job).max_concurrency
        assert concurrency(LOCAL, queue) == min(8, declared), job
        assert concurrency(CLOUD, queue) == declared, job  # the cloud keeps the declarations
    # the reducer's small cap, lowered by the laptop cap too
    lowest = min(job.max_concurrency for job in JOBS)
    assert concurrency(LOCAL, "ReduceQueue") == min(8, REDUCE_MAX_CONCURRENCY, lowest)
    assert concurrency(CLOUD, "ReduceQueue") == min(REDUCE_MAX_CONCURRENCY, lowest)


def test_local_stage_takes_a_short_visibility_timeout() -> None:
    from tests.test_infra_synth import synthesize

    synth = synthesize({"stage": "all", "task_visibility_timeout_s": "20"})
    cloud = synthesized().stacks[CLOUD].platform.push_settings

    for job, queue in TASK_QUEUES.items():

        def visibility(stack: str) -> int:
            return synth.templates[stack]["Resources"][queue]["Properties"]["VisibilityTimeout"]  # noqa: B023

        assert visibility(LOCAL) == 20
        assert visibility(CLOUD) == cloud.jobs[job].visibility_timeout_s == 6 * cloud.forwarder_timeout_s


def test_local_stage_takes_a_short_reduce_visibility_timeout() -> None:
    from tests.test_infra_synth import synthesize

    synth = synthesize({"stage": "all", "task_visibility_timeout_s": "20", "reduce_visibility_timeout_s": "20"})

    def visibility(stack: str, queue: str) -> int:
        return synth.templates[stack]["Resources"][queue]["Properties"]["VisibilityTimeout"]

    assert visibility(LOCAL, "CreditScoresTaskQueue") == visibility(LOCAL, "ReduceQueue") == 20
    cloud = synthesized().stacks[CLOUD].platform.push_settings
    assert visibility(CLOUD, "ReduceQueue") == cloud.reduces.visibility_timeout_s
    assert visibility(CLOUD, "CreditScoresTaskQueue") == cloud.jobs["credit-scores"].visibility_timeout_s


def test_push_settings_derive_a_short_task_forwarder_and_a_long_reducer() -> None:
    from infra.push_settings import FORWARDER_OVERHEAD_S, VISIBILITY_FACTOR, PushSettings
    from microprocess.pipeline.forwarder import REDUCE_TIMEOUT_S

    push = PushSettings.from_jobs(JOBS)
    assert push.forwarder_timeout_s == max(job.task_timeout_s for job in JOBS) + FORWARDER_OVERHEAD_S == 70
    for job in JOBS:
        assert push.jobs[job.name].visibility_timeout_s == VISIBILITY_FACTOR * push.forwarder_timeout_s == 420
    assert push.reducer_timeout_s == REDUCE_TIMEOUT_S + FORWARDER_OVERHEAD_S == 660
    assert push.reduces.visibility_timeout_s == VISIBILITY_FACTOR * push.reducer_timeout_s == 3960
    assert push.reduces.batch_size == 1


def test_reduce_visibility_is_a_local_stage_setting() -> None:
    from pathlib import Path

    from infra import StageSettings

    with pytest.raises(ValueError, match="reduce_visibility_timeout_s is a local-stage setting"):
        StageSettings(repo_root=Path("."), ses_sender="a@example.com", reduce_visibility_timeout_s=20)
    with pytest.raises(ValueError, match="forwarder_max_concurrency is a local-stage setting"):
        StageSettings(repo_root=Path("."), ses_sender="a@example.com", forwarder_max_concurrency=4)
    StageSettings(repo_root=Path("."), ses_sender="a@example.com", local=True, reduce_visibility_timeout_s=20)


# ---------------------------------------------------------------------------- least privilege

LEDGER = {"<LedgerTable.Arn>"}
LEDGER_ACTIONS = {
    "dynamodb:BatchGetItem": LEDGER,
    "dynamodb:ConditionCheckItem": LEDGER,
    "dynamodb:GetItem": LEDGER,
    "dynamodb:PartiQLInsert": LEDGER,
    "dynamodb:PutItem": LEDGER,
    "dynamodb:Query": LEDGER | {"<LedgerTable.Arn>/index/*"},
    "dynamodb:UpdateItem": LEDGER,
}
#: What an SQS event source needs on the queue it consumes (granted by the event source itself).
CONSUME = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
)
TASK_QUEUE_ARNS = {f"<{q}.Arn>" for q in TASK_QUEUES.values()}
SECRETS = {f"<{s}>" for s in SIGNING_SECRETS.values()}
SENDER = "arn:<AWS::Partition>:ses:us-east-1:000000000000:identity/<SENDER>"
#: Every action of every function, and on what: a widening fails here, to be reviewed.
#: `<LOGS>` is the function's own log group, `<SPLITTER>` the splitter's ARN; X-Ray (`*`) is on all.
EXPECTED_ACTIONS: dict[str, dict[str, set[str]]] = {
    "forwarder": {
        **LEDGER_ACTIONS,
        **{action: TASK_QUEUE_ARNS for action in CONSUME},
        "sqs:SendMessage": TASK_QUEUE_ARNS | {"<ReduceQueue.Arn>", "<DeadLetterQueue.Arn>"},
        "s3:GetObject": {"<ReportsBucket.Arn>/claims/*"},
        "secretsmanager:GetSecretValue": SECRETS,
    },
    "reducer": {
        **LEDGER_ACTIONS,
        **{action: {"<ReduceQueue.Arn>"} for action in CONSUME},
        "sqs:SendMessage": {"<ReduceQueue.Arn>", "<DeadLetterQueue.Arn>"},
        "s3:AbortMultipartUpload": {"<ReportsBucket.Arn>/reports/*"},
        "s3:PutObjectTagging": {"<ReportsBucket.Arn>/reports/*"},
        "s3:GetObject": {"<ReportsBucket.Arn>/reports/*"},
        "s3:PutObject": {"<ReportsBucket.Arn>/reports/*"},
        "secretsmanager:GetSecretValue": SECRETS,
        "ses:SendEmail": {SENDER},
        "ses:SendRawEmail": {SENDER},
    },
    "dead_letter": {
        **LEDGER_ACTIONS,
        **{action: {"<DeadLetterQueue.Arn>"} for action in CONSUME},
        "sqs:SendMessage": {"<ReduceQueue.Arn>"},
        "s3:PutObject": {"<ReportsBucket.Arn>/quarantine/*"},
    },
    "splitter": {
        **LEDGER_ACTIONS,
        # the item index of a job that keeps one (item_index = true): BatchWriteItem of 25 entries
        "dynamodb:BatchWriteItem": LEDGER,
        "dynamodb:Scan": {"<CompaniesTable.Arn>"},
        "sqs:SendMessage": TASK_QUEUE_ARNS | {"<ReduceQueue.Arn>"},
        "sqs:GetQueueAttributes": TASK_QUEUE_ARNS,
        "s3:PutObject": {"<ReportsBucket.Arn>/claims/*", "<ReportsBucket.Arn>/splits/*"},
        "s3:GetObject": {
            "<ReportsBucket.Arn>/manifests/*",
            "<ReportsBucket.Arn>/splits/*",
            "arn:<AWS::Partition>:s3:::invoice-manifests/unpaid/*",
        },
        "lambda:InvokeFunction": {"<SPLITTER>"},
    },
    "sweeper": {
        **LEDGER_ACTIONS,
        # the counter repair removes its marker
        "dynamodb:DeleteItem": LEDGER,
        "sqs:SendMessage": {"<ReduceQueue.Arn>"},
        "lambda:InvokeFunction": {"<SPLITTER>", "<SPLITTER>:$LATEST"},
    },
}


#: The ledger as the service reduce of credit-scores may touch it: the keys of its own runs only.
CREDIT_SCORES_RUNS = "<LedgerTable.Arn> if ForAllValues:StringLike dynamodb:LeadingKeys RUN#credit-scores-*"


def conditioned(target: str, statement: dict[str, Any]) -> str:
    """A statement's resource with the statement's condition, if any (`<arn> if <operator> <key> <values>`)."""
    condition = statement.get("Condition") or {}
    parts = [
        f"{operator} {key} {','.join(values if isinstance(values, list) else [values])}"
        for operator, keys in sorted(condition.items())
        for key, values in sorted(keys.items())
    ]
    return f"{target} if {' and '.join(parts)}" if parts else target


#: Every action of every service process's role (its container task role in the cloud; the role
#: `local up` runs the process with), and on what. Same in both stages; the external service's
#: local role exists only locally (in the cloud it is the team's own role).
EXPECTED_SERVICE_ACTIONS: dict[str, dict[str, set[str]]] = {
    "scores-live": {
        "dynamodb:GetItem": {"<CompaniesTable.Arn>"},
        "secretsmanager:GetSecretValue": {"<ScoresApiKey>"},
    },
    "scores-queue": {
        # its table: read a company, store its score
        "dynamodb:GetItem": {"<CompaniesTable.Arn>", CREDIT_SCORES_RUNS},
        "dynamodb:UpdateItem": {"<CompaniesTable.Arn>", CREDIT_SCORES_RUNS},
        "secretsmanager:GetSecretValue": {"<ScoresSigningSecret>"},
        # the service reduce of credit-scores (reduce = "service"): its runs' records (never another
        # job's), its report files, the email
        "dynamodb:BatchGetItem": {CREDIT_SCORES_RUNS},
        "dynamodb:Query": {CREDIT_SCORES_RUNS},
        **{
            action: {"<ReportsBucket.Arn>/reports/credit-scores/*"}
            for action in ("s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject", "s3:PutObjectTagging")
        },
        "ses:SendEmail": {SENDER},
        "ses:SendRawEmail": {SENDER},
    },
    "reminders": {"secretsmanager:GetSecretValue": {"<RemindersSigningSecret>"}},
}


@BOTH
def test_each_service_process_role_has_exactly_its_listed_actions(stack: str) -> None:
    # GIVEN either stage WHEN each service process's role policies are read THEN every action on every
    # resource is one the list above names (a widening, or a role that loses an action, fails here)
    resources = synthesized().templates[stack]["Resources"]
    (sender,) = [k for k, v in resources.items() if v["Type"] == "AWS::SES::EmailIdentity"]
    roles = service_roles(stack)
    expected_keys = set(EXPECTED_SERVICE_ACTIONS) - ({"reminders"} if stack == CLOUD else set())
    assert set(roles) == expected_keys
    for key, logical_id in roles.items():
        found: dict[str, set[str]] = {}
        for statement in statements_of(stack, logical_id):
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in actions:
                found.setdefault(action, set()).update(
                    conditioned(render(t).replace(sender, "SENDER"), statement) for t in targets
                )
        assert found == EXPECTED_SERVICE_ACTIONS[key], key
        trust = resources[logical_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        principal = trust[0]["Principal"]
        if stack == CLOUD:
            assert principal == {"Service": "ecs-tasks.amazonaws.com"}
        else:  # `local up` assumes it for the process, through the emulator's STS
            assert "AWS" in principal and ":root" in json.dumps(principal)


def test_each_function_has_exactly_its_listed_actions() -> None:
    # GIVEN the cloud stage WHEN each function's role policies are read THEN every action on
    # every resource is one the list above names: no action group, no resource beyond it
    fns = functions(CLOUD)
    resources = synthesized().templates[CLOUD]["Resources"]
    (sender,) = [k for k, v in resources.items() if v["Type"] == "AWS::SES::EmailIdentity"]
    splitter = f"<{fns['splitter']['LogicalId']}.Arn>"
    for name, expected in EXPECTED_ACTIONS.items():
        log_group = f"<{fns[name]['LoggingConfig']['LogGroup']['Ref']}.Arn>"
        found: dict[str, set[str]] = {}
        for statement in statements_of(CLOUD, role_of(fns[name])):
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in actions:
                found.setdefault(action, set()).update(
                    render(t).replace(log_group, "<LOGS>").replace(splitter, "<SPLITTER>").replace(sender, "SENDER")
                    for t in targets
                )
        wanted = {
            **expected,
            "logs:CreateLogStream": {"<LOGS>"},
            "logs:PutLogEvents": {"<LOGS>"},
            # X-Ray for the traced functions only (the task forwarder is not: trace_forwarder)
            **({} if name == "forwarder" else {"xray:PutTelemetryRecords": {"*"}, "xray:PutTraceSegments": {"*"}}),
        }
        assert found == wanted, name
        assert not [a for a in found if "*" in a], name  # no action wildcard at all
