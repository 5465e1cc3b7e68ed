"""A team's own project, outside this checkout, from the wheel: `pip install` + `microprocess init`.

One module, one local stack (1-2 min), two services: the project `init` wrote (FastAPI,
`local_app`) plus a second service copied from an `init --service stdlib` project (the standard
library's HTTP server, started by `local_command`). The wheel is built from this checkout and
installed into a fresh virtualenv in a temporary folder; every command runs there with that
virtualenv's `microprocess`, so no file of this repository is on its path (checked). The only
thing borrowed from the checkout is the Node CDK CLI (`MICROPROCESS_CDK_CLI`).

The virtualenv installs the wheel with its extras from pip's configured sources (a local mirror
here, the registry on CI) with the repository's pins as constraints, plus the wheel's folder as
`--find-links`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 500
#: The second service, added to the init'd project from an `init --service stdlib` project.
STDLIB_SERVICE = """
[services.counter-stdlib]
description = "The same counter on the standard library's HTTP server"
url = "https://counter-stdlib.example.com"
local_command = "python stdlib_counter/service.py"

[jobs.count-words-stdlib]
service = "counter-stdlib"
schedule = "cron(0 7 * * ? *)"
source = { kind = "s3", uri = "s3://team-items/texts/{date}.jsonl", format = "jsonl" }
item_id_field = "id"
sample_item = { id = "t-1", text = "one two three" }
task_path = "/tasks/count-words"
"""


@dataclass(frozen=True)
class Team:
    """The team's project and the virtualenv that holds microprocess."""

    folder: Path
    venv: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 600, check: bool = True) -> str:
        proc = subprocess.run(
            list(args),
            cwd=cwd or self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def microprocess(self, *args: str, **kwargs: object) -> str:
        return self.run(str(self.venv / "bin" / "microprocess"), *args, **kwargs)  # type: ignore[arg-type]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def constraints(path: Path) -> Path:
    """The repository's pins (requirements*.txt), as a pip constraints file."""
    pins = [
        line.split("[")[0] + line[line.index("==") :] if "[" in line.split("==")[0] else line
        for name in ("requirements.txt", "requirements-dev.txt")
        for line in (ROOT / name).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    path.write_text("\n".join(pins) + "\n")
    return path


def team_env(venv: Path) -> dict[str, str]:
    """The user's shell: this environment without the test session's Python or microprocess
    settings, the virtualenv first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MICROPROCESS_", "PYTHON", "VIRTUAL_ENV", "PYTEST", "COV_"))
    }
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
    env["VIRTUAL_ENV"] = str(venv)
    env["MICROPROCESS_CDK_CLI"] = str(ROOT / "node_modules" / ".bin" / "cdk")
    env["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = "20"
    return env


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    base = tmp_path_factory.mktemp("team")
    assert not base.resolve().is_relative_to(ROOT), "the team's folder must be outside this checkout"
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(ROOT), "-w", str(wheels)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("microprocess-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--find-links",
            str(wheels),
            "-c",
            str(constraints(base / "constraints.txt")),
            f"microprocess[local,service,cdk] @ {wheel.as_uri()}",
            "pytest",
        ],
        check=True,
        timeout=1200,
    )
    env = team_env(venv)
    folder = base / "jobs"
    probe = Team(base, venv, env)
    probe.microprocess("init", str(folder))
    probe.microprocess("init", "--service", "stdlib", str(base / "other"))
    (folder / "stdlib_counter").mkdir()
    shutil.copyfile(base / "other" / "service.py", folder / "stdlib_counter" / "service.py")
    with (folder / "microprocess.toml").open("a") as toml:
        toml.write(STDLIB_SERVICE)
    (folder / "texts.jsonl").write_text(
        "".join(json.dumps({"id": f"t-{i}", "text": " ".join(["w"] * (i % 7 + 1))}) + "\n" for i in range(ITEMS))
    )
    project = Team(folder, venv, env)
    project.microprocess("local", "up", "--detach", timeout=900)
    try:
        yield project
    finally:
        project.microprocess("local", "down", check=False)


def test_init_refuses_a_folder_that_is_not_empty(team: Team) -> None:
    proc = subprocess.run(
        [str(team.venv / "bin" / "microprocess"), "init", str(team.folder)],
        env=team.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "is not empty" in proc.stderr and "README.md" in proc.stderr


def test_no_file_of_this_repository_is_on_the_teams_path(team: Team) -> None:
    where = json.loads(
        team.run(
            team.python,
            "-c",
            "import json, sys, microprocess, microprocess.cdk, microprocess.functions; "
            "print(json.dumps([microprocess.__file__, microprocess.cdk.__file__, microprocess.functions.__file__, "
            "*sys.path]))",
        )
    )
    assert where and not [p for p in where if p and Path(p).resolve().is_relative_to(ROOT)], where
    assert all(Path(p).is_relative_to(team.venv) for p in where[:3]), where[:3]
    # the local stack's files are next to the declaration file
    assert (team.folder / ".microprocess" / "local.json").is_file()
    assert list((team.folder / ".microprocess" / "cdk.out").glob("asset.*/functions/forwarder/handler.py"))


def test_the_services_own_tests_pass(team: Team) -> None:
    assert "2 passed" in team.run(team.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_service.py")
    other = team.folder.parent / "other"
    assert "2 passed" in team.run(team.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=other)


@pytest.mark.parametrize(("service", "job"), [("counter", "count-words"), ("counter-stdlib", "count-words-stdlib")])
def test_a_service_keeps_the_contract_and_runs_500_items(team: Team, service: str, job: str) -> None:
    # GIVEN the running local stack of the team's project (FastAPI by local_app, stdlib by local_command)
    # WHEN the conformance check runs against the service
    checked = team.microprocess("check-service", service, timeout=300)
    # THEN every clause passes
    assert "20 of 20 clauses pass" in checked, checked
    # WHEN a run over 500 items pushes to it
    done = json.loads(
        team.microprocess("run", job, "--items", "texts.jsonl", "--wait", "--json", timeout=600).splitlines()[-1]
    )
    assert (done["status"], done["expected"], done["succeeded"]) == ("SUCCEEDED", ITEMS, ITEMS), done
    # THEN its report downloads with one row per item
    written = team.microprocess("report", done["run_id"], "--out", "reports").split()
    (csv_path,) = [Path(p) for p in written if p.endswith("report.csv")]
    assert len(csv_path.read_text().splitlines()) == ITEMS + 1


def test_the_declarations_flag_finds_the_project_from_anywhere(team: Team) -> None:
    # from the folder above the project, the flag names the file: the local stack of its folder is found
    status = team.microprocess(
        "--declarations", str(team.folder / "microprocess.toml"), "local", "status", cwd=team.folder.parent
    )
    assert "counter-stdlib" in status


def test_the_teams_cdk_app_synthesizes_offline(team: Team) -> None:
    team.run(team.python, "app.py", timeout=600)
    (template,) = (team.folder / "cdk.out").glob("*.template.json")
    resources = json.loads(template.read_text())["Resources"].values()
    handlers = {r["Properties"]["Handler"] for r in resources if r["Type"] == "AWS::Lambda::Function"}
    assert "functions.forwarder.handler.lambda_handler" in handlers
    queues = [r for r in resources if r["Type"] == "AWS::SQS::Queue"]
    assert queues
