"""Deploying the local stage of the CDK app into the emulator with the pinned CDK CLI.

The same CDK app that deploys to AWS (the package's `microprocess.cdk.app`; `infra.app` in this
repository): context `stage=local` selects the `Microprocess-Local` stack, which swaps the Fargate
services for the locally run service processes (their URLs are passed as the `service_urls`
context), and context `declarations` is the file the CLI read, so the stage deploys what the
CLI runs. It runs in the project folder (the declaration file's), with its `cdk.json`, if any.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from microprocess.local.emulator import ACCOUNT_ID, REGION, aws_env
from microprocess.local.processes import log_tail
from microprocess.local.tls import LocalTls
from microprocess.local.workspace import Workspace
from microprocess.stacks import LOCAL_OUTPUTS as REQUIRED_OUTPUTS
from microprocess.stacks import LOCAL_STACK


class DeployError(RuntimeError):
    """The CDK CLI failed; the message names the step and shows the end of its log."""


def cdk_env(endpoint_url: str, tls: LocalTls) -> dict[str, str]:
    env = aws_env(endpoint_url)
    env.update(
        {
            # The emulator is reached over TLS: the CLI (Node) and its SDK trust the local CA.
            "NODE_EXTRA_CA_CERTS": str(tls.ca_cert),
            "AWS_CA_BUNDLE": str(tls.ca_cert),
            "CDK_DEFAULT_ACCOUNT": ACCOUNT_ID,
            "CDK_DEFAULT_REGION": REGION,
            "CDK_DISABLE_VERSION_CHECK": "1",
            "CDK_DISABLE_CLI_TELEMETRY": "true",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        }
    )
    return env


def _run(step: str, argv: list[str], *, env: Mapping[str, str], cwd: Path, log: Path, timeout_s: float) -> float:
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {step}: {shlex.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(
                argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeployError(f"{step} did not finish in {timeout_s:.0f} s; see {log}") from None
        except FileNotFoundError:
            raise DeployError(
                f"{step}: the CDK CLI {argv[0]} is missing: install it (`npm install aws-cdk@2` in the project "
                "folder; in this repository `make setup`) or point MICROPROCESS_CDK_CLI at it"
            ) from None
    if proc.returncode != 0:
        raise DeployError(f"{step} failed (exit {proc.returncode}); {log} ends with:\n{log_tail(log, 30)}")
    return time.monotonic() - started


def app_module(root: Path) -> str:
    """The CDK app `python -m` runs: the installed package's `microprocess.cdk.app`, else, in a
    checkout of this repository (`root/infra/app.py`), `infra.app`."""
    if importlib.util.find_spec("microprocess.cdk") is not None:
        return "microprocess.cdk.app"
    if (root / "infra" / "app.py").is_file():
        return "infra.app"
    raise DeployError("the CDK app microprocess.cdk.app is not installed: pip install 'microprocess[local]'")


def deploy_local_stage(
    ws: Workspace,
    endpoint_url: str,
    tls: LocalTls,
    *,
    declarations_file: Path,
    service_urls: Mapping[str, str],
    timeout_s: float = 300.0,
    extra_context: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, float]]:
    """Bootstrap the emulator's account and deploy `Microprocess-Local` of `declarations_file`,
    pointing each declared service at its local URL (`service_urls`: service name -> base URL of
    its push endpoint).

    Returns (the stack outputs, seconds per step).
    """
    module = app_module(ws.root)
    env = cdk_env(endpoint_url, tls)
    cli = str(ws.cdk_cli)
    log = ws.log("cdk")
    timings: dict[str, float] = {}
    # Bootstrap from the work folder: no cdk.json there, so the CLI does not synthesize the app.
    timings["bootstrap"] = _run(
        "cdk bootstrap",
        [cli, "bootstrap", f"aws://{ACCOUNT_ID}/{REGION}", "--no-notices", "--ci"],
        env=env,
        cwd=ws.workdir,
        log=log,
        timeout_s=timeout_s,
    )
    context = {
        "stage": "local",
        "declarations": str(declarations_file.resolve()),
        "service_urls": json.dumps(service_urls, sort_keys=True),
    }
    context.update(extra_context or {})
    ws.cdk_outputs_file.unlink(missing_ok=True)
    argv = [
        cli,
        "deploy",
        LOCAL_STACK,
        "--app",
        shlex.join([sys.executable, "-m", module]),
        "--output",
        str(ws.cdk_out),
        "--require-approval",
        "never",
        "--no-notices",
        "--ci",
        "--outputs-file",
        str(ws.cdk_outputs_file),
    ]
    for key, value in context.items():
        argv += ["-c", f"{key}={value}"]
    timings["deploy"] = _run("cdk deploy", argv, env=env, cwd=ws.root, log=log, timeout_s=timeout_s)
    try:
        outputs: dict[str, str] = json.loads(ws.cdk_outputs_file.read_text())[LOCAL_STACK]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise DeployError(f"cdk deploy wrote no outputs for {LOCAL_STACK} to {ws.cdk_outputs_file} ({exc})") from None
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise DeployError(f"stack {LOCAL_STACK} lacks the outputs {missing} (it has {sorted(outputs)})")
    return outputs, timings
