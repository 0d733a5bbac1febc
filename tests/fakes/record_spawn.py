"""Stands in for the hot-plug worker in hook tests: records how it was started (argv, session,
open descriptors, working directory) as JSON into the file named by its first argument. With RECORD_SPAWN_GO set,
it first waits (up to a minute) until that file exists: a test can then see whether the hook
returned while its worker was still running."""

import json
import os
import sys
import time

out = sys.argv[1]
go = os.environ.get("RECORD_SPAWN_GO")
deadline = time.monotonic() + 60
while go and not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.05)
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) < 1024)
# listdir itself opens one descriptor; drop it (it is closed again by now)
fds = [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]
record = {
    "argv": sys.argv[2:],
    "pid": os.getpid(),
    "sid": os.getsid(0),
    "fds": fds,
    "stdin_is_devnull": os.path.realpath("/proc/self/fd/0") == "/dev/null",
    "cwd": os.getcwd(),
}
with open(out + ".tmp", "w") as fh:
    fh.write(json.dumps(record) + "\n")
os.rename(out + ".tmp", out)
