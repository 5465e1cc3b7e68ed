"""`make bench`: the performance figures P1-P6 and P8, measured on this machine.

    .venv/bin/python -m bench.run [--items 10000] [--p8-items 100000] [--out bench/results/latest.json]

Prints a table and writes `bench/results/latest.json`; refreshes
`microprocess/measured_costs.json`, which `microprocess plan` reads. Every figure
comes from this run; nothing is assumed except the list prices (dated, in
`microprocess/pricing_table.json`). How each figure is measured: `METHODS` below.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from bench import adaptive, adaptive_local, fair_runs_local, fair_share_local
from bench.figures import (
    hot_key,
    measured_costs,
    observed_from_dict,
    observed_to_dict,
    parse_time,
    reduce_latency,
    report_figures,
    split_rate,
    split_working_rate,
    splitter_model,
    usage_split,
)
from microprocess.cli.planner import MEASURED_COSTS_PATH, MeasuredCosts, plan_run
from microprocess.cli.pricing import Usage, cost_by_service, lambda_gb_seconds, load_price_table
from microservice.settings import S3_MIN_PART_BYTES
from tests.declared import CREDIT_SCORES

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
SEED_ITEMS = 19_000_000

METHODS = {
    "p1": "(a) the full pipeline (splitter λ -> SQS -> forwarder λ -> HTTP -> ledger -> reduce -> report + email) "
    "on the local stack, N seeded companies, task endpoint = the queue service app with a no-op task route "
    "(bench.noop_service: answers at once, no table access); items/s = N / (reduce claimed - start request). "
    "(b) N envelope-sized messages sent with the project's QueueSender (8 threads) to a fresh queue in the same "
    "emulator, consumed by an event source mapping with the forwarder's batch size and maximum concurrency into a "
    "handler that returns {'batchItemFailures': []}; items/s = N / (first send -> queue empty).",
    "p2": "Every AWS request of (a) through a counting reverse proxy (bench.proxy; the functions' and the "
    "service's AWS_ENDPOINT_URL point at it, one port per caller): service and operation from the SigV4 scope "
    "and X-Amz-Target/Action/REST path; SQS billed per 64 KB chunk; DynamoDB units from the emulator's "
    "ConsumedCapacity (the proxy adds ReturnConsumedCapacity=TOTAL), failed conditional writes computed at 1 WRU "
    "per started KB of the item; the event source's receive/delete (inside the emulator) from its log, one "
    "ReceiveMessage + one DeleteMessageBatch per batch; Lambda invocations, durations and log bytes from the "
    "functions' REPORT lines and log groups. Priced with microprocess/pricing_table.json for a run of 1,000,000 "
    "items: per-item usage x 1e6 + the per-run report's S3 requests at N rows + the email + Lambda GB-s: "
    "forwarder batches x (service latency + assumed AWS waits + the forwarder's CPU time per batch at its vCPU "
    "share) x memory, the split's modelled invocation time, the reducer's report time at N rows (P5), the sweeps.",
    "p3": "Writes per ledger item (pk|sk) and per partition key from the proxied PutItem/UpdateItem/DeleteItem/"
    "BatchWriteItem/TransactWriteItems bodies during (a), conditional failures included; per 1,000 completions; "
    "ceiling = 1,000 write units/s per item / the hottest item's write units per completion.",
    "p4": "From the last task record's finished_at (max over the run's task records) to the run's "
    "reduce_claimed_at, and to the emulator's SES capture timestamp of the run's email.",
    "p5": "python -m bench.report_memory in a fresh process: the microservice's reduce_part (16 shards) + finalize "
    "over a real Ledger whose DynamoDB client makes up 1 MB Query pages on demand, S3 kept in files on disk, so "
    "the process holds only what the report builder holds; peak RSS = getrusage ru_maxrss.",
    "p6": "Items/s enqueued by the splitter during (a): in total (expected / (split_finished_at - created_at)), "
    "over the job's scan segments, and per invocation (expected / the splitter's summed REPORT durations); "
    "19 M model (the planner's, on AWS): per segment, the splitter's own CPU time per item (its worker processes, "
    "/proc) at its vCPU share + per page of source.page_size items its assumed AWS calls and its SendMessageBatch "
    "calls (SEND_THREADS in flight); the segments split in parallel, each invocation works (timeout - margin) s, "
    "then continues itself.",
    "p7": adaptive.METHOD,
    "p7_measured": adaptive_local.METHOD,
    "p9_measured": fair_share_local.METHOD,
    "fair_runs": fair_runs_local.METHOD,
    "p8": "A third plain run of (a) after growing the seeded table to the P8 item count (same seeder, same seed): "
    "items/s (expected / (reduce claimed - start request)) of that run / items/s of the plain (a) run. The splitter "
    "keeps the job's queue below the local stage's max_queue_depth_cap, so the emulator's queue stays short.",
}


def echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ministack": metadata.version("ministack"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def report_memory(results: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.report_memory", "--results", str(results)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.report_memory --results {results} failed:\n{proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if data["report_rows"] != results:
        raise RuntimeError(f"the report of {results} results has {data['report_rows']} rows")
    return data


def measure(
    items: int, p8_items: int, p7_items: int = adaptive_local.ITEMS, p9: bool = True, fair_runs: bool = True
) -> dict[str, Any]:
    from bench.harness import BaselineResult, BenchStack, PipelineRun, observe, run_baseline, run_pipeline

    started = time.monotonic()
    # When the measuring happened (a recompute from the raw observations keeps it).
    out: dict[str, Any] = {"machine": machine(), "items": items, "measured_at": _now()}
    out["cores"] = out["machine"]["cores"]

    echo("P5: report memory for 10,000 and 100,000 results …")
    p5 = {n: report_memory(n) for n in (10_000, 100_000)}

    echo(f"starting the local stack with {items:,} companies, the counting proxy and the no-op services …")
    with BenchStack(items=items, echo=echo) as bs:
        echo(f"  ready in {bs.setup_seconds:.1f} s; forwarder event source concurrency {bs.concurrency()}")

        def baseline() -> BaselineResult:
            echo(f"P1 (b): {items:,} messages through the emulator's event source into a trivial handler …")
            b = run_baseline(bs, items)
            echo(f"  {b.items_per_s:,.0f} items/s ({b.seconds:.1f} s, {b.batches} batches)")
            return b

        def pipeline(counted: bool) -> PipelineRun:
            label = "counted: every AWS request through the proxy" if counted else "plain"
            echo(f"P1 (a): a run of {items:,} tasks through the whole pipeline ({label}) …")
            r = run_pipeline(bs, counted=counted, echo=echo)
            echo(f"  {r.items_per_s:,.0f} items/s ({r.seconds:.1f} s)")
            return r

        # (b) brackets the plain (a) run: once just before it, once just after it.
        baselines = [baseline()]
        runs = {False: pipeline(counted=False)}
        baselines.append(baseline())
        runs[True] = pipeline(counted=True)
        obs = observe(bs, runs[False], runs[True])
        echo(f"P8: growing the seeded table to {p8_items:,} items …")
        seeded_s = bs.seed_more(p8_items)
        echo(f"  seeded in {seeded_s:.1f} s")
        echo(f"P8: a run of {p8_items:,} tasks through the whole pipeline (plain) …")
        big = run_pipeline(bs, counted=False, echo=echo)
        echo(f"  {big.items_per_s:,.0f} items/s ({big.seconds:.1f} s)")
        raw_path = bs.ws.workdir / "raw.json"
    p7_measured = adaptive_local.measure_standalone(p7_items, echo=echo) if p7_items else None
    p9_measured = fair_share_local.measure_standalone(echo=echo) if p9 else None
    fair_runs_measured = fair_runs_local.measure_standalone(echo=echo) if fair_runs else None
    out["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["bench_seconds"] = round(time.monotonic() - started, 1)
    timings = {
        key: {**r.run, "seconds": round(r.seconds, 3), "emails": r.emails, "cpu_s": r.cpu_s}
        for key, r in (("plain", runs[False]), ("counted", runs[True]), ("p8", big))
    }
    timings["p8"]["functions"] = {role: asdict(use) for role, use in big.functions.items()}
    raw = {
        "head": out,
        "observed": observed_to_dict(obs),
        "timings": timings,
        "baselines": [asdict(b) for b in baselines],
        "p5": {str(k): v for k, v in p5.items()},
        **({"p7_measured": p7_measured} if p7_measured else {}),
        **({"p9_measured": p9_measured} if p9_measured else {}),
        **({"fair_runs": fair_runs_measured} if fair_runs_measured else {}),
    }
    write_json(raw_path, raw)
    echo(f"raw observations kept in {raw_path} (recompute the figures with --recompute {raw_path})")
    return from_raw(raw)


def from_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures from the raw observations of one bench run."""
    from bench.harness import BaselineResult

    obs = observed_from_dict(raw["observed"])
    baselines = [BaselineResult(**b) for b in raw["baselines"]]
    p5 = {int(k): v for k, v in raw["p5"].items()}
    head = raw["head"]
    # measured_at: when the measuring ran (raw observations kept before it was recorded: now)
    figs = figures(obs, raw["timings"], baselines, p5, head["cores"], head.get("measured_at") or _now())
    kept = {key: raw[key] for key in ("p7_measured", "p9_measured", "fair_runs") if key in raw}
    return {**head, **figs, **kept}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _p8_split_cpu(p8: dict[str, Any] | None) -> tuple[int, float] | None:
    """(items, the splitter's CPU seconds) of the P8 run, when it ran and recorded them."""
    if not p8:
        return None
    cpu = float(p8.get("functions", {}).get("splitter", {}).get("cpu_s", 0.0))
    return (int(p8["expected"]), cpu) if cpu > 0 else None


def figures(
    obs: Any, timings: dict[str, Any], baselines: list[Any], p5: dict[int, Any], cores: int, measured_at: str
) -> dict[str, Any]:
    prices = load_price_table()
    job = CREDIT_SCORES
    mc_doc = measured_costs(
        obs,
        measured_at=measured_at,
        cores=cores,
        split_segments=job.source.segments,
        report=report_figures(p5[max(p5)], part_bytes=S3_MIN_PART_BYTES),
        lambda_workers_cpu_s=timings["plain"].get("cpu_s", {}).get("lambda_workers"),
        larger_split=_p8_split_cpu(timings.get("p8")),
    )
    mc = MeasuredCosts.from_dict(mc_doc)

    # P2: a run of one million items, priced with the table.
    p2_plan = plan_run(job, 1_000_000, measured=mc, prices=prices, task_seconds=0.0)
    p2_at_half = plan_run(job, 1_000_000, measured=mc, prices=prices, task_seconds=0.5)
    # How the total moves with the forwarder's own CPU time per batch: total = fixed + slope x CPU
    # seconds; the break-even CPU time for $1.00 per million.
    fixed = plan_run(
        job, 1_000_000, measured=replace(mc, forwarder_cpu_s_per_batch=0.0), prices=prices, task_seconds=0.0
    )
    one_s = plan_run(
        job, 1_000_000, measured=replace(mc, forwarder_cpu_s_per_batch=1.0), prices=prices, task_seconds=0.0
    )
    slope = one_s.total_usd - fixed.total_usd
    breakeven = (1.0 - fixed.total_usd) / slope if slope > 0 else None
    per_item, per_run = usage_split(obs)
    # The per-item lookup's index (`item_index`, on by default): the splitter's BatchWriteItem units.
    index_units = sum(
        float(r["value"])
        for r in obs.proxy.get("write_units", [])
        if r["caller"] == "splitter" and r["operation"] == "BatchWriteItem"
    ) / max(obs.items, 1)
    without_index = plan_run(
        job,
        1_000_000,
        measured=replace(
            mc,
            per_item=replace(
                mc.per_item, dynamodb_write_units=max(mc.per_item.dynamodb_write_units - index_units, 0.0)
            ),
        ),
        prices=prices,
        task_seconds=0.0,
    )
    write_units_per_item = {
        f"{r['caller']}:{r['operation']}": round(float(r["value"]) / max(obs.items, 1), 4)
        for r in obs.proxy.get("write_units", [])
    }
    fwd, spl = obs.functions["forwarder"], obs.functions["splitter"]
    observed_total = (
        per_item.scaled(obs.items)
        + per_run
        + Usage(
            lambda_requests=spl.invocations,
            lambda_gb_seconds=lambda_gb_seconds(1, fwd.duration_s, fwd.memory_mb)
            + lambda_gb_seconds(1, spl.duration_s, spl.memory_mb),
        )
    )
    naive = {k: v * 1e6 / obs.items for k, v in cost_by_service(observed_total, prices).items()}
    requests_per_item: dict[str, float] = {}
    for row in obs.proxy.get("requests", []):
        key = f"{row['service']}:{row['operation']}"
        requests_per_item[key] = requests_per_item.get(key, 0.0) + row["value"] / obs.items
    for role, es in obs.event_sources.items():
        requests_per_item[f"sqs:ReceiveMessage (event source, {role})"] = es.batches / obs.items
        requests_per_item[f"sqs:DeleteMessageBatch (event source, {role})"] = (
            es.batches - es.failed_batches
        ) / obs.items
    for role, use in obs.functions.items():
        if use.invocations:
            requests_per_item[f"lambda:Invoke ({role})"] = use.invocations / obs.items

    hk = hot_key(obs)
    lat = reduce_latency(obs)
    rate = split_working_rate(obs, job.source.segments)  # the splitter's own speed (not its local waits)
    spl_use = obs.functions["splitter"]
    p8 = timings.get("p8")
    p8_figures: dict[str, Any] = {}
    if p8 is not None:
        p8_rate = p8["expected"] / p8["seconds"]
        p8_split_total = p8["expected"] / _seconds_between(p8["created_at"], p8["split_finished_at"])
        p8_spl = p8.get("functions", {}).get("splitter", {})
        p8_figures = {
            "p8_items": p8["expected"],
            "p8_items_per_s": round(p8_rate, 1),
            "p8_ratio": round(p8_rate / (obs.items / timings["plain"]["seconds"]), 3),
            "p8_detail": {
                "run_id": p8["run_id"],
                "seconds": p8["seconds"],
                "reference_items": obs.items,
                "reference_items_per_s": round(obs.items / timings["plain"]["seconds"], 1),
                "split_items_per_s_total": round(p8_split_total, 1),
                "split_items_per_s_per_invocation": (  # working time: without the backpressure waits
                    round(p8["expected"] / (p8_spl["duration_s"] - p8_spl.get("waited_s", 0.0)), 1)
                    if p8_spl.get("duration_s", 0.0) > p8_spl.get("waited_s", 0.0)
                    else None
                ),
                "splitter_invocations": p8_spl.get("invocations"),
                "cpu_seconds": p8.get("cpu_s", {}),
                "functions": p8.get("functions", {}),
                "emails": p8["emails"],
            },
        }
    seed_plan = plan_run(job, SEED_ITEMS, measured=mc, prices=prices, task_seconds=0.5)
    model = splitter_model(seed_plan.split)  # the split on AWS, as the plan models it

    plain, counted = timings["plain"], timings["counted"]
    emulator_rate = sum(b.items_per_s for b in baselines) / len(baselines)
    p1a = obs.items / plain["seconds"]
    fwd_es = obs.event_sources.get("forwarder")
    emulator_requests = sum(r["value"] for r in obs.proxy.get("requests", [])) + sum(
        es.batches * 2 for es in obs.event_sources.values()
    )
    result = {
        "p1_pipeline_items_per_s": round(p1a, 1),
        "p1_emulator_items_per_s": round(emulator_rate, 1),
        "p1_ratio": round(p1a / emulator_rate, 3),
        "p1_detail": {
            "run_id": plain["run_id"],
            "pipeline_seconds": plain["seconds"],
            "pipeline_split_seconds": round(obs.items / split_rate(obs), 3),
            "baseline_note": "P1 (b) ran just before and just after the plain (a) run; its figure is the mean",
            "baseline_items_per_s": [round(b.items_per_s, 1) for b in baselines],
            "baseline_seconds": [round(b.seconds, 3) for b in baselines],
            "baseline_batches": [b.batches for b in baselines],
            "pipeline_forwarder_batches": fwd_es.batches if fwd_es else None,
            "batch_size": obs.batch_size,
            "max_concurrency": obs.max_concurrency,
            "task_endpoint": "bench.noop_service (the queue service app; POST /tasks/credit-score answered at once)",
            "counted_run_id": counted["run_id"],
            "counted_items_per_s": round(obs.items / counted["seconds"], 1),
            "counted_note": "the same pipeline with every AWS call through the counting proxy (P2, P3 come from it)",
            "proxy_cpu_s": round(obs.proxy.get("proxy_cpu_s", 0.0), 2),
            "emulator_requests_per_item_pipeline": round(emulator_requests / obs.items, 3),
            "emulator_requests_per_item_baseline": round(
                (baselines[0].messages / 10 + 2 * baselines[0].batches) / baselines[0].messages, 3
            ),
            "cpu_seconds_pipeline": plain.get("cpu_s", {}),
            "cpu_seconds_baseline": baselines[0].cpu_s,
            "cpu_note": "CPU seconds by process group while each ran (emulator = ministack's own process; "
            "lambda_workers = its worker processes)",
        },
        "p2_usd_per_million": round(p2_plan.total_usd, 4),
        "p2_by_service": {k: round(v, 4) for k, v in p2_plan.cost.items()},
        "p2_detail": {
            "forwarder_memory_mb": fwd.memory_mb,
            "service_latency_s": 0.0,
            "service_latency_note": "no-op endpoint; a batch on AWS = latency + the planner's assumed AWS waits + "
            "the forwarder's measured CPU time at its vCPU share (the local wall time below is not priced)",
            "forwarder_cpu_s_per_batch": mc.forwarder_cpu_s_per_batch,
            "forwarder_cpu_source": mc_doc["forwarder"]["cpu_source"],
            "forwarder_seconds_per_batch": round(fwd.mean_s, 4),
            "forwarder_invocations": fwd.invocations,
            "splitter_invocations": spl.invocations,
            "splitter_seconds": round(spl.duration_s, 2),
            "usd_per_million_at_0_5_s_latency": round(p2_at_half.total_usd, 4),
            "by_service_at_0_5_s_latency": {k: round(v, 4) for k, v in p2_at_half.cost.items()},
            "usd_per_million_without_forwarder_cpu": round(fixed.total_usd, 4),
            "usd_per_million_without_item_index": round(without_index.total_usd, 4),
            "item_index_write_units_per_item": round(index_units, 4),
            "item_index_note": "the same run priced without the per-item lookup index (item_index = false): "
            "less the splitter's BatchWriteItem write units",
            "dynamodb_write_units_per_item_by_caller": write_units_per_item,
            "usd_per_million_per_forwarder_cpu_second_per_batch": round(slope, 4),
            "forwarder_cpu_seconds_per_batch_for_1_usd": round(breakeven, 4) if breakeven is not None else None,
            "usd_per_million_naive": round(sum(naive.values()), 4),
            "naive_note": "this run's whole bill / its items x 1e6 (per-run costs spread over 10k items only)",
            "per_item_usage": {k: round(v, 7) for k, v in per_item.as_dict().items()},
            "per_run_usage": {k: round(v, 3) for k, v in per_run.as_dict().items()},
            "requests_per_item": {k: round(v, 5) for k, v in sorted(requests_per_item.items())},
            "dynamodb_errors": [r for r in obs.proxy.get("errors", []) if r["service"] == "dynamodb"],
            "computed_write_units": obs.proxy.get("computed_write_units", []),
            "proxy_errors": obs.proxy.get("proxy_errors", {}),
            "prices_as_of": prices.as_of,
        },
        "p3_hottest_writes_per_1000": hk["hottest_item_writes_per_1000"],
        "p3_ceiling_items_per_s": hk["ceiling_items_per_s"],
        "p3_detail": hk,
        "p4_claim_latency_s": lat["claim_latency_s"],
        "p4_email_latency_s": lat["email_latency_s"],
        "p4_detail": {**lat, "emails": plain["emails"]},
        "p5_rss_10k_mb": p5[10_000]["peak_rss_mb"],
        "p5_rss_100k_mb": p5[100_000]["peak_rss_mb"],
        "p5_ratio": round(p5[100_000]["peak_rss_mb"] / p5[10_000]["peak_rss_mb"], 3),
        "p5_detail": {str(k): v for k, v in p5.items()},
        "p6_split_items_per_s": round(rate, 1),
        "p6_split_items_per_s_per_invocation": round(obs.items / spl_use.working_s, 1) if spl_use.working_s else None,
        "p6_split_wall_items_per_s": round(split_rate(obs), 1),  # bound locally by the processing
        "p6_splitter_waited_s": round(spl_use.waited_s, 1),
        "p6_splitter_invocations": spl_use.invocations,
        "p6_model_19m": model,
        "plan_19m_x_0_5s": seed_plan.as_dict(),
        **p8_figures,
        "methods": METHODS,
        "measured_costs": mc_doc,
    }
    return result


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    model = r["p6_model_19m"]
    rows = [
        (
            "machine",
            f"{r['cores']} cores, {m['platform']}, ministack {m['ministack']}, "
            f"load {m['loadavg_at_start'][0]} -> {m.get('loadavg_at_end', ['?'])[0]}",
        ),
        ("P1 pipeline", f"{r['p1_pipeline_items_per_s']:,.0f} items/s ({r['items']:,} tasks, no-op endpoint)"),
        ("P1 emulator", f"{r['p1_emulator_items_per_s']:,.0f} items/s (event source -> trivial handler)"),
        ("P1 ratio", f"{r['p1_ratio']:.2f}  (target >= 0.5)"),
        (
            "P2 $/million",
            f"{r['p2_usd_per_million']:.3f}  (target <= 1.00; forwarder "
            f"{r['p2_detail']['forwarder_memory_mb']} MB, no-op service; "
            f"{r['p2_detail']['usd_per_million_at_0_5_s_latency']:.3f} at 0.5 s latency; "
            f"{r['p2_detail'].get('usd_per_million_without_item_index', 0):.3f} with item_index = false)",
        ),
        ("P2 by service", ", ".join(f"{k} {v:.3f}" for k, v in r["p2_by_service"].items())),
        (
            "P3 hottest item",
            f"{r['p3_hottest_writes_per_1000']} writes ({r['p3_detail']['hottest_item_write_units_per_1000']} write "
            f"units) per 1,000 completions ({r['p3_detail']['hottest_item']})",
        ),
        (
            "P3 ceiling",
            f"{r['p3_ceiling_items_per_s']:,} items/s at 1,000 WCU/s per item (target >= 50,000); "
            f"hottest partition key {r['p3_detail']['hottest_partition_key_writes_per_1000']} per 1,000 -> "
            f"{r['p3_detail']['partition_key_ceiling_items_per_s']:,} items/s",
        ),
        ("P4 claim", f"{r['p4_claim_latency_s']} s after the last completion"),
        ("P4 email", f"{r['p4_email_latency_s']} s after the last completion"),
        ("P5 RSS", f"{r['p5_rss_10k_mb']} MB (10k) / {r['p5_rss_100k_mb']} MB (100k), ratio {r['p5_ratio']}"),
        (
            "P6 splitter",
            f"{r['p6_split_items_per_s']:,.0f} items/s in total over {model['segments']} segments, "
            f"{r.get('p6_split_items_per_s_per_invocation') or 0:,.0f} items/s per invocation "
            f"({r.get('p6_splitter_invocations')} invocations; working time, without "
            f"{r.get('p6_splitter_waited_s', 0):,.0f} s of waits for the local queue depth limit; "
            f"wall clock {r.get('p6_split_wall_items_per_s', 0):,.0f}/s); 19 M items on AWS (model): "
            f"{model.get('items_per_s_per_segment', 0):,.0f} items/s per segment, "
            f"{model['invocations']} invocations, {model['self_continuations']} self-continuations "
            f"({model['split_hours']} h)",
        ),
    ]
    if "p8_ratio" in r:
        d = r["p8_detail"]
        rows += [
            (
                "P8 scale",
                f"{r['p8_items_per_s']:,.0f} items/s at {r['p8_items']:,} vs {d['reference_items_per_s']:,.0f} at "
                f"{d['reference_items']:,}: ratio {r['p8_ratio']:.2f}  (target >= 0.8)",
            ),
            (
                "P8 splitter",
                f"{d['split_items_per_s_total']:,.0f} items/s in total, "
                f"{d['split_items_per_s_per_invocation'] or 0:,.0f} per invocation "
                f"({d['splitter_invocations']} invocations)",
            ),
        ]
    if "p7_adaptive" in r:
        rows += adaptive.lines(r["p7_adaptive"])
    if "p7_measured" in r:
        rows += adaptive_local.lines(r["p7_measured"])
    if "p9_measured" in r:
        rows += fair_share_local.lines(r["p9_measured"])
    if "fair_runs" in r:
        rows += fair_runs_local.lines(r["fair_runs"])
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the six performance figures on the local stack.")
    parser.add_argument("--items", type=int, default=10_000, help="tasks in the measured run (default 10,000)")
    parser.add_argument(
        "--p8-items", type=int, default=100_000, help="tasks in the P8 run (default 100,000; compared with --items)"
    )
    parser.add_argument(
        "--p7-items", type=int, default=adaptive_local.ITEMS, help="tasks per P7 measured run (0: skip it)"
    )
    parser.add_argument("--no-p9", action="store_true", help="skip P9 (capacity, fair share, shedding: ~6 min)")
    parser.add_argument(
        "--no-fair-runs", action="store_true", help="skip the fair share between runs of one job (~3 min)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results JSON goes")
    parser.add_argument(
        "--no-measured-costs", action="store_true", help="do not refresh microprocess/measured_costs.json"
    )
    parser.add_argument("--recompute", type=Path, help="recompute the figures from a kept raw.json (no measuring)")
    args = parser.parse_args(argv)
    # SIGTERM stops the bench the way Ctrl-C does, so that the processes it started are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    result = (
        from_raw(json.loads(args.recompute.read_text()))
        if args.recompute
        else measure(args.items, args.p8_items, args.p7_items, p9=not args.no_p9, fair_runs=not args.no_fair_runs)
    )
    result["p7_adaptive"] = adaptive.compare(CREDIT_SCORES)  # simulated in virtual time: see bench/adaptive.py
    if args.recompute:
        result["recomputed_at"] = _now()  # bench_seconds stays the measuring run's (from the raw head)
    else:
        result["bench_seconds"] = round(time.monotonic() - started, 1)
    result["measured_at"] = result["measured_costs"]["measured_at"]
    write_json(args.out, result)
    if not args.no_measured_costs:
        write_json(MEASURED_COSTS_PATH, result["measured_costs"])
    print(table(result))
    took = time.monotonic() - started
    print(
        f"\nwritten to {args.out} in {took:.0f} s" + (f" (recomputed from {args.recompute})" if args.recompute else "")
    )
    if not args.no_measured_costs:
        print(f"measured costs for `microprocess plan` refreshed in {MEASURED_COSTS_PATH}")
    print("19 M companies x 0.5 s on AWS:", _plan_line(result["plan_19m_x_0_5s"]))
    return 0


def _seconds_between(start: str | None, end: str | None) -> float:
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None or b <= a:
        raise ValueError(f"no time between {start!r} and {end!r}")
    return b - a


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _plan_line(p: dict[str, Any]) -> str:
    return (
        f"{p['wall_hours']:.2f} h at concurrency {p['concurrency']} (bound by {p['bottleneck']}), "
        f"${p['total_usd']:.2f} ({p['usd_per_million']:.3f} per million)"
    )


if __name__ == "__main__":
    sys.exit(main())
