"""Reducer Lambda: the forwarder's code on the reduce queue (reduce parts and finalizes).

A function of its own so that its timeout fits a reduce push (REDUCE_TIMEOUT_S) while the
task queue's forwarder keeps a short one; the handler is the forwarder's, unchanged.
"""

from ..forwarder.handler import lambda_handler

__all__ = ["lambda_handler"]
