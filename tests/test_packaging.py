"""`pip install .` works in a service's own virtualenv: pyproject declares what the package imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> distribution name, where they differ.
DISTRIBUTIONS = {
    "aws_lambda_powertools": "aws-lambda-powertools",
    "starlette": "fastapi",
    "aws_cdk": "aws-cdk-lib",
    "cdk_nag": "cdk-nag",
}
#: The folders the wheel ships (`infra/` as `microprocess.cdk`, `functions/` as `microprocess.functions`).
SHIPPED = ("microprocess", "infra", "functions")
#: `microprocess init`'s project files: a team's code, not the package's.
TEMPLATE = ROOT / "microprocess" / "cli" / "project_template"


def third_party_imports(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        if path.is_relative_to(TEMPLATE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("microprocess", "__future__", "")}


def declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_third_party_import_of_the_package_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = declared(project["dependencies"])
    optional = {d for extra in project["optional-dependencies"].values() for d in declared(extra)}
    imported = {
        DISTRIBUTIONS.get(n, n).replace("_", "-").lower()
        for folder in SHIPPED
        for n in third_party_imports(ROOT / folder)
    }
    assert imported <= required | optional, f"imported but not declared: {sorted(imported - required - optional)}"
    # the SDK a service imports needs only the base dependencies (FastAPI only for its adapter)
    sdk = {DISTRIBUTIONS.get(n, n) for n in third_party_imports(ROOT / "microprocess" / "service")}
    assert sdk <= required | {"fastapi"}, sdk


def test_the_declared_ranges_admit_the_pinned_versions() -> None:
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        assert req.specifier.contains(pins[req.name.lower()]), f"{spec} refuses the pinned {pins[req.name.lower()]}"
