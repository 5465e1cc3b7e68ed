"""Where the embedded local stack keeps its files: `.microprocess/` in the project.

Everything the stack writes (the emulator's state, temp and S3 folders, Lambda code
folders, the CDK output, logs, `local.json`) lives under one work folder, so that
`make clean` removes it all and nothing lands in the system `/tmp`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import microprocess

#: Environment variable that moves the work folder (tests use their own).
WORKDIR_ENV = "MICROPROCESS_WORKDIR"
#: Environment variable that names the project folder (the one with `app.py`).
PROJECT_ENV = "MICROPROCESS_PROJECT_DIR"


def project_root() -> Path:
    """The project folder: `$MICROPROCESS_PROJECT_DIR`, else the nearest folder at or above the
    working directory that holds the CDK app (`app.py` and `cdk.json`), else the folder the
    package is installed from (an editable install), else the current folder."""
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "app.py").is_file() and (folder / "cdk.json").is_file():
            return folder
    here = Path(microprocess.__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd().resolve()


@dataclass(frozen=True)
class Workspace:
    """The folders of one local stack.

    Attributes:
        root: the project folder (holds `app.py`, `node_modules/.bin/cdk`, `microservice/`).
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
        return self.root / "node_modules" / ".bin" / "cdk"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        """Create the folders, the work folder 0700 (an existing one is made so too): stack
        outputs, logs, the emulator's data and cdk.out are for this user alone."""
        for folder in (self.workdir, self.logs, self.tmp, self.emulator_state, self.s3_data):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.workdir.chmod(0o700)
