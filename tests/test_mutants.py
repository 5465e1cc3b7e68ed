"""The mutation check's list (`tests/mutants.py`) still applies to the code: it cannot rot silently."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.docs_check import ROOT
from tests.mutants import MUTANTS, apply

#: The bugs issue 31 planted, which once passed the whole fast suite; they must stay on the list.
PLANTED = {"reduce-claim-without-status", "defer-grace-60s", "stop-early-all-failed"}


def test_the_list_names_each_mutant_once_and_keeps_the_planted_bugs() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
    assert set(names) >= PLANTED


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_applies_once_and_names_tests_that_exist(mutant, tmp_path: Path) -> None:
    # GIVEN a copy of the files the mutant edits
    for edit in mutant.edits:
        (tmp_path / edit.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / edit.path, tmp_path / edit.path)
    # WHEN it is planted THEN each search text was found exactly once and the file changed
    originals = apply(mutant, tmp_path)
    for path, text in originals.items():
        assert path.read_text() != text
    # AND its tests exist: files, and the named test functions in them
    for node in mutant.tests:
        file, _, name = node.partition("::")
        assert (ROOT / file).is_file(), f"{mutant.name}: no test file {file}"
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / file).read_text(), re.M), f"{mutant.name}: no {node}"


def test_a_search_text_not_found_once_is_refused(tmp_path: Path) -> None:
    from tests.mutants import Edit, Mutant

    (tmp_path / "f.py").write_text("x = 1\nx = 1\n")
    twice = Mutant("twice", "a search text found twice", (Edit("f.py", "x = 1", "x = 2"),), ())
    with pytest.raises(ValueError, match="found 2 times, not once"):
        apply(twice, tmp_path)
