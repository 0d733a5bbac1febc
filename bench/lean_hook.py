"""The least a Python hook can do for one `prepare begin` or `release end` on the bench's hosts.

This is not vfalloc and shares none of its code: it is a yardstick. It does the I/O every
hook that hands out VFs must do, and nothing else: parse the TOML config, parse the domain XML
with lxml (safe parser), find the pool's PFs through /sys/class/net, read every VF link of
those PFs, take flock(2) on the lock file, read the JSON table, take the first free VF (or drop
the domain's leases), write the table to a temp file, fsync and rename it. It has no model, no
validation, no error messages, no NUMA or policy, no log line. `bench/run.py` times it next to
the floor and the real hook, so the figures say how much of the hook's time is the job itself
and how much is vfalloc's structure around it.
"""

import fcntl
import json
import os
import sys
import tomllib

from lxml import etree


def main() -> int:
    env = os.environ
    with open(env["VFALLOC_CONFIG"], "rb") as fh:
        config = tomllib.load(fh)
    root = etree.fromstring(sys.stdin.buffer.read(),
                            etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False))
    uuid = root.findtext("uuid")
    request = root.find(".//{urn:vfalloc:1}vf")
    sysfs = env["VFALLOC_SYSFS_ROOT"]
    vfs = []
    if sys.argv[2] == "prepare":
        for name in config["pools"][request.get("pool")]["pfs"]:
            pf = os.path.realpath(f"{sysfs}/class/net/{name}/device")
            for link in os.listdir(pf):
                if link.startswith("virtfn"):
                    vfs.append(os.path.basename(os.readlink(f"{pf}/{link}")))
    state = env["VFALLOC_STATE"]
    lock = os.open(state + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with open(state, "rb") as fh:
            table = json.load(fh)
    except FileNotFoundError:
        table = {"leases": []}
    if sys.argv[2] == "prepare":
        held = {lease["vf"] for lease in table["leases"]}
        table["leases"].append({"vf": next(vf for vf in vfs if vf not in held), "uuid": uuid})
    else:
        table["leases"] = [lease for lease in table["leases"] if lease["uuid"] != uuid]
    tmp = f"{state}.lean-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps(table).encode())
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
