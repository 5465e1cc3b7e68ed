"""P5: peak memory of building a run's report, in a process of its own.

`python -m bench.report_memory --results N` builds the report of a run of N task
results with the microservice's own reduce code (`microservice.reduce.reduce_part` for
every shard, then `finalize`) over a real `Ledger`, and prints one JSON line:
`{"results", "baseline_rss_mb", "peak_rss_mb", "delta_mb", "seconds", "report_rows", ...}`.

What is real and what is not, so that the figure is the report builder's own memory:

* the ledger is the real `Ledger` over a DynamoDB client that *makes up* each Query page
  when asked (1 MB pages of realistic task records, as DynamoDB returns them), so no
  table is held in this process;
* S3 is a stand-in that keeps objects in files on disk (multipart uploads too), so the
  report's bytes are not held in this process either — as with a real bucket;
* SES records the email.

Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss`; the baseline is read after the
imports and set-up, right before the build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

#: DynamoDB returns at most 1 MB per Query page.
PAGE_BYTES = 1024 * 1024
SHARDS = 16
FAILURE_EVERY = 100  # one task in a hundred failed

_ser = TypeSerializer()


def _wire(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in item.items() if v is not None}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class SyntheticLedgerClient:
    """Enough of a DynamoDB client for `Ledger` to reduce a finished run of `results` tasks.

    Task records are generated on demand, page by page, exactly as `Ledger._put_task`
    writes them; nothing is stored.
    """

    def __init__(self, table: str, run_id: str, job: str, results: int, shards: int = SHARDS) -> None:
        self.table, self.run_id, self.job, self.results, self.shards = table, run_id, job, results, shards
        self.failed = results // FAILURE_EVERY
        self.email_claimed = False

    def _per_shard(self, shard: int) -> int:
        return self.results // self.shards + (1 if shard < self.results % self.shards else 0)

    def _task(self, shard: int, seq: int) -> dict[str, Any]:
        n = shard + seq * self.shards  # a global task number
        task_id = f"{n % 4}-{n:09d}"
        company = f"C{n + 1:07d}"
        item: dict[str, Any] = {
            "pk": f"RUN#{self.run_id}#S{shard}",
            "sk": f"T#{task_id}",
            "task_id": task_id,
            "attempts": 1,
            "item_id": company,
            "finished_at": "2026-11-01T02:10:00.000000Z",
        }
        if n % FAILURE_EVERY == FAILURE_EVERY - 1:
            item.update(
                state="FAILED",
                attempts=5,
                error="HTTP 503 from POST /tasks/credit-score: service unavailable (retried 5 times)",
                item=json.dumps({"company_id": company, "name": "Northfield Ltd", "country": "GB", "employees": 120}),
            )
        else:
            score = 300 + (n * 37) % 650
            band = (
                "A" if score >= 800 else "B" if score >= 650 else "C" if score >= 500 else "D" if score >= 350 else "E"
            )
            item.update(
                state="SUCCEEDED",
                result=json.dumps({"company_id": company, "score": score, "band": band}, separators=(",", ":")),
            )
        return _wire(item)

    # --- the calls Ledger makes

    def get_item(self, **kw: Any) -> dict[str, Any]:
        return {
            "Item": _wire(
                {
                    "pk": f"RUN#{self.run_id}",
                    "sk": "RUN",
                    "run_id": self.run_id,
                    "job": self.job,
                    "status": "REDUCING",
                    "shard_count": self.shards,
                    "counter_count": self.shards,
                    "expected": self.results,
                    "split_done": True,
                    "targets_final": True,
                    "cursors": {"0": "<done>"},
                    "seg_counts": {"0": self.results},
                    "created_at": "2026-11-01T02:00:00.000000Z",
                    "reduce_claimed_at": "2026-11-01T02:10:00.000000Z",
                }
            )
        }

    def query(self, **kw: Any) -> dict[str, Any]:
        shard = int(kw["ExpressionAttributeValues"][":p"]["S"].rsplit("#S", 1)[1])
        start = int(kw.get("ExclusiveStartKey", {}).get("seq", {"N": "0"})["N"])
        end = self._per_shard(shard)
        items, size, seq = [], 0, start
        while seq < end and size < PAGE_BYTES:
            item = self._task(shard, seq)
            size += len(json.dumps(item))
            items.append(item)
            seq += 1
        resp: dict[str, Any] = {"Items": items, "Count": len(items)}
        if seq < end:
            resp["LastEvaluatedKey"] = {"seq": {"N": str(seq)}}
        return resp

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        keys = RequestItems[self.table]["Keys"]
        out = []
        for key in keys:
            j = int(key["pk"]["S"].rsplit("#C", 1)[1])
            share = self._per_shard(j)
            failed = self.failed // self.shards + (1 if j < self.failed % self.shards else 0)
            out.append(
                _wire(
                    {
                        "pk": key["pk"]["S"],
                        "sk": "COUNT",
                        "succeeded": share - failed,
                        "failed": failed,
                        "done": share,
                        "room": 0,
                    }
                )
            )
        return {"Responses": {self.table: out}}

    def update_item(self, **kw: Any) -> dict[str, Any]:
        if "email_claimed_at" in kw.get("UpdateExpression", ""):
            if self.email_claimed and "attribute_not_exists(email_claimed_at)" in kw.get("ConditionExpression", ""):
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "UpdateItem")
            self.email_claimed = "REMOVE" not in kw["UpdateExpression"]
        return {}


class _FileBody:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes:
        return self.path.read_bytes()

    def iter_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk


class DiskS3:
    """Enough of an S3 client for the reduce, keeping objects in files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: dict[str, int] = {}
        self._uploads: dict[str, list[Path]] = {}

    def _count(self, op: str) -> None:
        self.requests[op] = self.requests.get(op, 0) + 1

    def _path(self, bucket: str, key: str) -> Path:
        path = self.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **kw: Any) -> dict[str, Any]:
        self._count("PutObject")
        self._path(Bucket, Key).write_bytes(Body)
        return {"ETag": '"x"'}

    def create_multipart_upload(self, *, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        self._count("CreateMultipartUpload")
        upload_id = f"u{len(self._uploads)}"
        self._uploads[upload_id] = []
        return {"UploadId": upload_id}

    def upload_part(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict[str, Any]:
        self._count("UploadPart")
        part = self._path(Bucket, f".parts/{UploadId}/{PartNumber:05d}")
        part.write_bytes(Body)
        self._uploads[UploadId].append(part)
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str, **kw: Any) -> dict[str, Any]:
        self._count("CompleteMultipartUpload")
        with self._path(Bucket, Key).open("wb") as out:
            for part in self._uploads.pop(UploadId):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out)
                part.unlink()
        return {}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        for part in self._uploads.pop(UploadId, []):
            part.unlink(missing_ok=True)
        return {}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._count("GetObject")
        path = self.root / Bucket / Key
        if not path.is_file():
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": Key}}, "GetObject")
        return {"Body": _FileBody(path)}

    def generate_presigned_url(self, op: str, Params: dict[str, str], ExpiresIn: int) -> str:
        return f"https://{Params['Bucket']}.s3.amazonaws.com/{Params['Key']}?X-Amz-Expires={ExpiresIn}"


class RecordingSes:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_email(self, **kw: Any) -> dict[str, Any]:
        self.sent.append(kw)
        return {"MessageId": f"m{len(self.sent)}"}


def build_report(results: int, workdir: Path) -> dict[str, Any]:
    """Build the report of a synthetic run of `results` tasks; measure this process's peak RSS."""
    from microprocess.ledger import Ledger
    from microservice.reduce import ReduceRequest, finalize, reduce_part
    from microservice.settings import S3_MIN_PART_BYTES
    from tests.declared import CREDIT_SCORES

    job, run_id, table, bucket = CREDIT_SCORES, "bench-memory-run", "ledger", "reports"
    client = SyntheticLedgerClient(table, run_id, job.name, results)
    ledger = Ledger(table, client=client)
    s3, ses = DiskS3(workdir), RecordingSes()
    baseline = _rss_mb()
    started = time.perf_counter()
    for shard in range(SHARDS):
        req = ReduceRequest(
            run_id=run_id, task_id=f"reduce-part-{shard:03d}", job=job.name, shard=shard, kind="reduce-part"
        )
        reduce_part(ledger, s3, bucket, job, req, part_bytes=S3_MIN_PART_BYTES)
    answer = finalize(
        ledger,
        s3,
        ses,
        bucket,
        job,
        ReduceRequest(run_id=run_id, task_id="finalize", job=job.name, kind="finalize"),
        sender="reports@example.com",
        part_bytes=S3_MIN_PART_BYTES,
        link_expiry_s=3600,
    )
    seconds = time.perf_counter() - started
    peak = _rss_mb()
    report = workdir / bucket / f"reports/{job.name}/{run_id}/report.csv"
    with report.open("rb") as f:
        rows = sum(1 for _ in f) - 1
    return {
        "results": results,
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "delta_mb": round(peak - baseline, 1),
        "seconds": round(seconds, 2),
        "report_rows": rows,
        "report_bytes": report.stat().st_size,
        "summary_rows": answer["summary"]["tasks"],
        "emails": len(ses.sent),
        "s3_requests": s3.requests,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peak RSS of building one run's report.")
    parser.add_argument("--results", type=int, required=True)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stand-in S3 keeps objects")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-report-", dir=args.workdir))
    try:
        print(json.dumps(build_report(args.results, workdir)), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    main()
