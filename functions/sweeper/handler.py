"""Sweeper Lambda (rate schedule): repair counters, re-enqueue lost reduces, report stuck runs."""

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from microprocess.pipeline import runtime
from microprocess.pipeline.logs import share_logger_config

logger = Logger()
tracer = Tracer()
share_logger_config(logger)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@runtime.metrics_flushed
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = runtime.sweeper().sweep().as_dict()
    logger.info("sweep done", extra=report)
    return report
