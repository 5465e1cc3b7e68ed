"""Structured logs: the core logs through stdlib `logging`; in Lambda, the Powertools
Logger's JSON format (with its appended keys such as `run_id` and `job`) is copied to
the core's loggers so every line is structured."""

from __future__ import annotations

from typing import Any


def share_logger_config(logger: Any) -> None:
    from aws_lambda_powertools.logging import utils

    utils.copy_config_to_registered_loggers(source_logger=logger, include={"microprocess"})
