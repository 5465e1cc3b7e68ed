"""A team's own project: `microprocess init`, one declaration file for every command (and the
stack `local up` deploys), and services started by `local_command`."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.cli.init import Framework, Project, render, write_project
from microprocess.cli.project import choose_declarations
from microprocess.declarations import DECLARATIONS_ENV, get_declarations, load_declarations
from microprocess.local import deploy
from microprocess.local.services import PORT_ENV, ServiceProcess, plan_processes, processes_of, spawn_service
from microprocess.local.workspace import PROJECT_ENV, Workspace, project_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_declarations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test picks its declaration file itself; the process-wide cache is reset around it."""
    for key in (DECLARATIONS_ENV, PROJECT_ENV, "MICROPROCESS_WORKDIR"):
        monkeypatch.delenv(key, raising=False)
    get_declarations.cache_clear()
    yield
    get_declarations.cache_clear()


# ----------------------------------------------------------------------------- init


@pytest.mark.parametrize("framework", list(Framework))
def test_init_writes_a_project_whose_declarations_load(tmp_path: Path, framework: Framework) -> None:
    folder = tmp_path / "billing-jobs"
    written = {p.name for p in write_project(folder, framework)}
    assert written == {
        "microprocess.toml",
        "app.py",
        "cdk.json",
        "items.jsonl",
        "README.md",
        "service.py",
        "test_service.py",
    }
    declared = load_declarations(folder / "microprocess.toml")
    (service,) = declared.services
    assert declared.jobs.names() == ["count-words"] and declared.jobs.get("count-words").service == service.name
    if framework is Framework.fastapi:
        assert (service.local_app, service.local_command) == ("service:app", None)
    else:
        assert (service.local_app, service.local_command) == (None, "python service.py")
    for name in ("app.py", "service.py", "test_service.py"):
        ast.parse((folder / name).read_text())  # valid Python, every placeholder filled
    assert "$" not in (folder / "app.py").read_text() and '"BillingJobs"' in (folder / "app.py").read_text()
    assert json.loads((folder / "cdk.json").read_text())["context"]
    assert all(json.loads(line)["id"] for line in (folder / "items.jsonl").read_text().splitlines())
    readme = (folder / "README.md").read_text()
    assert len(re.findall(r"^    (microprocess|npx) ", readme, re.MULTILINE)) == 4


def test_the_stack_name_always_starts_with_a_letter(tmp_path: Path) -> None:
    assert Project(tmp_path / "2026 jobs!", Framework.fastapi).stack == "Jobs2026Jobs"
    assert Project(tmp_path / "My_Team", Framework.fastapi).stack == "MyTeam"


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli.app, ["init", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not empty (notes.txt)" in result.stderr and "empty folder" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "microprocess.toml").exists()


def test_init_takes_a_new_folder_and_the_service_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["init", "--service", "stdlib", str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    assert "ThreadingHTTPServer" in (tmp_path / "new" / "service.py").read_text()
    assert "standard library" in render(Project(tmp_path, Framework.stdlib))["README.md"]


# ----------------------------------------------------------------------------- one declaration file


def test_the_declarations_flag_pins_one_absolute_file_for_this_process_and_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path / "team", Framework.fastapi)
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}
    assert choose_declarations(Path("team/microprocess.toml"), environ) == tmp_path / "team" / "microprocess.toml"
    assert environ[DECLARATIONS_ENV] == str(tmp_path / "team" / "microprocess.toml")
    # a relative MICROPROCESS_DECLARATIONS is made absolute too (a child started elsewhere reads the same)
    environ = {DECLARATIONS_ENV: "team/microprocess.toml"}
    choose_declarations(None, environ)
    assert environ[DECLARATIONS_ENV] == str(tmp_path / "team" / "microprocess.toml")
    assert choose_declarations(None, {}) is None


def test_the_project_folder_is_the_declaration_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path / "team", Framework.fastapi)
    (tmp_path / "team" / "src").mkdir()
    # from a subfolder: found upward
    monkeypatch.chdir(tmp_path / "team" / "src")
    assert project_root() == tmp_path / "team"
    assert Workspace.discover().workdir == tmp_path / "team" / ".microprocess"
    # from elsewhere, named by the variable
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DECLARATIONS_ENV, str(tmp_path / "team" / "microprocess.toml"))
    assert project_root() == tmp_path / "team"


def test_the_cli_option_reaches_every_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path / "team", Framework.fastapi)
    monkeypatch.chdir(tmp_path)
    # the option pins the file in the environment (for what the CLI starts): restored after the test
    monkeypatch.setenv(DECLARATIONS_ENV, "")
    try:
        result = CliRunner().invoke(cli.app, ["--declarations", "team/microprocess.toml", "local", "status"])
    finally:
        get_declarations.cache_clear()
    # no stack runs there: the message names the team's own work folder, not this repository's
    assert result.exit_code == 3
    assert str(tmp_path / "team" / ".microprocess") in result.output


def test_local_up_deploys_the_declaration_file_the_cli_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local stage is synthesized from the file the CLI read (it once deployed the repository's
    own file whatever the CLI read, and failed: `service_urls names undeclared service(s)`)."""
    write_project(tmp_path / "team", Framework.fastapi)
    ws = Workspace(root=tmp_path / "team", workdir=tmp_path / "team" / ".microprocess")
    ws.create()
    calls: list[tuple[list[str], Path]] = []

    def fake_run(step: str, argv: list[str], *, env: Any, cwd: Path, log: Path, timeout_s: float) -> float:
        calls.append((argv, cwd))
        if step == "cdk deploy":
            ws.cdk_outputs_file.write_text(json.dumps({deploy.LOCAL_STACK: {k: "x" for k in deploy.REQUIRED_OUTPUTS}}))
        return 0.0

    monkeypatch.setattr(deploy, "_run", fake_run)
    tls = type("Tls", (), {"ca_cert": tmp_path / "ca.pem"})()
    deploy.deploy_local_stage(
        ws,
        "https://127.0.0.1:1",
        tls,  # type: ignore[arg-type]
        declarations_file=ws.root / "microprocess.toml",
        service_urls={"counter": "http://127.0.0.1:2"},
    )
    argv, cwd = calls[-1]
    context = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-c")
    assert context["declarations"] == str(tmp_path / "team" / "microprocess.toml")
    assert cwd == ws.root
    app = argv[argv.index("--app") + 1]
    assert app.endswith("-m microprocess.cdk.app")  # the installed package's app, not a checkout's app.py


def test_the_packaged_app_reads_the_declarations_it_is_given(tmp_path: Path) -> None:
    pytest.importorskip("aws_cdk")
    from infra.app import create_app

    write_project(tmp_path / "team", Framework.fastapi)
    _, stacks = create_app(
        outdir=str(tmp_path / "out"),
        context={"stage": "local", "declarations": "microprocess.toml", "service_urls": '{"counter": "http://x:1"}'},
        root=tmp_path / "team",
    )
    (stack,) = stacks.values()
    assert stack.platform.declarations.path == tmp_path / "team" / "microprocess.toml"


# ----------------------------------------------------------------------------- local_command


def test_local_command_is_validated() -> None:
    from microprocess.declarations.services import ServiceDeclaration

    with pytest.raises(ValueError, match=r"either local_app .* or local_command"):
        ServiceDeclaration(name="svc", local_app="a:b", local_command="python s.py")
    with pytest.raises(ValueError, match="bundled service runs its local_app"):
        ServiceDeclaration(name="svc", bundled="microservice", local_command="python s.py")
    with pytest.raises(ValueError, match="must be a command line"):
        ServiceDeclaration(name="svc", local_command="   ")
    with pytest.raises(ValueError, match="cannot be split"):
        ServiceDeclaration(name="svc", local_command="python 'unclosed")
    assert ServiceDeclaration(name="svc", local_command="./bin/svc --fast").runs_locally


def test_a_local_command_service_is_planned_and_started_with_its_port(tmp_path: Path) -> None:
    toml = tmp_path / "microprocess.toml"
    toml.write_text(
        '[services.go-svc]\nlocal_command = "python record_env.py"\n\n'
        '[jobs.go-job]\nservice = "go-svc"\nschedule = "rate(1 day)"\ntask_path = "/t"\n'
        'source = { kind = "s3", uri = "s3://b/k.jsonl", format = "jsonl" }\n'
    )
    declared = load_declarations(toml)
    (proc,) = plan_processes(declared, {})
    assert proc == processes_of(declared.services.get("go-svc"))[0]
    assert proc.command == "python record_env.py" and proc.pushes
    (tmp_path / "record_env.py").write_text(
        "import json, os, sys\n"
        "json.dump({'env': dict(os.environ), 'cwd': os.getcwd(), 'python': sys.executable}, open('seen.json', 'w'))\n"
    )
    ws = Workspace(root=tmp_path, workdir=tmp_path / ".microprocess")
    ws.create()
    elsewhere = Workspace(root=tmp_path / "elsewhere", workdir=tmp_path / ".microprocess")
    env = {"PATH": os.defpath, "SIGNING_SECRET_ARN": "arn:secret"}
    handle = spawn_service(elsewhere, proc, 4567, env, folder=declared.path.parent)
    seen_file = tmp_path / "seen.json"
    deadline = time.monotonic() + 30
    while not seen_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    seen = json.loads(seen_file.read_text())
    assert seen["env"][PORT_ENV] == "4567" and seen["env"]["SIGNING_SECRET_ARN"] == "arn:secret"
    assert Path(seen["cwd"]) == tmp_path  # run in the declaration file's folder
    # `python` is the interpreter microprocess runs in (its folder first on PATH)
    assert Path(seen["python"]).parent == Path(sys.executable).parent
    assert handle.pid > 0


def test_a_service_with_no_local_process_names_both_ways(tmp_path: Path) -> None:
    from microprocess.declarations.services import ServiceDeclaration

    proc = ServiceProcess("s", "s", "s", "", None, pushes=True)
    assert proc.command is None
    assert processes_of(ServiceDeclaration(name="svc", url="https://x.example.com")) == []


# ----------------------------------------------------------------------------- the package


def test_the_shipped_folders_import_each_other_relatively() -> None:
    """`infra/` ships as `microprocess.cdk` and `functions/` as `microprocess.functions`: an
    absolute `infra`/`functions` import would break the installed package."""
    offenders = []
    for folder in ("infra", "functions"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("infra", "functions")
                ]
    assert not offenders, f"import these relatively (from .x import y): {offenders}"


def test_the_code_asset_comes_from_the_package_not_a_checkout(tmp_path: Path) -> None:
    pytest.importorskip("aws_cdk")
    from infra.lambda_function import code_sources, stage_code

    write_project(tmp_path / "team", Framework.fastapi)
    staged = stage_code(tmp_path / "team" / "microprocess.toml", tmp_path / "asset")
    assert (staged / "functions" / "forwarder" / "handler.py").is_file()
    assert (staged / "microprocess" / "pipeline").is_dir() and not (staged / "microprocess" / "local").exists()
    assert (staged / "microprocess.toml").read_text() == (tmp_path / "team" / "microprocess.toml").read_text()
    assert set(code_sources()) == {"functions", "microprocess"}
