"""The child processes of ``hamanet serve`` as its supervisor sees them: each child, the
slot it serves, and what a child says on its ready pipe (``_child`` is the other end)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque

#: The exit status of a child (``_child``) that could not load the app (import, attribute,
#: factory, options, sockets); it also says why on its ready pipe, and the supervisor
#: gives up at once if no child has ever been ready.
EXIT_APP_ERROR = 3
#: Written on the ready pipe: ``READY`` once serving, or ``APP_ERROR`` and the error text.
READY = b"R"
APP_ERROR = b"E"


class _Child:
    """One child process and what the supervisor knows of it."""

    def __init__(self, slot: int, generation: int, proc: subprocess.Popen, ready_fd: int):
        self.slot = slot
        self.generation = generation
        self.proc = proc
        self.pid = proc.pid
        self.ready_fd: int | None = ready_fd
        self.message = b""
        self.started = time.monotonic()
        self.ready_at: float | None = None
        #: Exit expected (told to stop for good): its death restarts nothing.
        self.retiring = False
        #: SIGTERM sent; SIGKILL due at this time.
        self.kill_at: float | None = None
        self.killed = False

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def load_error(self) -> str | None:
        if self.message.startswith(APP_ERROR):
            return self.message[len(APP_ERROR) :].decode(errors="replace")
        return None

    def __str__(self) -> str:
        return f"[slot {self.slot} pid {self.pid} gen {self.generation}]"


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.current: _Child | None = None
        #: The next generation's child during a reload, until every slot's is ready.
        self.successor: _Child | None = None
        self.restart_at: float | None = None
        self.delay = 0.0  # the last restart delay (0: none yet, or reset)
        self.failures = 0  # deaths in a row without becoming ready
        self.deaths: deque[float] = deque()


def _signal(child: _Child, signum: int) -> None:
    # A child that has exited but is not yet reaped still has its pid: no other process
    # can have it, so the signal cannot go astray.
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signum)


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with code {status}"
