"""Splitter Lambda: a scheduled or manual start → one task per item on the push queue."""

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
    logger.append_keys(job=event.get("job"), run_id=event.get("run_id"))
    result = runtime.splitter(context.function_name).handle(event, context.get_remaining_time_in_millis)
    logger.append_keys(run_id=result["run_id"])
    logger.info("split step done", extra=result)
    return result
