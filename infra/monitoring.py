"""The operator's view: one CloudWatch dashboard and the alarms that page (cloud stage)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from microprocess.declarations import JobDeclaration

from . import contract
from .push_queue import PushQueue

PERIOD = Duration.minutes(5)
#: A task message older than this means the forwarder is not keeping up with a job (or not running).
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
    """A dashboard of the push path, the services and each job, and alarms to an encrypted
    SNS topic.

    Alarms: the DLQ is not empty; the forwarder reports errors; per job: its oldest task
    message is older than `oldest_message_age`, a run ended FAILED, the sweeper found stuck runs.

    Args:
        jobs: the job declarations (per-job widgets and alarms).
        push_queue: the task queues, the reduce queue and the DLQ.
        forwarder: the forwarder function (task queues).
        reducer: the reducer function (reduce queue).
        service_target_groups: the bundled services' target groups by label
            (`<service>-live`, `<service>-queue`); empty when every service is external.
        oldest_message_age: alarm threshold on each task queue's age of oldest message.
        alarm_email: subscribe this address to the alarm topic (optional).
        shared: the jobs of each shared service (`share.shared_services`): a dashboard row of its load each.

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
        reducer: lambda_.IFunction,
        service_target_groups: Mapping[str, elbv2.ApplicationTargetGroup],
        oldest_message_age: Duration = DEFAULT_OLDEST_MESSAGE_AGE,
        alarm_email: str | None = None,
        shared: Mapping[str, Iterable[JobDeclaration]] | None = None,
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

        dlq_visible = push_queue.dead_letter_queue.metric_approximate_number_of_messages_visible(
            period=PERIOD, statistic="Maximum"
        )
        errors = forwarder.metric_errors(period=PERIOD, statistic="Sum")

        self.alarms: dict[str, cloudwatch.Alarm] = {}
        self._alarm(
            "DeadLetterQueueNotEmpty",
            dlq_visible,
            threshold=1,
            description="Messages reached the DLQ (a forwarder crash or a malformed message): "
            "see the dead-letter function's logs",
        )
        self._alarm("ForwarderErrors", errors, threshold=1, description="The forwarder function failed invocations")

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(6))
        reduces = push_queue.reduce_queue
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Dead-letter queue: visible", left=[dlq_visible], width=8),
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
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Forwarder: invocations / errors / throttles",
                left=[
                    forwarder.metric_invocations(period=PERIOD, statistic="Sum"),
                    errors,
                    forwarder.metric_throttles(period=PERIOD, statistic="Sum"),
                ],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Forwarder: concurrent executions",
                left=[forwarder.metric("ConcurrentExecutions", period=PERIOD, statistic="Maximum")],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Forwarder: duration p95 (ms)",
                left=[forwarder.metric_duration(period=PERIOD, statistic="p95")],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Reducer: invocations / errors / duration p95 (ms)",
                left=[
                    reducer.metric_invocations(period=PERIOD, statistic="Sum"),
                    reducer.metric_errors(period=PERIOD, statistic="Sum"),
                ],
                right=[reducer.metric_duration(period=PERIOD, statistic="p95")],
                width=6,
            ),
        )
        if service_target_groups:
            groups = service_target_groups.items()
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title="Services: requests",
                    left=[tg.metrics.request_count(period=PERIOD, statistic="Sum").with_(label=n) for n, tg in groups],
                    width=8,
                ),
                cloudwatch.GraphWidget(
                    title="Services: target 5xx",
                    left=[
                        tg.metrics.http_code_target(
                            elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=PERIOD, statistic="Sum"
                        ).with_(label=n)
                        for n, tg in groups
                    ],
                    width=8,
                ),
                cloudwatch.GraphWidget(
                    title="Services: latency p95 (s)",
                    left=[
                        tg.metrics.target_response_time(period=PERIOD, statistic="p95").with_(label=n)
                        for n, tg in groups
                    ],
                    width=8,
                ),
            )
        for job in declared:
            self._job(job, push_queue.task_queues[job.name], oldest_message_age)
        for service, on in (shared or {}).items():
            self._service(service, [job.name for job in on])
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=WIDTH)
        )

    def _service(self, service: str, jobs: list[str]) -> None:
        """One row per shared service: each job's cap from the service's controller (its share), the
        pushes each job made, and the tasks held while the service asked every job to wait."""

        def per_job(metric: str, statistic: str = "Sum") -> list[cloudwatch.IMetric]:
            return [job_metric(metric, job, label=job).with_(statistic=statistic) for job in jobs]

        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title=f"service {service}: each job's cap (batches)",
                left=per_job(contract.SERVICE_SHARE_CAP, "Maximum"),
                stacked=True,
                width=8,
            ),
            cloudwatch.GraphWidget(
                title=f"service {service}: pushes per job", left=per_job(contract.SERVICE_PUSHES), width=8
            ),
            cloudwatch.GraphWidget(
                title=f"service {service}: tasks held (asked to wait)", left=per_job(contract.TASKS_SHED), width=8
            ),
        )

    def _job(self, job: JobDeclaration, queue: sqs.IQueue, oldest_message_age: Duration) -> None:
        """One row per job (its queue depth, age of oldest task, progress, failures) and its alarms."""
        name = job.name
        oldest = queue.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum")
        self._alarm(
            f"OldestTask-{name}",
            oldest,
            threshold=oldest_message_age.to_seconds(),
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            description=f"A task of '{name}' has waited more than {oldest_message_age.to_human_string()}: "
            "the forwarder is not keeping up with the job (or its concurrency cap is too low)",
        )
        self._alarm(
            f"FailedRuns-{name}",
            job_metric(contract.RUNS_FAILED, name),
            threshold=1,
            description=f"A run of '{name}' ended FAILED (above its tolerated failure percentage): "
            "see the run's report of failures",
        )
        self._alarm(
            f"StuckRuns-{name}",
            job_metric(contract.STUCK_RUNS, name),
            threshold=1,
            description=f"The sweeper found runs of '{name}' without progress",
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title=f"{name}: task queue visible / in flight",
                left=[
                    queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                    queue.metric_approximate_number_of_messages_not_visible(period=PERIOD, statistic="Maximum"),
                ],
                width=6,
            ),
            cloudwatch.GraphWidget(title=f"{name}: age of oldest task (s)", left=[oldest], width=6),
            cloudwatch.GraphWidget(
                title=f"{name}: progress",
                left=[
                    job_metric(metric, name, label=metric)
                    for metric in (contract.TASKS_SUCCEEDED, contract.RUNS_SUCCEEDED)
                ],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title=f"{name}: failures",
                left=[
                    job_metric(metric, name, label=metric)
                    for metric in (
                        contract.TASKS_FAILED,
                        contract.TASKS_UNREACHABLE,
                        contract.RUNS_FAILED,
                        contract.STUCK_RUNS,
                    )
                ],
                width=6,
            ),
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
