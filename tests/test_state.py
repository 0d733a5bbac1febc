"""The lease table file: versioned, locked, atomic, refused when broken, never overwritten."""

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vfalloc.errors import StateError
from vfalloc.model import Lease, LeaseTable
from vfalloc.state import VERSION, StateStore


def lease(vf="0000:01:10.0", uuid="aaaaaaaa-0000-0000-0000-000000000001", domain="vm1"):
    return Lease(vf=vf, pf="0000:01:00.0", pool="lan0", domain=domain, uuid=uuid, index=0,
                 mac="52:54:00:00:00:01", vlan=None, since="2026-01-01T00:00:00+00:00",
                 boot_id="b1", phase="attached")


def test_missing_file_is_empty_table(tmp_path):
    assert StateStore(tmp_path / "state.json").read() == LeaseTable()


def test_round_trip_creates_private_dir_and_file(tmp_path):
    path = tmp_path / "var" / "lib" / "vfalloc" / "state.json"
    store = StateStore(path)
    with store.transaction() as txn:
        txn.table = txn.table.with_leases([lease()])
    assert store.read().leases == (lease(),)
    assert store.read().last == {lease().uuid: {"0": lease().vf}}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(store.lock_path).stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["version"] == VERSION and data["leases"][0]["domain"] == "vm1"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_unchanged_table_is_not_rewritten(tmp_path):
    store = StateStore(tmp_path / "state.json")
    with store.transaction() as txn:
        txn.table = txn.table.with_leases([lease()])
    before = Path(store.path).stat().st_mtime_ns
    time.sleep(0.01)
    with store.transaction():
        pass
    assert Path(store.path).stat().st_mtime_ns == before


def test_exception_inside_transaction_writes_nothing(tmp_path):
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(RuntimeError):
        with store.transaction() as txn:
            txn.table = txn.table.with_leases([lease()])
            raise RuntimeError("boom")
    assert not Path(store.path).exists()


BROKEN = [
    (b"", "is empty"),
    (b'{"version": 1, "leases": [', "is not valid JSON"),
    (b"not json at all", "is not valid JSON"),
    (b'{"version": 99, "leases": []}', "has version 99, newer than this vfalloc knows"),
    (b'{"version": "x"}', "has unknown version 'x'"),
    (b'[1, 2]', "is not a vfalloc lease table"),
    (b'{"version": 1, "leases": [{"vf": "x"}]}', "holds a broken lease table: lease 0 has no 'pf'"),
    (b'{"version": 1, "leases": [], "last": 5}', "holds a broken lease table: `last` is not an object"),
    (b"\xff\xfe", "is not valid JSON"),
]


@pytest.mark.parametrize("raw,message", BROKEN,
                         ids=["empty", "truncated", "not-json", "newer", "bad-version", "list", "bad-lease",
                              "bad-last", "binary"])
def test_broken_file_is_refused_and_kept(tmp_path, raw, message):
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    os.chmod(path, 0o600)
    store = StateStore(path)
    with pytest.raises(StateError) as info:
        store.read()
    text = str(info.value)
    assert message in text and str(path) in text
    assert "upgrade vfalloc" in text or "mv " in text
    with pytest.raises(StateError):
        with store.transaction() as txn:
            txn.table = txn.table.with_leases([lease()])
    assert path.read_bytes() == raw


def test_symlink_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"version": 1, "leases": []}')
    (tmp_path / "state.json").symlink_to(target)
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(StateError, match="symbolic link"):
        store.read()
    with pytest.raises(StateError, match="symbolic link"):
        with store.transaction() as txn:
            txn.table = txn.table.with_leases([lease()])
    assert target.read_text() == '{"version": 1, "leases": []}'


def test_planted_lock_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "state.json.lock").symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"):
        with StateStore(tmp_path / "state.json").transaction():
            pass
    assert victim.read_text() == "keep me"


def test_world_writable_warns(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "leases": []}')
    os.chmod(path, 0o666)
    store = StateStore(path)
    store.read()
    assert any("writable by group/others" in w and "chmod 600" in w for w in store.warnings)


def test_other_owner_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the file to another user")
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "leases": []}')
    os.chown(path, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"):
        StateStore(path).read()


def test_stale_temp_file_is_cleaned(tmp_path):
    store = StateStore(tmp_path / "state.json")
    leftover = tmp_path / ".tmp-state.json.99999"
    leftover.write_text("half a tab")
    with store.transaction() as txn:
        txn.table = txn.table.with_leases([lease()])
    assert not leftover.exists()
    assert store.read().leases == (lease(),)


def test_lock_timeout_is_a_clear_error(tmp_path):
    store = StateStore(tmp_path / "state.json", lock_timeout=0.3)
    Path(store.path).parent.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, filelock; l = filelock.FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); time.sleep(30)", str(store.lock_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StateError) as info:
            with store.transaction():
                pass
        assert "locked by another vfalloc for more than 0.3 s" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with store.transaction() as txn:  # the dead holder's lock is gone with it
        txn.table = txn.table.with_leases([lease()])
    assert len(store.read().leases) == 1


def test_short_write_fails_and_keeps_the_old_table(tmp_path):
    """A write(2) that stops short (here a file size limit, as a full disk would) must not be
    renamed over the table as if it were whole."""
    store = StateStore(tmp_path / "state.json")
    with store.transaction() as txn:
        txn.table = txn.table.with_leases([lease()])
    before = Path(store.path).read_bytes()
    child = subprocess.run([sys.executable, "-c", """
import resource, signal, sys
from vfalloc.errors import StateError
from vfalloc.model import Lease
from vfalloc.state import StateStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
store = StateStore(sys.argv[1])
new = [Lease(vf=f"0000:02:{n:02x}.0", pf="0000:02:00.0", pool="p", domain=f"d{n}",
             uuid=f"00000000-0000-0000-0000-{n:012d}", index=0,
             mac=None, vlan=None, since="t", boot_id="b", phase="attached") for n in range(40)]
try:
    with store.transaction() as txn:
        txn.table = txn.table.with_leases(new)
except StateError as exc:
    print(exc)
    sys.exit(3)
""", str(store.path)], capture_output=True, text=True)
    assert child.returncode == 3, child.stderr
    assert "cannot be written" in child.stdout
    assert Path(store.path).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_directory_as_state_is_refused_with_the_setting_to_fix(tmp_path):
    with pytest.raises(StateError) as info:
        StateStore(tmp_path).read()
    assert "is not a regular file" in str(info.value) and "point --state" in str(info.value)
    assert tmp_path.is_dir()


def _holder(code: str, lock_path) -> subprocess.Popen:
    """A separate process that takes the lock its own way, says `held`, and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_transaction_excludes_a_filelock_holder(tmp_path):
    """The free-lock path takes flock(2) itself; filelock, used to wait, must see that lock."""
    store = StateStore(tmp_path / "state.json")
    with store.transaction():
        probe = subprocess.run(
            [sys.executable, "-c", "import sys, filelock\n"
             "try:\n    filelock.FileLock(sys.argv[1]).acquire(timeout=0.2)\nexcept filelock.Timeout:\n"
             "    print('busy')\nelse:\n    print('taken')", str(store.lock_path)],
            capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == "busy"
    free = subprocess.run([sys.executable, "-c", "import sys, filelock; filelock.FileLock(sys.argv[1]).acquire("
                           "timeout=0.2); print('taken')", str(store.lock_path)],
                          capture_output=True, text=True, check=True)
    assert free.stdout.strip() == "taken"


def test_a_transaction_waits_for_a_holder_that_lets_go(tmp_path):
    store = StateStore(tmp_path / "state.json", lock_timeout=10)
    holder = _holder("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
                     "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(0.3); "
                     "let_go = time.monotonic(); fcntl.flock(fd, fcntl.LOCK_UN); print(let_go, flush=True)",
                     store.lock_path)
    try:
        with store.transaction() as txn:
            got_it = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
            txn.table = txn.table.with_leases([lease()])
        let_go = float(holder.stdout.readline())
    finally:
        holder.kill()
        holder.wait()
    assert got_it >= let_go
    assert store.read().leases == (lease(),)


def test_a_lock_file_that_is_a_symlink_is_named_in_the_error(tmp_path):
    (tmp_path / "state.json.lock").symlink_to(tmp_path / "victim")
    with pytest.raises(StateError) as info:
        with StateStore(tmp_path / "state.json").transaction():
            pass
    assert str(tmp_path / "state.json.lock") in str(info.value)
    assert not (tmp_path / "victim").exists()


_CHANGING_HOLDER = """
import json, os, sys, filelock
state, lock = sys.argv[1], filelock.FileLock(sys.argv[1] + ".lock")
lock.acquire()
print("held", flush=True)
for n, line in enumerate(sys.stdin):
    if line.strip() == "q":
        break
    with open(state + ".new", "w") as fh:  # a transaction's write: a new file renamed over the table
        json.dump({"version": int(sys.argv[2]), "leases": [],
                   "last": {"00000000-0000-0000-0000-000000000001": {"0": f"0000:01:10.{n % 8}"}}}, fh)
    os.rename(state + ".new", state)
    print("wrote", flush=True)
lock.release()
"""


def test_a_waiter_queued_behind_holders_that_change_the_table_waits_past_the_timeout(tmp_path):
    """The timeout bounds a wait in which the table does not change: a holder that keeps
    changing it (as a queue of hooks ahead does) is waited for, however long it takes."""
    store = StateStore(tmp_path / "state.json", lock_timeout=1.0)
    Path(store.path).parent.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", _CHANGING_HOLDER, str(store.path), str(VERSION)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    outcome: list[object] = []

    def wait_for_the_lock() -> None:
        try:
            with store.transaction() as txn:
                txn.table = txn.table.with_leases([lease()])
            outcome.append("done")
        except StateError as exc:
            outcome.append(exc)

    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = threading.Thread(target=wait_for_the_lock)
        waiter.start()
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # three timeouts long, a change every 0.3 s
            holder.stdin.write("w\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "wrote"
            time.sleep(0.3)
        assert outcome == []  # still waiting, three timeouts later
        holder.stdin.write("q\n")
        holder.stdin.flush()
        waiter.join(timeout=60)
        assert outcome == ["done"]
        assert store.read().leases == (lease(),)
    finally:
        holder.kill()
        holder.wait()
