"""checkov on the synthesized cloud templates: no failed check, and every skip with its reason.

One checkov process per session over the three cloud variants the other infra tests already
synthesize (no domain, with a domain, every service external). checkov lives in its own
virtualenv (`.venv-checkov`, built by `make test` or `make checkov` from requirements-checkov.txt): its pins
conflict with the project's. Skips are written by `infra.nag.skip_checkov` into the resource's
template metadata, one reason per resource.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_infra_synth import CLOUD, ROOT, synthesized, synthesized_external, synthesized_with_domain

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
VARIANTS = {"no-domain": synthesized, "domain": synthesized_with_domain, "external": synthesized_external}


def pinned_checkov_version() -> str:
    (pin,) = [
        line.split("==")[1].strip()
        for line in (ROOT / "requirements-checkov.txt").read_text().splitlines()
        if line.startswith("checkov==")
    ]
    return pin


def cloud_templates() -> dict[str, Path]:
    return {name: synth().outdir / f"{CLOUD}.template.json" for name, synth in VARIANTS.items()}


@functools.cache
def checkov_report() -> dict[str, Any]:
    """checkov's JSON report over the three cloud templates (one run per test session)."""
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV} is missing: run `make checkov` (it builds .venv-checkov from requirements-checkov.txt)")
    files = [arg for path in cloud_templates().values() for arg in ("-f", str(path))]
    result = subprocess.run(
        # --skip-download: no call to Prisma Cloud for guidelines (synth and its checks stay offline)
        [str(CHECKOV), *files, "--framework", "cloudformation", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    # exit code 1 means failed checks: the report says which; anything else without JSON is a crash
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"checkov exited {result.returncode} without a report:\n{result.stderr[-3000:]}") from None
    reports = report if isinstance(report, list) else [report]
    (cloudformation,) = [r for r in reports if r["check_type"] == "cloudformation"]
    return dict(cloudformation)


def checkov_skips(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(logical id, check id, comment) of every skip in the template's resource metadata."""
    return [
        (logical_id, skip["id"], skip.get("comment", ""))
        for logical_id, resource in template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]


def test_checkov_is_the_pinned_version() -> None:
    assert checkov_report()["summary"]["checkov_version"] == pinned_checkov_version()


def test_cloud_templates_pass_checkov() -> None:
    # GIVEN the three cloud variants WHEN checkov checks them
    report = checkov_report()
    summary = report["summary"]
    # THEN it parsed all three and ran real checks on them ...
    assert summary["parsing_errors"] == 0, summary
    assert {Path(r["file_abs_path"]) for r in report["results"]["passed_checks"]} == set(cloud_templates().values())
    assert summary["passed"] > 100, summary
    # ... and nothing failed: every finding is fixed in infra/ or skipped on its resource with a reason
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} in {c['file_abs_path']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)


def test_every_skip_names_a_check_and_states_a_reason() -> None:
    for name, synth in VARIANTS.items():
        skips = checkov_skips(synth().templates[CLOUD])
        assert skips, name
        for logical_id, check_id, comment in skips:
            assert re.fullmatch(r"CKV2?_AWS_\d+", check_id), (name, logical_id, check_id)
            assert len(comment.split()) >= 8, (name, logical_id, check_id, comment)


def test_checkov_applies_the_skips_it_finds() -> None:
    # every skip in the metadata is one checkov honoured (a skip of a check that no longer runs
    # on that resource, or a misspelt id, would be silently dead)
    report = checkov_report()
    applied = {
        (Path(c["file_abs_path"]), c["resource"].split(".")[1], c["check_id"])
        for c in report["results"]["skipped_checks"]
    }
    written = {
        (path, logical_id, check_id)
        for (name, path) in cloud_templates().items()
        for logical_id, check_id, _ in checkov_skips(VARIANTS[name]().templates[CLOUD])
    }
    assert written == applied, {"written, not applied": written - applied, "applied, not written": applied - written}


def test_fixed_findings_stay_fixed() -> None:
    # the findings fixed in the constructs rather than skipped: versioned buckets whose old
    # versions expire, and the known-bad-inputs rules on the public API's web ACL
    template = synthesized().templates[CLOUD]
    for logical_id in ("ReportsBucket", "AccessLogsBucket"):
        bucket = template["Resources"][logical_id]["Properties"]
        assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}, logical_id
        rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
        noncurrent = rules["expire-noncurrent-versions"]
        assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
        assert noncurrent["ExpiredObjectDeleteMarker"] is True
    (acl,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::WAFv2::WebACL"]
    managed = [
        rule["Statement"]["ManagedRuleGroupStatement"]
        for rule in acl["Properties"]["Rules"]
        if "ManagedRuleGroupStatement" in rule["Statement"] and rule["OverrideAction"] == {"None": {}}
    ]
    assert managed == [{"VendorName": "AWS", "Name": "AWSManagedRulesKnownBadInputsRuleSet"}]
    for skipped in ("CKV_AWS_21", "CKV_AWS_192"):
        assert skipped not in {check for _, check, _ in checkov_skips(template)}
