"""Jobs and the services they push to: the models, and loading a team's declaration file.

The front door: `get_declarations()` reads the team's `microprocess.toml` once (or the file
named by `MICROPROCESS_DECLARATIONS`); `load_declarations(path)` reads any file.
"""

from microprocess.declarations.loading import (
    DECLARATIONS_ENV,
    DEFAULT_FILE,
    Declarations,
    LocalDefaults,
    find_declarations_file,
    get_declarations,
    load_declarations,
    parse_declarations,
)
from microprocess.declarations.models import (
    ItemSource,
    JobDeclaration,
    JobDeclarationError,
    JobRegistry,
    ReduceMode,
    S3Scope,
    SourceKind,
    UnknownJobError,
    declare,
    resolve_source_uri,
    s3_scope,
)
from microprocess.declarations.services import (
    ServiceCapacity,
    ServiceDeclaration,
    ServiceRegistry,
    TableDeclaration,
    UnknownServiceError,
)

__all__ = [
    "DECLARATIONS_ENV",
    "DEFAULT_FILE",
    "Declarations",
    "ItemSource",
    "JobDeclaration",
    "JobDeclarationError",
    "JobRegistry",
    "LocalDefaults",
    "ReduceMode",
    "S3Scope",
    "ServiceCapacity",
    "ServiceDeclaration",
    "ServiceRegistry",
    "SourceKind",
    "TableDeclaration",
    "UnknownJobError",
    "UnknownServiceError",
    "declare",
    "find_declarations_file",
    "get_declarations",
    "load_declarations",
    "parse_declarations",
    "resolve_source_uri",
    "s3_scope",
]
