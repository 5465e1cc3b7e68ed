"""The operator's view: one CloudWatch dashboard and the alarms that page (cloud stage)."""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra import contract
from infra.push_queue import PushQueue
from microprocess.declarations import JobDeclaration

PERIOD = Duration.minutes(5)
#: A task message older than this means the forwarder is not keeping up (or not running).
DEFAULT_OLDEST_MESSAGE_AGE = Duration.hours(1)
WIDTH = 24


def job_metric(name: str, job: str, *, period: Duration = PERIOD, label: str | None = None) -> cloudwatch.Metric:
    """A per-job EMF metric as the functions publish it (Powertools adds the `service` dimension)."""
    return cloudwatch.Metric(
        namespace=contract.METRIC_NAMESPACE,
        metric_name=name,
        dimensions_map={contract.JOB_DIMENSION: job, contract.SERVICE_DIMENSION: contract.POWERTOOLS_SERVICE},
        statistic="Sum",
        period=period,
        label=label,
    )


class Monitoring(Construct):
    """A dashboard of the push path and the services, and alarms to an encrypted SNS topic.

    Alarms: the DLQ is not empty; the oldest task message is older than
    `oldest_message_age`; the forwarder reports errors; a job has stuck runs.

    Args:
        jobs: the job declarations (per-job widgets and stuck-run alarms).
        push_queue: the task queue, the reduce queue and the DLQ.
        forwarder: the forwarder function (task queue).
        reducer: the reduce forwarder function (reduce queue), on the dashboard (optional).
        live_target_group, queue_target_group: the services' target groups.
        oldest_message_age: alarm threshold on the task queue's age of oldest message.
        alarm_email: subscribe this address to the alarm topic (optional).

    Attributes:
        dashboard: the `cloudwatch.Dashboard`.
        topic: the alarm topic (KMS-encrypted, TLS only).
        alarms: the alarms by name.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        jobs: Iterable[JobDeclaration],
        push_queue: PushQueue,
        forwarder: lambda_.IFunction,
        live_target_group: elbv2.ApplicationTargetGroup,
        queue_target_group: elbv2.ApplicationTargetGroup,
        oldest_message_age: Duration = DEFAULT_OLDEST_MESSAGE_AGE,
        alarm_email: str | None = None,
        reducer: lambda_.IFunction | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        declared = list(jobs)
        key = kms.Key(self, "TopicKey", enable_key_rotation=True, description="microprocess alarm topic")
        # CloudWatch publishes alarms to the encrypted topic: it needs the key.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )
        self.topic = sns.Topic(self, "AlarmTopic", master_key=key, enforce_ssl=True, display_name="microprocess alarms")
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

        queue, dlq = push_queue.queue, push_queue.dead_letter_queue
        visible = queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")
        in_flight = queue.metric_approximate_number_of_messages_not_visible(period=PERIOD, statistic="Maximum")
        oldest = queue.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum")
        dlq_visible = dlq.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")
        errors = forwarder.metric_errors(period=PERIOD, statistic="Sum")

        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._alarm(
            "DeadLetterQueueNotEmpty",
            dlq_visible,
            threshold=1,
            description="Messages reached the DLQ (a forwarder crash or a malformed message): "
            "see the dead-letter function's logs",
        )
        self._alarm(
            "TaskQueueOldestMessage",
            oldest,
            threshold=oldest_message_age.to_seconds(),
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            description=f"A task has waited more than {oldest_message_age.to_human_string()}: "
            "the forwarder is not keeping up",
        )
        self._alarm("ForwarderErrors", errors, threshold=1, description="The forwarder function failed invocations")
        for job in declared:
            self._alarm(
                f"StuckRuns-{job.name}",
                job_metric(contract.STUCK_RUNS, job.name),
                threshold=1,
                description=f"The sweeper found runs of '{job.name}' without progress",
            )

        fn_metrics = {
            "Invocations": forwarder.metric_invocations(period=PERIOD, statistic="Sum"),
            "Errors": errors,
            "Throttles": forwarder.metric_throttles(period=PERIOD, statistic="Sum"),
        }
        concurrency = forwarder.metric("ConcurrentExecutions", period=PERIOD, statistic="Maximum")
        duration_p95 = forwarder.metric_duration(period=PERIOD, statistic="p95")

        services = (("scores-live", live_target_group), ("scores-queue", queue_target_group))
        requests = [tg.metrics.request_count(period=PERIOD, statistic="Sum").with_(label=name) for name, tg in services]
        target_5xx = [
            tg.metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=PERIOD, statistic="Sum").with_(
                label=name
            )
            for name, tg in services
        ]
        latency_p95 = [
            tg.metrics.target_response_time(period=PERIOD, statistic="p95").with_(label=name) for name, tg in services
        ]

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(6))
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Task queue: visible / in flight",
                left=[visible, in_flight],
                width=8,
            ),
            cloudwatch.GraphWidget(title="Task queue: age of oldest message (s)", left=[oldest], width=8),
            cloudwatch.GraphWidget(title="Dead-letter queue: visible", left=[dlq_visible], width=8),
        )
        reduces = push_queue.reduce_queue
        reduce_widgets: list[cloudwatch.IWidget] = [
            cloudwatch.GraphWidget(
                title="Reduce queue: visible / in flight",
                left=[
                    reduces.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                    reduces.metric_approximate_number_of_messages_not_visible(period=PERIOD, statistic="Maximum"),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Reduce queue: age of oldest message (s)",
                left=[reduces.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum")],
                width=8,
            ),
        ]
        if reducer is not None:
            reduce_widgets.append(
                cloudwatch.GraphWidget(
                    title="Reducer: invocations / errors / duration p95 (ms)",
                    left=[
                        reducer.metric_invocations(period=PERIOD, statistic="Sum"),
                        reducer.metric_errors(period=PERIOD, statistic="Sum"),
                    ],
                    right=[reducer.metric_duration(period=PERIOD, statistic="p95")],
                    width=8,
                )
            )
        self.dashboard.add_widgets(*reduce_widgets)
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Forwarder: invocations / errors / throttles", left=list(fn_metrics.values()), width=8
            ),
            cloudwatch.GraphWidget(title="Forwarder: concurrent executions", left=[concurrency], width=8),
            cloudwatch.GraphWidget(title="Forwarder: duration p95 (ms)", left=[duration_p95], width=8),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Services: requests", left=requests, width=8),
            cloudwatch.GraphWidget(title="Services: target 5xx", left=target_5xx, width=8),
            cloudwatch.GraphWidget(title="Services: latency p95 (s)", left=latency_p95, width=8),
        )
        for job in declared:
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title=f"{job.name}: tasks",
                    left=[
                        job_metric(name, job.name, label=name)
                        for name in (contract.TASKS_SUCCEEDED, contract.TASKS_FAILED)
                    ],
                    width=12,
                ),
                cloudwatch.GraphWidget(
                    title=f"{job.name}: runs",
                    left=[
                        job_metric(name, job.name, label=name)
                        for name in (contract.RUNS_SUCCEEDED, contract.RUNS_FAILED, contract.STUCK_RUNS)
                    ],
                    width=12,
                ),
            )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=WIDTH)
        )

    def _alarm(
        self,
        name: str,
        metric: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    ) -> None:
        alarm = cloudwatch.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=comparison,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.alarms[name] = alarm
