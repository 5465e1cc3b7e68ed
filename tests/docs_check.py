"""Run the README's runnable blocks, in order, in a scratch copy of the project (`make docs-check`).

A fenced block directly after one of these comments is acted on; every other block is prose:

* `<!-- docs-check: file PATH -->`: the block's text becomes the file PATH (relative to the copy);
* `<!-- docs-check: append PATH -->`: the block's text is appended to PATH;
* `<!-- docs-check: run -->`: the block runs with bash (`set -euo pipefail`) in the copy; a non-zero
  exit fails the check, with the block and the end of its output.

The copy holds the tracked files of the project (as a fresh clone would) plus links to the
project's `.venv` and `node_modules`, so that the README's commands run exactly as written
without touching the project itself; the blocks run with that `.venv` active (first on PATH).
Whatever the blocks start, `local down` is run at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MARK = re.compile(r"^<!--\s*docs-check:\s*(file|append|run)\s*([^\s>]*)\s*-->\s*$")
_FENCE = re.compile(r"^(```+|~~~+)")


@dataclass(frozen=True)
class Step:
    """One runnable block of a markdown file."""

    action: str  # file | append | run
    target: str  # the path for file/append; "" for run
    text: str
    line: int  # where the block starts in the markdown file


def steps(markdown: str) -> list[Step]:
    """The runnable blocks of `markdown`, in order. A marker not followed by a fenced block is an error."""
    lines = markdown.splitlines()
    found: list[Step] = []
    i = 0
    while i < len(lines):
        mark = _MARK.match(lines[i].strip())
        if not mark:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = _FENCE.match(lines[j].strip()) if j < len(lines) else None
        if fence is None:
            raise ValueError(f"line {i + 1}: a docs-check marker must be followed by a fenced block")
        end = j + 1
        while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
            end += 1
        action, target = mark.group(1), mark.group(2)
        if action in ("file", "append") and not target:
            raise ValueError(f"line {i + 1}: docs-check {action} needs a path")
        found.append(Step(action, target, "\n".join(lines[j + 1 : end]) + "\n", j + 1))
        i = end + 1
    return found


#: A test named in backticks: `test_x.py`, `test_x.py::name`, `tests/test_x.py::Class::name[id]`, or
#: `::name` (another test of the file named last on the same line).
_TEST_REF = re.compile(r"`((?:[\w.-]+/)*test_\w+\.py)?((?:::\w+)*)(?:\[[^`]*\])?`")


def named_tests(markdown: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """The tests `markdown` names: (line, file relative to the project, names in it). A bare file
    names no test in it; `::name` continues the file named last on its line. A file without a
    folder is under `tests/`."""
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for number, line in enumerate(markdown.splitlines(), 1):
        file = None
        for ref in _TEST_REF.finditer(line):
            named_file, names = ref.group(1), tuple(n for n in ref.group(2).split("::") if n)
            if named_file:
                file = named_file if "/" in named_file else f"tests/{named_file}"
            elif not names:
                continue
            if file is None:
                raise ValueError(f"line {number}: `::{'::'.join(names)}` follows no test file on its line")
            found.append((number, file, names))
    return found


def missing_tests(markdown: str, root: Path = ROOT) -> list[str]:
    """What `markdown` names that does not exist: test files, and test functions, classes or
    module-level names (`TestX = Machine.TestCase`) in them; one line each, naming where."""
    missing = []
    for number, file, names in named_tests(markdown):
        path = root / file
        if not path.is_file():
            missing.append(f"line {number}: {file} does not exist")
            continue
        text = path.read_text()
        for name in names:
            defined = rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]"
            if not re.search(defined, text, re.M):
                missing.append(f"line {number}: {file} has no test {name}")
    return missing


def scratch_copy(dest: Path) -> Path:
    """The project's tracked files (as a fresh clone holds them) in `dest`, with links to its .venv
    and node_modules."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    for link in (".venv", "node_modules"):
        if (ROOT / link).exists():
            (dest / link).symlink_to(ROOT / link)
    return dest


def run_steps(found: list[Step], copy: Path, *, timeout_s: float = 900.0, echo: bool = True) -> None:
    """Act on every step in `copy`; raise `AssertionError` naming the first block that failed."""
    env = {
        **os.environ,
        "MICROPROCESS_PROJECT_DIR": str(copy),
        "MICROPROCESS_WORKDIR": str(copy / ".microprocess"),
        "PYTHONDONTWRITEBYTECODE": "1",
        # as a user whose virtualenv is active: `microprocess` and `python` are the project's
        "PATH": os.pathsep.join([str(copy / ".venv" / "bin"), os.environ.get("PATH", os.defpath)]),
        "VIRTUAL_ENV": str(copy / ".venv"),
    }
    env.pop("MICROPROCESS_DECLARATIONS", None)
    # its stack runs another project's declarations: its calls are not this template's to check
    env.pop("MICROPROCESS_AWS_CALL_LOG", None)
    try:
        for step in found:
            path = copy / step.target
            if step.action == "file":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(step.text)
                continue
            if step.action == "append":
                with path.open("a") as f:
                    f.write("\n" + step.text)
                continue
            started = time.monotonic()
            proc = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + step.text],
                cwd=copy,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if echo:
                print(f"README line {step.line}: exit {proc.returncode} in {time.monotonic() - started:.1f} s")
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr)[-4000:]
                raise AssertionError(
                    f"the README block at line {step.line} failed (exit {proc.returncode}):\n"
                    f"{step.text}\n--- output:\n{tail}"
                )
    finally:
        subprocess.run(
            [str(copy / ".venv" / "bin" / "python"), "-m", "microprocess.cli.commands", "local", "down"],
            cwd=copy,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    readme = Path(args[0]) if args else ROOT / "README.md"
    found = steps(readme.read_text())
    # Under the project's own (ignored) work folder: nothing lands in the system /tmp.
    copy = ROOT / ".microprocess" / "docs-check" / "project"
    shutil.rmtree(copy.parent, ignore_errors=True)
    scratch_copy(copy)
    try:
        run_steps(found, copy)
    except AssertionError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    print(f"{readme}: {len(found)} runnable blocks ran as written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
