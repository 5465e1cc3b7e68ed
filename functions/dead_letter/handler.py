"""Dead-letter Lambda (event source on the DLQ): failed tasks still finish their runs."""

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
    return runtime.dead_letter().handle(event)
