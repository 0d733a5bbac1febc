"""vfalloc.detach and vfalloc.locking, the one way to start a process that outlives its caller
and the one way to lock, checked on real processes, descriptors and files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO
from test_hook import _wait_for

from vfalloc import locking

RECORD_SPAWN = REPO / "tests" / "fakes" / "record_spawn.py"


@pytest.mark.parametrize("program", ["path", "name"], ids=["full-path", "name-in-the-given-PATH"])
def test_a_detached_process_keeps_nothing_of_its_caller(tmp_path, program):
    """From a caller with an inheritable descriptor open, in another working directory: the
    process gets its own session, /dev/null for 0, 1 and 2, no other descriptor, `/` as its
    working directory; a bare program name is looked up in the environment it is given."""
    out = tmp_path / "spawned"
    argv0 = sys.executable if program == "path" else os.path.basename(sys.executable)
    env = {"PATH": os.path.dirname(sys.executable)}
    code = ("import os, sys\nfrom vfalloc import detach\n"
            "r, w = os.pipe()\nos.set_inheritable(w, True)\n"
            "path = sys.argv.pop()\nprint(detach.spawn(sys.argv[1:], {'PATH': path}), os.getcwd())\n")
    done = subprocess.run([sys.executable, "-c", code, argv0, str(RECORD_SPAWN), str(out), "x", env["PATH"]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    record = _wait_for(out, 30.0)
    pid, cwd = done.stdout.split()
    assert cwd == str(tmp_path)  # the caller's working directory is given back
    assert record["pid"] == int(pid) and record["sid"] == record["pid"]
    assert record["fds"] == [0, 1, 2] and record["stdin_is_devnull"] and record["cwd"] == "/"
    assert record["argv"] == ["x"]


def test_a_missing_program_is_an_error_of_the_caller(tmp_path):
    from vfalloc import detach

    with pytest.raises(FileNotFoundError):
        detach.spawn(["no-such-program-here", "x"], {"PATH": str(tmp_path)})


def test_a_free_lock_is_one_flock_and_excludes_others(tmp_path):
    path = str(tmp_path / "x.lock")
    held = locking.take_now(path)
    assert held is not None and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert locking.take_now(path) is None  # flock(2) excludes another open file description
    held.release()
    again = locking.take_now(path)
    assert again is not None
    again.release()


def test_a_held_lock_times_out_and_says_so(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'w')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n",
                               str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(locking.LockTimeout) as caught:
            locking.take(str(path), 0.2)
        assert time.monotonic() - started >= 0.2
        assert isinstance(caught.value, TimeoutError) and caught.value.filename == str(path)
    finally:
        holder.kill()
        holder.wait()
    held = locking.take(str(path), 5)  # the holder died: its lock went with it
    held.release()


@pytest.mark.parametrize("kind, errno_", [("fifo", errno.EINVAL), ("symlink", errno.ELOOP),
                                           ("directory", errno.EISDIR)], ids=["fifo", "symlink", "directory"])
def test_a_lock_file_that_is_no_regular_file_is_refused_at_once(tmp_path, kind, errno_):
    """Refused, not waited on (a FIFO would hold open(2) without O_NONBLOCK), not followed."""
    path = tmp_path / "x.lock"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text("")
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir()
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        locking.take(str(path), 5)
    assert caught.value.errno == errno_ and time.monotonic() - started < 5
    assert isinstance(caught.value, locking.NotRegularFile) == (kind == "fifo")
