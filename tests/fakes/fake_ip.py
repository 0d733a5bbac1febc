#!/usr/bin/env python3
"""Stands in for iproute2's `ip` where the fake host has no real PF: appends its arguments to
$FAKE_IP_LOG, or fails like the kernel would with $FAKE_IP_FAIL on stderr."""

import os
import sys

if os.environ.get("FAKE_IP_FAIL"):
    sys.stderr.write(os.environ["FAKE_IP_FAIL"] + "\n")
    sys.exit(2)
with open(os.environ["FAKE_IP_LOG"], "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
