"""`.microprocess/local.json` is readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from microprocess.local.state import LocalState, read_state, write_state


def test_local_state_is_written_0600_even_over_a_looser_leftover(tmp_path: Path) -> None:
    # GIVEN a leftover temporary file that anyone could read
    path = tmp_path / ".microprocess" / "local.json"
    path.parent.mkdir()
    leftover = path.with_suffix(f".tmp{os.getpid()}")
    leftover.write_text("{}")
    leftover.chmod(0o644)
    # WHEN the state is written
    write_state(path, LocalState(endpoint_url="http://127.0.0.1:4566"))
    # THEN the file is the owner's alone, and reads back
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_state(path).endpoint_url == "http://127.0.0.1:4566"
