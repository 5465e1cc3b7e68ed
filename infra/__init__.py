"""The CDK constructs and stack of microprocess (one construct per capability, one file each).

The front door: `MicroprocessStack` composes them for a stage; `StageSettings` says which.
"""

from infra.stack import LocalServiceUrls, MicroprocessStack, StageSettings

__all__ = ["LocalServiceUrls", "MicroprocessStack", "StageSettings"]
