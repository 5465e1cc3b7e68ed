"""Where the embedded local stack keeps its files: `.microprocess/` in the project folder.

The project folder is the declaration file's (`find_declarations_file`: `--declarations`,
`MICROPROCESS_DECLARATIONS`, then the working directory upward), so that `local up`, `run`,
the CDK app and the services' `local_app`/`local_command` all resolve relative to it.

Everything the stack writes (the emulator's state, temp and S3 folders, Lambda code
folders, the CDK output, logs, `local.json`) lives under one work folder, so that
`make clean` removes it all and nothing lands in the system `/tmp`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from microprocess.declarations import find_declarations_file

#: Environment variable that moves the work folder (tests use their own).
WORKDIR_ENV = "MICROPROCESS_WORKDIR"
#: Environment variable that names the project folder (default: the declaration file's).
PROJECT_ENV = "MICROPROCESS_PROJECT_DIR"
#: Environment variable that names the CDK CLI (default: the project's `node_modules/.bin/cdk`,
#: else `cdk` on PATH).
CDK_CLI_ENV = "MICROPROCESS_CDK_CLI"


def project_root() -> Path:
    """The project folder: `$MICROPROCESS_PROJECT_DIR`, else the folder of the declaration file
    every command reads (`find_declarations_file`), else the current folder."""
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).resolve()
    declarations = find_declarations_file()
    if declarations.is_file():
        return declarations.resolve().parent
    return Path.cwd().resolve()


@dataclass(frozen=True)
class Workspace:
    """The folders of one local stack.

    Attributes:
        root: the project folder (holds the declaration file; in this repository also
            `node_modules/.bin/cdk` and `microservice/`).
        workdir: the work folder, `<root>/.microprocess` unless moved.
    """

    root: Path
    workdir: Path

    @classmethod
    def discover(cls, workdir: Path | str | None = None) -> Workspace:
        root = project_root()
        chosen = workdir or os.environ.get(WORKDIR_ENV) or root / ".microprocess"
        return cls(root=root, workdir=Path(chosen).resolve())

    @property
    def state_file(self) -> Path:
        return self.workdir / "local.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def tmp(self) -> Path:
        """TMPDIR of the emulator: its pid file and the extracted Lambda code folders."""
        return self.workdir / "tmp"

    @property
    def emulator_state(self) -> Path:
        return self.workdir / "state"

    @property
    def s3_data(self) -> Path:
        return self.workdir / "s3"

    @property
    def cdk_out(self) -> Path:
        """The CDK CLI's output folder (its own, so that it never clashes with `make synth`)."""
        return self.workdir / "cdk.out"

    @property
    def tls(self) -> Path:
        """The local CA and the emulator's certificate (kept across stacks: `microprocess.local.tls`)."""
        return self.workdir / "tls"

    @property
    def cdk_outputs_file(self) -> Path:
        return self.workdir / "stack-outputs.json"

    @property
    def cdk_cli(self) -> Path:
        """The CDK CLI: `$MICROPROCESS_CDK_CLI`, else the project's `node_modules/.bin/cdk` (this
        repository's: `npm ci`), else `cdk` on PATH (`npm install -g aws-cdk@2`)."""
        named = os.environ.get(CDK_CLI_ENV)
        if named:
            return Path(named)
        local = self.root / "node_modules" / ".bin" / "cdk"
        on_path = shutil.which("cdk")
        return Path(on_path) if on_path and not local.exists() else local

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        """Create the folders, the work folder 0700 (an existing one is made so too): stack
        outputs, logs, the emulator's data and cdk.out are for this user alone."""
        for folder in (self.workdir, self.logs, self.tmp, self.emulator_state, self.s3_data):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.workdir.chmod(0o700)
