"""The microprocess stack: one stage, cloud or local, holding the platform construct.

The stack adds nothing but the platform (`infra/platform.py`) and its outputs, so a team
can add the same construct to its own stack instead (examples/team_cdk_app/).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from microprocess.declarations import Declarations

from .platform import MicroprocessPlatform, StageSettings


class MicroprocessStack(Stack):
    """One stage of microprocess: the platform construct and the contract's outputs.

    Args:
        settings: the stage's settings (`settings.local` selects the local stage).
        declarations: the declarations or a declaration file (default: `get_declarations()`).
        service_urls: `{service: url}` overriding the declared endpoints (see `MicroprocessPlatform`).
        **kwargs: passed to `Stack` (env, description, ...).

    Attributes:
        platform: the `MicroprocessPlatform`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        declarations: Declarations | Path | str | None = None,
        service_urls: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.platform = MicroprocessPlatform(
            self, "Platform", settings=settings, declarations=declarations, service_urls=service_urls
        )
        for key, value in self.platform.outputs.items():
            CfnOutput(self, key, value=value)
