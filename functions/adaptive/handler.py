"""Adaptive concurrency Lambda (rate schedule, every minute): one AIMD decision per adaptive job."""

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from microprocess.control.scheduled import tick_from_environment
from microprocess.declarations import get_declarations
from microprocess.pipeline import runtime
from microprocess.pipeline.logs import share_logger_config

logger = Logger()
tracer = Tracer()
share_logger_config(logger)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@runtime.metrics_flushed
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    declarations = get_declarations()
    decisions = tick_from_environment(
        declarations.jobs, runtime.client, runtime.emitter(), services=declarations.services
    )
    logger.info("adaptive concurrency", extra={"decisions": decisions})
    return decisions
