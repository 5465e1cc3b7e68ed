"""The CDK constructs and stack of microprocess (one construct per capability, one file each).

The front door: `MicroprocessPlatform` (the whole platform as one construct, for any stack),
`MicroprocessStack` (our own stack around it), `StageSettings` (which stage, and its knobs).
"""

from .bundled_service import DomainSettings
from .platform import MicroprocessPlatform, StageSettings, VpcAttachment
from .stack import MicroprocessStack

__all__ = ["DomainSettings", "MicroprocessPlatform", "MicroprocessStack", "StageSettings", "VpcAttachment"]
