"""Signals while a cluster is starting or stopping: each one ends ``up`` the way Ctrl-C does.

A closed terminal (SIGHUP), ``kill`` or a CI timeout (SIGTERM) and Ctrl-C (SIGINT) all raise
:class:`Interrupted` while a :func:`signal_guard` is active, so ``up``'s cleanup runs for
each of them. Two kinds of stretch do not obey a signal half-way:

* a *critical* stretch (an AWS call that creates something, and noting its id): the signal
  is noted and raised when the stretch ends, so no id is lost between AWS's answer and
  the record;
* the *cleanup*: a signal is noted and the cleanup, which is bounded, runs to its end.

After the first signal has been raised, later ones are only noted: the cluster is on its
way down, and a second Ctrl-C must not cut that short. The handlers are installed in the
main thread only (Python delivers signals there), and the earlier ones are restored when
the outermost guard ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The signals that end ``up``: Ctrl-C, a closed terminal, ``kill``.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal ended the operation. A KeyboardInterrupt, so code that handles Ctrl-C
    handles SIGTERM and SIGHUP the same way; ``signum`` says which it was."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")

    @property
    def exit_status(self) -> int:
        """The conventional exit status: 128 + the signal number (130, 143, 129)."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(exc: BaseException) -> int:
    """The exit status for an interrupt: 128 + its signal, 130 for a plain Ctrl-C."""
    return exc.exit_status if isinstance(exc, Interrupted) else 128 + signal.SIGINT


class SignalGuard:
    """Turns SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` (see the module's text).

    ``on_note`` is called with a signal that was noted instead of raised, so that a
    program can say why it does not stop at once.
    """

    def __init__(self, on_note: Callable[[int], None] | None = None) -> None:
        self.on_note = on_note
        self.noted: list[int] = []
        self._holding = 0
        self._raised = False
        #: The signal this guard raised :class:`Interrupted` for, if any.
        self.raised_signal: int | None = None
        self._saved: dict[int, Any] = {}

    def install(self) -> bool:
        """Install the handlers; False (and nothing done) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in SIGNALS:
            # A signal this process was started ignoring stays ignored: under nohup
            # (SIGHUP ignored), logging out must not stop the work.
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            self._saved[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        """Put the handlers back as they were before :meth:`install`."""
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding or self._raised:
            self.noted.append(signum)
            if self.on_note is not None:
                # A note that cannot be shown (the terminal is gone) is still noted.
                with contextlib.suppress(Exception):
                    self.on_note(signum)
            return
        self._raised = True
        self.raised_signal = signum
        raise Interrupted(signum)

    def as_interrupt(self, exc: BaseException) -> BaseException:
        """``exc``, or the :class:`Interrupted` it stands for: an exception raised from a
        signal handler lands wherever the program was, and code it cuts short (a lock's
        release inside a wait, say) may turn it into an error of its own."""
        if self.raised_signal is not None and not isinstance(exc, KeyboardInterrupt):
            return Interrupted(self.raised_signal)
        return exc

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Signals during the block are noted; the first is raised when the block ends."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if not self._holding and self.noted and not self._raised:
            self._raised = True
            raise Interrupted(self.noted[0])

    @contextmanager
    def cleanup(self) -> Iterator[None]:
        """Signals during the block are noted, not raised: the block runs to its end."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def raise_noted(self) -> None:
        """Raise :class:`Interrupted` for a signal noted and not yet raised."""
        if self.noted and not self._raised:
            self._raised = True
            raise Interrupted(self.noted[0])


_active: list[SignalGuard] = []


@contextmanager
def signal_guard(on_note: Callable[[int], None] | None = None) -> Iterator[SignalGuard]:
    """A :class:`SignalGuard` for the block: the one already active (``cluster()`` around
    ``up``), or a new one whose handlers are removed when the block ends."""
    if _active:
        yield _active[-1]
        return
    guard = SignalGuard(on_note)
    installed = guard.install()
    _active.append(guard)
    try:
        yield guard
    finally:
        _active.remove(guard)
        if installed:
            guard.restore()


__all__ = ["SIGNALS", "Interrupted", "SignalGuard", "exit_status", "signal_guard",
           "signal_name"]
