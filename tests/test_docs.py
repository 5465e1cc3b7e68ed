"""What the docs say runs, runs: the README's CLI table, make targets and links, and its runnable blocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from microprocess.cli.commands import app
from microprocess.cli.reference import END, START, reference_table, render
from tests.docs_check import ROOT, missing_tests, named_tests, run_steps, scratch_copy, steps

DOCS = [ROOT / "README.md", ROOT / "infra" / "README.md", ROOT / "microservice" / "README.md"]


def test_the_readme_cli_table_is_the_cli_itself() -> None:
    readme = (ROOT / "README.md").read_text()
    assert render(readme, reference_table(app)) == readme, "the README's CLI table is stale: run `make docs`"


def test_the_cli_table_lists_every_command_and_option() -> None:
    # A worked example: every option of `run` appears in its row.
    table = reference_table(app)
    row = next(line for line in table.splitlines() if line.startswith("| `microprocess run "))
    for option in ("--items FILE", "--source-uri S3_URI", "--param KEY=VALUE]...", "--wait", "--json", "--timeout"):
        assert option in row, row
    assert "| `microprocess local up " in table and "| `microprocess local status" in table


def test_render_replaces_only_between_the_markers() -> None:
    text = f"intro\n{START}\nold\n{END}\noutro\n"
    assert render(text, "NEW") == f"intro\n{START}\nNEW\n{END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        render("no markers", "NEW")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_and_relative_link_in_the_docs_exists(doc: Path) -> None:
    text = doc.read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for target in re.findall(r"`make ([a-z][a-z-]*)", text):
        assert target in targets, f"{doc.name} names `make {target}`, which the Makefile lacks"
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (doc.parent / link).exists(), f"{doc.name} links to {link}, which does not exist"


@pytest.mark.parametrize("doc", [ROOT / "tests" / "README.md", ROOT / "docs" / "ledger.md"], ids=lambda p: p.name)
def test_every_test_the_docs_name_exists(doc: Path) -> None:
    # GIVEN the map of promises to tests THEN every file and test it names is there (renames included)
    assert named_tests(doc.read_text()), f"{doc.name} names no test"
    assert missing_tests(doc.read_text()) == []


def test_a_renamed_or_moved_test_is_named_with_its_line(tmp_path: Path) -> None:
    # GIVEN a map naming a test that exists, one renamed since, one in a file that moved
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_kept():\n    pass\n\nTestMachine = object\n")
    md = (
        "| promise | `test_a.py::test_kept`, `::test_renamed`, `test_a.py::TestMachine` |\n"
        "| other | `tests/test_gone.py::test_x` (`invariant` words are not tests) |\n"
    )
    # WHEN it is checked THEN each missing name is reported with its line, the rest pass
    assert named_tests(md) == [
        (1, "tests/test_a.py", ("test_kept",)),
        (1, "tests/test_a.py", ("test_renamed",)),
        (1, "tests/test_a.py", ("TestMachine",)),
        (2, "tests/test_gone.py", ("test_x",)),
    ]
    assert missing_tests(md, tmp_path) == [
        "line 1: tests/test_a.py has no test test_renamed",
        "line 2: tests/test_gone.py does not exist",
    ]
    with pytest.raises(ValueError, match="follows no test file"):
        named_tests("`::test_orphan`")


def test_steps_reads_markers_and_their_blocks() -> None:
    md = "\n".join(
        [
            "<!-- docs-check: file app/x.py -->",
            "```python",
            "print(1)",
            "```",
            "prose",
            "```bash",
            "not run",
            "```",
            "<!-- docs-check: run -->",
            "",
            "```bash",
            "echo hi",
            "```",
        ]
    )
    found = steps(md)
    assert [(s.action, s.target, s.text) for s in found] == [
        ("file", "app/x.py", "print(1)\n"),
        ("run", "", "echo hi\n"),
    ]
    with pytest.raises(ValueError, match="followed by a fenced block"):
        steps("<!-- docs-check: run -->\nno block\n")


def test_a_failing_block_fails_the_check_naming_it(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to("/bin/true")
    with pytest.raises(AssertionError, match=r"block at line 6 failed \(exit 3\)"):
        run_steps(
            steps("<!-- docs-check: run -->\n```bash\nexit 3\n```\n".replace("```bash", "\n\n\n\n```bash")),
            tmp_path,
            echo=False,
        )


@pytest.mark.e2e
def test_the_readme_runs_as_written_your_own_job_included() -> None:
    # The README's runnable blocks ("Your own job" from nothing to a report, then the CLI examples),
    # in order, in a scratch copy of the project: as a newcomer would type them.
    readme = (ROOT / "README.md").read_text()
    found = steps(readme)
    assert any(s.action == "run" and "local up" in s.text for s in found), "the README has no runnable local up"
    assert any(s.action == "run" and "microprocess init" in s.text for s in found), "'Your own job' starts with init"
    copy = ROOT / ".microprocess" / "docs-check-test" / "project"
    import shutil

    shutil.rmtree(copy.parent, ignore_errors=True)
    try:
        run_steps(found, scratch_copy(copy))
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def test_the_declaration_reference_is_the_models_themselves() -> None:
    from microprocess.declarations import reference

    assert reference.main(["--check", str(ROOT / "docs" / "declarations.md")]) == 0, (
        "docs/declarations.md is stale: run `make docs`"
    )
    text = (ROOT / "docs" / "declarations.md").read_text()
    # A worked row: a field's type with its limits, its default and its meaning
    assert "| `max_attempts` | integer (>= 1, <= 100) | `5` | pushes per task before it is recorded FAILED." in text
    assert '| `kind` | "dynamodb" / "s3" / "inline" / "callable" | **required** |' in text


def test_a_field_without_a_docstring_line_is_refused() -> None:
    from pydantic import BaseModel

    from microprocess.declarations.reference import UndocumentedField, table

    class Half(BaseModel):
        """A model documenting one of its two fields.

        Attributes:
            kept: explained, over
                two lines.
        """

        kept: int = 1
        forgotten: str = ""

    with pytest.raises(UndocumentedField, match=r"\['forgotten'\].*make docs"):
        table(Half)

    class Whole(Half):
        """Both.

        Attributes:
            kept: explained, over
                two lines.
            forgotten: now too.
        """

    assert "| `kept` | integer | `1` | explained, over two lines. |" in table(Whole)
