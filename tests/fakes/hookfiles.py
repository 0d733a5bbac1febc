"""The hook file as `vfalloc install-hook` writes it with the default paths (the table's, the
runtime directory's), for the tests and the benchmarks: each run points it at its own scratch
host through the VFALLOC_* environment. No pytest here: bench/run.py imports it too."""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

from vfalloc.config import DEFAULTS
from vfalloc.rundir import DEFAULT_RUN_DIR
from vfalloc.templates import hook_script


def script(interpreter: str, config: str | None = None) -> str:
    """The text install-hook writes for `interpreter` and the default table and runtime directory."""
    return hook_script(interpreter, DEFAULTS["state"], DEFAULT_RUN_DIR, config)


def write(path: Path, interpreter: str, config: str | None = None) -> Path:
    path.write_text(script(interpreter, config))
    path.chmod(0o755)
    return path


@functools.cache
def hook_file() -> str:
    """The hook file for this interpreter, written once per process into a temp dir."""
    folder = tempfile.mkdtemp(prefix="vfalloc-hook-")
    atexit.register(shutil.rmtree, folder, True)
    return str(write(Path(folder) / "vfalloc", sys.executable))
