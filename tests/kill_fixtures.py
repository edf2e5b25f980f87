"""A `ck` process that SIGKILLs itself at a chosen point, for tests of what a killed runner leaves."""

from __future__ import annotations

#: `ck ...`, made to SIGKILL itself right after the N-th call of a function: run it as
#: ``python -c KILL_AFTER MODULE ATTR N ck-args...``.
KILL_AFTER = """
import importlib, os, signal, sys
module, attr, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
owner = importlib.import_module(module)
*parents, name = attr.split(".")
for p in parents:
    owner = getattr(owner, p)
original = getattr(owner, name)
calls = [0]
def wrapped(*args, **kwargs):
    out = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] >= after:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, name, wrapped)
from cruijff_kit._cli import main
main(sys.argv[4:])
"""
