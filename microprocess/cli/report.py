"""`microprocess report`: download a run's report files (only from the platform's own report folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from microprocess.cli import deployment, retries
from microprocess.cli.deployment import Deployment, ledger_errors
from microprocess.cli.options import CombinedOption, Target, TargetOption, fail, out
from microprocess.cli.steer import SteerError
from microprocess.reduce.layout import ReportLayout


def register(app: typer.Typer) -> None:
    """Add `report` to the `microprocess` app."""
    app.command()(report)


def _split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise SteerError(f"report URI {uri!r} is not s3://bucket/prefix")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


#: The folder, under a run's report prefix, of the intermediate per-shard part files.
PARTS_FOLDER = "parts/"


def download_report(dep: Deployment, run_id: str, out_dir: Path, *, parts: bool = False) -> list[Path]:
    """Download the report files under the run's report prefix to `out_dir/<run_id>/`
    (with `parts`, also the intermediate per-shard part files)."""
    progress = dep.ledger().progress(run_id)
    if not progress.report_uri:
        fail(f"run {run_id} has no report yet (it is {progress.status})")
    bucket, prefix = _split_s3_uri(progress.report_uri)
    # The URI came from a service's finalize answer (reduce = "service"): download only from the
    # platform's own report folder of this run, never wherever the answer pointed.
    own = ReportLayout(dep.output("ReportsBucket"), progress.job, run_id)
    prefix = own.prefix if prefix == own.prefix.rstrip("/") else prefix  # never the r-10 next to r-1
    if bucket != own.bucket or not prefix.startswith(own.prefix):
        fail(
            f"run {run_id}'s report URI {progress.report_uri} is outside the platform's report folder of "
            f"this run ({own.uri}): not downloaded. A service that reduces must write its report there "
            "(docs/push-contract.md §7)"
        )
    s3 = dep.client("s3")
    bucket, base, keys = report_keys(s3, progress.report_uri, parts=parts)
    target_dir = out_dir / run_id
    written: list[Path] = []
    for key in keys:
        rel = key[len(base) :] if key.startswith(base) else key.rsplit("/", 1)[-1]
        path = (target_dir / rel).resolve()
        if target_dir.resolve() not in path.parents:
            continue  # a key with `..` must not write outside the folder
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(path))
        written.append(path)
    return written


def report_keys(s3: Any, report_uri: str, *, parts: bool = False) -> tuple[str, str, list[str]]:
    """(bucket, folder prefix, object keys) of the report files under a run's report URI (with
    `parts`, also the intermediate per-shard part files)."""
    bucket, prefix = _split_s3_uri(report_uri)
    keys = _list_keys(s3, bucket, prefix)
    if not keys and not prefix.endswith("/"):
        # The URI names one object of the report: take its whole folder.
        prefix = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        keys = _list_keys(s3, bucket, prefix)
    elif keys == [prefix] and "/" in prefix:
        prefix = prefix.rsplit("/", 1)[0] + "/"
        keys = _list_keys(s3, bucket, prefix)
    if not keys:
        raise SteerError(f"nothing under {report_uri}")
    base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
    if not parts:
        keys = [k for k in keys if not k[len(base) :].startswith(PARTS_FOLDER)]
    return bucket, base, keys


def _list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    return keys


def report(
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    out_dir: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Folder to download into (the run gets a subfolder).")
    ] = Path("out"),
    parts: Annotated[bool, typer.Option("--parts", help="Also download the per-shard part files.")] = False,
    combined: CombinedOption = False,
    target: TargetOption = Target.local,
) -> None:
    """Download the report of RUN to OUT/<run id>/ (the report files; --parts adds the per-shard parts;
    --combined the reports of its retries too, and combined.csv: the latest outcome of every item)."""
    dep = deployment.connect(target)
    with ledger_errors(dep):
        written = download_report(dep, run_id, out_dir, parts=parts)
        if combined:
            written.append(retries.write_combined(dep, run_id, out_dir, download_report)[0])
    for path in written:
        out.print(escape(str(path)))
