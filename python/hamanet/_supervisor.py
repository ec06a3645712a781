"""The supervisor of ``hamanet serve`` (see ``_serve``): the single-threaded loop that
starts, reloads, restarts and stops its children (``_processes``: each child, its slot).

Signals arrive as bytes on a pipe (``signal.set_wakeup_fd``), readiness on each child's
pipe, and every pass reaps every child that has exited, so a SIGCHLD can never be missed
or raced."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

from ._processes import READY, _Child, _describe_status, _signal, _Slot
from ._serve import ServeError
from ._serve_sockets import _Listeners

_logger = logging.getLogger("hamanet.serve")

#: A child restarts after BACKOFF_FIRST seconds, doubling to BACKOFF_MAX while its slot
#: keeps dying; a child that has been ready for HEALTHY_AFTER seconds resets the backoff.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
HEALTHY_AFTER = 10.0
#: A crash loop, after which the supervisor stops everything and fails: CRASH_LIMIT deaths
#: of one slot in a row without becoming ready, or CRASH_BURST deaths within CRASH_WINDOW
#: seconds (ready or not).
CRASH_LIMIT = 5
CRASH_BURST = 10
CRASH_WINDOW = 60.0
#: How long past graceful_timeout a child told to stop may take before it is killed.
KILL_GRACE = 5.0
#: The longest the loop sleeps: a bound, not a poll; every event wakes it.
_TICK = 1.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


class _Supervisor:
    def __init__(
        self,
        spec: dict[str, Any],
        listeners: _Listeners,
        processes: int,
        graceful_timeout: float,
        ready_timeout: float,
    ) -> None:
        self._spec = spec
        self._listeners = listeners
        self._graceful_timeout = graceful_timeout
        self._ready_timeout = ready_timeout
        self._slots = [_Slot(i) for i in range(processes)]
        self._children: dict[int, _Child] = {}
        self._generation = 1
        self._reloading: int | None = None  # the generation a reload is starting
        self._reload_again = False
        self._ever_ready = False
        self._all_ready_logged = False
        self._stopping = False
        self._failure: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- the loop --------------------------------------------------------------------

    def run(self) -> None:
        old_handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for signum in _SIGNALS:
                # The handler does nothing: the signal's number arrives on the pipe.
                signal.signal(signum, _ignore_in_python)
            for slot in self._slots:
                self._spawn_current(slot)
            while not (self._stopping and not self._children):
                self._wait()
                self._handle_signals()
                for child in list(self._children.values()):
                    self._read_pipe(child)
                self._reap()
                self._handle_deadlines()
        finally:
            self._kill_leftovers()
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._failure is not None:
            raise ServeError(self._failure)
        _logger.info("stopped")

    def _wait(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for child in self._children.values():
            if child.ready_fd is not None:
                poller.register(child.ready_fd, select.POLLIN)
        timeout = _TICK
        now = time.monotonic()
        for deadline in self._deadlines():
            timeout = min(timeout, max(0.0, deadline - now))
        poller.poll(timeout * 1000)

    def _deadlines(self) -> list[float]:
        deadlines = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        for child in self._children.values():
            if child.kill_at is not None and not child.killed:
                deadlines.append(child.kill_at)
            elif not child.ready and not child.retiring:
                deadlines.append(child.started + self._ready_timeout)
        return deadlines

    def _handle_signals(self) -> None:
        try:
            received = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in received:
            if signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                if self._stopping:
                    self._kill_all(f"a second {name}")
                else:
                    self._begin_stop(f"{name} received")
            elif signum == signal.SIGHUP:
                self._begin_reload()

    def _read_pipe(self, child: _Child) -> None:
        while child.ready_fd is not None:
            try:
                data = os.read(child.ready_fd, 4096)
            except BlockingIOError:
                return
            if not data:
                os.close(child.ready_fd)
                child.ready_fd = None
                return
            child.message += data
            if child.message.startswith(READY) and not child.ready:
                self._on_ready(child)

    def _reap(self) -> None:
        for child in list(self._children.values()):
            status = child.proc.poll()
            if status is not None:
                self._read_pipe(child)  # an app error it wrote just before exiting
                if child.ready_fd is not None:
                    os.close(child.ready_fd)
                    child.ready_fd = None
                del self._children[child.pid]
                self._on_exit(child, status)

    def _handle_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.restart_at = None
                if not self._stopping and slot.current is None:
                    self._spawn_current(slot)
        for child in list(self._children.values()):
            if child.kill_at is not None:
                if child.kill_at <= now and not child.killed:
                    _logger.warning(
                        "%s did not stop within %g s; killing it",
                        child,
                        self._graceful_timeout + KILL_GRACE,
                    )
                    self._kill(child)
            elif not child.ready and now - child.started >= self._ready_timeout:
                why = f"{child} was not ready after {self._ready_timeout:g} s"
                if child is self._slots[child.slot].successor:
                    self._fail_reload(why)
                else:
                    # Its death then counts as a failure and restarts it, with backoff.
                    _logger.error("%s; stopping it", why)
                    self._terminate(child)

    # -- children --------------------------------------------------------------------

    def _spawn(self, slot: _Slot, generation: int) -> _Child:
        ready_r, ready_w = os.pipe()
        fds = self._listeners.fds_for(slot.index)
        spec = dict(
            self._spec,
            slot=slot.index,
            generation=generation,
            parent=os.getpid(),
            ready_fd=ready_w,
            listen_fds=fds,
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hamanet._child", json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                pass_fds=[ready_w, *fds],
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        os.set_blocking(ready_r, False)
        child = _Child(slot.index, generation, proc, ready_r)
        self._children[child.pid] = child
        _logger.info("%s started", child)
        return child

    def _spawn_current(self, slot: _Slot) -> None:
        slot.current = self._spawn(slot, self._generation)

    def _on_ready(self, child: _Child) -> None:
        child.ready_at = time.monotonic()
        slot = self._slots[child.slot]
        if child.retiring:
            return
        _logger.info("%s ready", child)
        self._ever_ready = True
        if child is slot.current:
            slot.failures = 0
        if child is slot.successor:
            self._finish_reload_if_ready()
        elif not self._all_ready_logged and all(
            s.current is not None and s.current.ready for s in self._slots
        ):
            self._all_ready_logged = True
            _logger.info(
                "serving: %d processes ready (pids %s)",
                len(self._slots),
                " ".join(str(s.current.pid) for s in self._slots if s.current),
            )

    def _on_exit(self, child: _Child, status: int) -> None:
        how = _describe_status(status)
        slot = self._slots[child.slot]
        if child.retiring or self._stopping:
            _logger.info("%s %s", child, how)
            if slot.current is child:
                slot.current = None
            if slot.successor is child:
                slot.successor = None
            return
        error = child.load_error
        if error is not None:
            _logger.error("%s could not load %s: %s", child, self._spec["app"], error)
        else:
            _logger.warning("%s %s%s", child, how, "" if child.ready else " before it was ready")
        if child is slot.successor:
            slot.successor = None
            if error is None:
                error = "during the reload" if child.ready else "before it was ready"
            self._fail_reload(f"{child} {how}: {error}")
            return
        slot.current = None
        if error is not None and not self._ever_ready:
            self._fail(f"cannot load the app {self._spec['app']}: {error}")
            return
        now = time.monotonic()
        slot.deaths.append(now)
        while slot.deaths and slot.deaths[0] < now - CRASH_WINDOW:
            slot.deaths.popleft()
        if not child.ready:
            slot.failures += 1
        last = f"the last {how}" + (f": {error}" if error else "")
        if slot.failures >= CRASH_LIMIT:
            self._fail(
                f"crash loop: slot {slot.index} died {slot.failures} times in a row without "
                f"becoming ready ({last})"
            )
            return
        if len(slot.deaths) >= CRASH_BURST:
            self._fail(
                f"crash loop: slot {slot.index} died {len(slot.deaths)} times within "
                f"{CRASH_WINDOW:g} s ({last})"
            )
            return
        if slot.successor is not None:
            return  # the reload under way fills the slot (or restarts it if it fails)
        healthy = child.ready_at is not None and now - child.ready_at >= HEALTHY_AFTER
        if healthy or slot.delay == 0:
            slot.delay = BACKOFF_FIRST
        else:
            slot.delay = min(slot.delay * 2, BACKOFF_MAX)
        slot.restart_at = now + slot.delay
        _logger.info("[slot %d] restarting in %.1f s", slot.index, slot.delay)

    def _terminate(self, child: _Child) -> None:
        """SIGTERM (a graceful stop), and SIGKILL if it has not ended in time."""
        if child.kill_at is None:
            child.kill_at = time.monotonic() + self._graceful_timeout + KILL_GRACE
            _signal(child, signal.SIGTERM)

    def _retire(self, child: _Child) -> None:
        """Tells ``child`` to stop for good: its exit restarts nothing."""
        child.retiring = True
        slot = self._slots[child.slot]
        if slot.current is child:
            slot.current = None
        if slot.successor is child:
            slot.successor = None
        self._terminate(child)

    def _kill(self, child: _Child) -> None:
        child.killed = True
        _signal(child, signal.SIGKILL)

    def _kill_all(self, why: str) -> None:
        self._reap()  # those that have exited meanwhile need no killing
        live = [child for child in self._children.values() if not child.killed]
        if live:
            _logger.warning("%s: killing %s", why, _processes(len(live)))
        for child in live:
            self._kill(child)

    def _kill_leftovers(self) -> None:
        """Only after an unexpected error in the loop: no child may outlive it."""
        for child in self._children.values():
            _signal(child, signal.SIGKILL)
            with contextlib.suppress(Exception):
                child.proc.wait(5.0)
            if child.ready_fd is not None:
                os.close(child.ready_fd)
        self._children.clear()

    # -- stop and reload -------------------------------------------------------------

    def _begin_stop(self, why: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._reloading = None
        self._reload_again = False
        for slot in self._slots:
            slot.restart_at = None
        if self._children:
            _logger.info(
                "stopping (%s): %s, up to %g s to finish their sessions",
                why,
                _processes(len(self._children)),
                self._graceful_timeout,
            )
        for child in list(self._children.values()):
            self._retire(child)

    def _fail(self, why: str) -> None:
        self._failure = why
        _logger.error("giving up: %s", why)
        self._begin_stop("giving up")

    def _begin_reload(self) -> None:
        if self._stopping:
            return
        if self._reloading is not None:
            self._reload_again = True
            _logger.info("SIGHUP during a reload: another reload follows this one")
            return
        generation = self._generation + 1
        self._reloading = generation
        _logger.info(
            "reload (SIGHUP): starting generation %d in %d processes",
            generation,
            len(self._slots),
        )
        for slot in self._slots:
            slot.successor = self._spawn(slot, generation)

    def _finish_reload_if_ready(self) -> None:
        if not all(slot.successor is not None and slot.successor.ready for slot in self._slots):
            return
        old = [slot.current for slot in self._slots if slot.current is not None]
        for slot in self._slots:
            slot.current, slot.successor = slot.successor, None
            slot.restart_at = None
            slot.failures = 0
            slot.delay = 0.0
        self._generation = self._reloading or self._generation + 1
        self._reloading = None
        _logger.info(
            "reload done: generation %d serves (pids %s); stopping the old processes%s",
            self._generation,
            " ".join(str(slot.current.pid) for slot in self._slots if slot.current),
            f" (pids {' '.join(str(child.pid) for child in old)})" if old else "",
        )
        for child in old:
            self._retire(child)
        self._reload_after()

    def _fail_reload(self, why: str) -> None:
        _logger.error(
            "reload to generation %s failed: %s; generation %d keeps serving",
            self._reloading,
            why,
            self._generation,
        )
        self._reloading = None
        now = time.monotonic()
        for slot in self._slots:
            if slot.successor is not None:
                self._retire(slot.successor)
            if slot.current is None and slot.restart_at is None:
                slot.restart_at = now  # its old child died during the reload
        self._reload_after()

    def _reload_after(self) -> None:
        if self._reload_again and not self._stopping:
            self._reload_again = False
            self._begin_reload()


def _ignore_in_python(signum: int, frame: object) -> None:
    """The wakeup pipe carries the signal; the loop handles it there."""


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"
