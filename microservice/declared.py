"""The job this example service serves, read from the team's declaration file (one source of truth)."""

from __future__ import annotations

from microprocess.declarations import JobDeclaration, get_declarations

#: The credit-scores job: its task, reduce-part and finalize paths are this service's routes.
JOB: JobDeclaration = get_declarations().jobs.get("credit-scores")
