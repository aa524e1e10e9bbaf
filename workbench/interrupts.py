"""Ctrl-C (SIGINT, Jupyter's stop button) held back while a unit of work must finish whole.

An interrupt that lands in the middle of an optimizer update, a checkpoint
save or an ``import`` leaves things half done: weights half updated, a
pointer to a folder that is not written yet, a library half imported (whose
next use then fails with a confusing error). Inside ``held_interrupts()`` a
Ctrl-C is only noted; when the block ends it is raised as the usual
``KeyboardInterrupt``, so the program stops right after the unit is complete.
"""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def held_interrupts():
    """Delay Ctrl-C until the block ends (only the main thread receives signals; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt
