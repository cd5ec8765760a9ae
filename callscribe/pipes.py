"""Output to a pipe that may close: ``callscribe demo | head -3`` must end, not hang or trace.

:class:`PipeGuard` wraps a text stream: the first write or flush that meets a closed pipe
(``BrokenPipeError``) sets ``broken``, calls ``on_broken`` (the command's stop event) and turns
every later write into a no-op, so the command shuts its services down as on Ctrl-C.
:func:`silence_stdout` then points the stdout file descriptor at ``/dev/null`` so the
interpreter's final flush does not print "Exception ignored … BrokenPipeError"
(https://docs.python.org/3/library/signal.html#note-on-sigpipe).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

EXIT_BROKEN_PIPE = 141
"""Exit status after the reader closed our stdout: 128 + SIGPIPE, as ``yes | head`` gives."""


class PipeGuard:
    """A text stream that stops writing once its reader has gone (see module docstring)."""

    def __init__(self, stream: TextIO, on_broken: Callable[[], None]) -> None:
        self._stream = stream
        self._on_broken = on_broken
        self.broken = False

    def _closed(self) -> None:
        if not self.broken:
            self.broken = True
            self._on_broken()

    def write(self, text: str) -> int:
        """Write ``text`` unless the pipe has closed; returns ``len(text)`` either way."""
        if not self.broken:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._closed()
        return len(text)

    def flush(self) -> None:
        """Flush unless the pipe has closed."""
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def silence_stdout() -> None:
    """Point fd 1 at /dev/null (after a broken pipe), so nothing more fails at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
