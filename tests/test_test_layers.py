"""tools/test-layers (`make test`, CI) puts what a run writes outside the checkout under a root of
its own that does not exist before the run, and refuses one that does. Run here with a stand-in
for the project's Python that records how each pytest layer was started, so no layer runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = REPO / "tools" / "test-layers"

# Stands in for PYTHON: notes its arguments and TMPDIR, and whether TMPDIR exists; its exit
# status is $STAND_IN_EXIT.
STAND_IN = """#!/bin/sh
echo "$* TMPDIR=$TMPDIR $( [ -d "$TMPDIR" ] && echo made )" >> "$NOTES"
exit "$STAND_IN_EXIT"
"""


def run_layers(tmp_path: Path, root: str, exit_status: int = 1) -> subprocess.CompletedProcess[str]:
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    env = {**os.environ, "VFALLOC_TEST_ROOT": root, "NOTES": str(tmp_path / "notes"),
           "STAND_IN_EXIT": str(exit_status)}
    return subprocess.run([str(LAYERS), str(python)], env=env, capture_output=True, text=True, timeout=60)


def test_a_layer_runs_with_its_temp_roots_under_the_runs_new_root_and_a_failed_run_keeps_it(tmp_path):
    root = tmp_path / "run" / "root"  # neither it nor its parent exists
    done = run_layers(tmp_path, str(root))
    assert done.returncode == 1, done.stderr
    notes = (tmp_path / "notes").read_text()
    # the unit layer ran (and failed): pytest makes its own root, only TMPDIR was made for it
    assert notes == (f"-m pytest tests --ignore=tests/e2e --basetemp={root}/unit/pytest -m not libvirt "
                     f"TMPDIR={root}/unit/tmp made\n")
    assert not (root / "unit" / "pytest").exists()
    assert f"under {root} (new; removed if the run passes)" in done.stdout
    assert f"kept {root} (a layer failed" in done.stdout


@pytest.mark.parametrize("root, says", [
    ("{tmp}", "exists; a run needs a root of its own"),
    ("relative/root", "is not absolute"),
], ids=["exists", "relative"])
def test_a_root_that_is_not_new_is_refused_before_any_layer_runs(tmp_path, root, says):
    done = run_layers(tmp_path, root.format(tmp=tmp_path))
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "notes").exists()
