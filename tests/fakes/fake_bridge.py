#!/usr/bin/env python3
"""Stands in for iproute2's `bridge` (6.1) where the fake host has no real PF: appends its
arguments to $FAKE_BRIDGE_LOG and keeps the tables in $FAKE_BRIDGE_STATE, a JSON file
{"own": {DEV: [MAC, ...]}, "learned": {BRIDGE: [[PORT, MAC], ...]}}. It answers
`-j fdb show dev DEV | br BRIDGE` in the JSON iproute2 prints, and `fdb add|del MAC dev DEV self`
with the kernel's EEXIST / ENOENT messages; $FAKE_BRIDGE_FAIL makes `fdb add` fail with that text."""

import json
import os
import sys

args = sys.argv[1:]
with open(os.environ["FAKE_BRIDGE_LOG"], "a") as fh:
    fh.write(" ".join(args) + "\n")
path = os.environ["FAKE_BRIDGE_STATE"]
state = json.load(open(path)) if os.path.exists(path) else {"own": {}, "learned": {}}
own, learned = state.setdefault("own", {}), state.setdefault("learned", {})


def fail(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.exit(2)


if args[:4] == ["-j", "fdb", "show", "dev"]:
    dev = args[4]
    out = [{"mac": m, "ifname": dev, "flags": ["self"], "state": "permanent"} for m in own.get(dev, [])]
    out += [{"mac": m, "ifname": p, "master": br, "state": ""} for br, pairs in learned.items()
            for p, m in pairs if p == dev]
    print(json.dumps(out))
elif args[:4] == ["-j", "fdb", "show", "br"]:
    br = args[4]
    out = [{"mac": m, "ifname": br, "flags": ["self"], "state": "permanent"} for m in own.get(br, [])]
    out += [{"mac": m, "ifname": p, "master": br, "state": ""} for p, m in learned.get(br, [])]
    out += [{"mac": "fe:00:00:00:00:01", "ifname": p, "master": br, "state": "permanent"}
            for p in {p for p, _ in learned.get(br, [])}]
    print(json.dumps(out))
elif args[:2] == ["fdb", "add"] and args[3] == "dev" and args[5:] == ["self"]:
    mac, dev = args[2], args[4]
    if os.environ.get("FAKE_BRIDGE_FAIL"):
        fail(os.environ["FAKE_BRIDGE_FAIL"])
    if mac in own.get(dev, []):
        fail("RTNETLINK answers: File exists")
    own.setdefault(dev, []).append(mac)
elif args[:2] == ["fdb", "del"] and args[5:] == ["self"]:
    mac, dev = args[2], args[4]
    if mac not in own.get(dev, []):
        fail("RTNETLINK answers: No such file or directory")
    own[dev].remove(mac)
else:
    fail(f"fake bridge: unexpected arguments {args}")
with open(path, "w") as fh:
    json.dump(state, fh)
