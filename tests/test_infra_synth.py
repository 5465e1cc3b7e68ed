"""Synthesis of the CDK app (once per test session) and what synth itself must guarantee.

The other `test_infra_*` modules import `synthesized()` from here: every infra test in a
session shares one in-process synth of both stages (about 5 s), so the whole infra suite
stays well under a minute.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

ROOT = Path(__file__).resolve().parents[1]
CLOUD = "Microprocess-Cloud"
LOCAL = "Microprocess-Local"

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]


def load_app_module() -> ModuleType:
    """The repository's `app.py` (not on the import path as a package)."""
    spec = importlib.util.spec_from_file_location("microprocess_cdk_app", ROOT / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Synth:
    """One synthesized app: the construct tree, the written assembly and the templates."""

    app: App
    stacks: dict[str, Any]
    outdir: Path
    templates: dict[str, dict[str, Any]]

    def template(self, stack: str) -> Template:
        return Template.from_json(self.templates[stack])

    def resources(self, stack: str, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.templates[stack]["Resources"].items() if v["Type"] == type_}


def synthesize(context: dict[str, Any] | None = None) -> Synth:
    """Build the app as `app.py` does (cdk.json context included) and synthesize it."""
    outdir = Path(tempfile.mkdtemp(prefix="microprocess-cdk-"))
    app, stacks = load_app_module().create_app(outdir=str(outdir), context=context)
    app.synth()
    templates = {name: json.loads((outdir / f"{name}.template.json").read_text()) for name in stacks}
    return Synth(app=app, stacks=stacks, outdir=outdir, templates=templates)


@functools.cache
def synthesized() -> Synth:
    """Both stages with the default context (no domain): the app `make synth` builds."""
    return synthesize()


#: A URL for the bundled service that makes every declared service external.
EXTERNAL_SCORES_URL = "https://scores-queue.team.example.net"


@functools.cache
def synthesized_external() -> Synth:
    """The cloud stage with every service external: `scores` given a URL in `service_urls`
    (the repository's `reminders` is declared with one)."""
    return synthesize({"stage": "cloud", "service_urls": json.dumps({"scores": EXTERNAL_SCORES_URL})})


def render(value: Any) -> str:
    """A CloudFormation string value as text: `Ref`s become `<Id>`, `GetAtt`s `<Id.Attr>`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a statement's list of resources
        return " ".join(render(v) for v in value)
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(render(p) for p in parts)
    raise AssertionError(f"cannot render {value}")


def render_json(value: Any) -> Any:
    """A JSON document a template builds with `Fn::Join` (JOB_QUEUES, outputs, ...), parsed."""
    return json.loads(render(value))


@functools.cache
def synthesized_with_domain() -> Synth:
    """The cloud stage with a domain, hosted zone and certificate."""
    return synthesize(
        {
            "stage": "cloud",
            "domain": "example.com",
            "hosted_zone_id": "Z0123456789ABCDEFGHIJ",
            "certificate_arn": "arn:aws:acm:us-east-1:000000000000:certificate/11111111-2222-3333-4444-555555555555",
        }
    )


# ---------------------------------------------------------------------------- tests


def test_synth_writes_both_stages() -> None:
    # GIVEN the default context WHEN the app synthesizes THEN both stacks are in the assembly
    synth = synthesized()
    manifest = json.loads((synth.outdir / "manifest.json").read_text())
    stacks = {k for k, v in manifest["artifacts"].items() if v["type"] == "aws:cloudformation:stack"}
    assert stacks == {CLOUD, LOCAL}
    # and no context was missing (synth never invents availability zones)
    assert not manifest.get("missing"), manifest.get("missing")


def test_synth_uses_the_availability_zones_from_cdk_json() -> None:
    subnets = synthesized().resources(CLOUD, "AWS::EC2::Subnet")
    zones = {s["Properties"]["AvailabilityZone"] for s in subnets.values()}
    assert zones == {"us-east-1a", "us-east-1b"}


def test_stage_context_selects_one_stage() -> None:
    local_only = synthesize({"stage": "local"})
    assert set(local_only.stacks) == {LOCAL}


def test_lambda_code_asset_holds_the_handlers_the_core_and_the_declarations() -> None:
    synth = synthesized()
    assets = json.loads((synth.outdir / f"{LOCAL}.assets.json").read_text())["files"]
    folders = [synth.outdir / a["source"]["path"] for a in assets.values() if a["source"]["path"].startswith("asset.")]
    assert len(folders) == 1, folders
    files = {p.relative_to(folders[0]).as_posix() for p in folders[0].rglob("*") if p.is_file()}
    assert {p.split("/")[0] for p in files} == {"functions", "microprocess", "microprocess.toml"}
    # the functions read the declarations from the asset root (MICROPROCESS_DECLARATIONS=microprocess.toml)
    assert (folders[0] / "microprocess.toml").read_text() == (ROOT / "microprocess.toml").read_text()
    for name in ("splitter", "forwarder", "reducer", "dead_letter", "sweeper"):
        assert f"functions/{name}/__init__.py" in files
    assert "microprocess/ledger/table.py" in files
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc") or p.startswith("microprocess/local/")]


def test_the_service_image_is_staged_not_built() -> None:
    # GIVEN no Docker engine WHEN the cloud stage synthesizes THEN the image is a staged
    # build context (built later by `cdk deploy`), from the repository root and microservice/Dockerfile
    synth = synthesized()
    images = json.loads((synth.outdir / f"{CLOUD}.assets.json").read_text())["dockerImages"]
    assert len(images) == 1
    (image,) = images.values()
    assert image["source"]["dockerFile"] == "microservice/Dockerfile"
    context = synth.outdir / image["source"]["directory"]
    assert (context / "microservice" / "Dockerfile").is_file()
    for excluded in (".venv", ".venv-checkov", "node_modules", "cdk.out", ".git", "tests", "bench", ".microprocess"):
        assert not (context / excluded).exists(), excluded
    assert not list(context.rglob("__pycache__"))
