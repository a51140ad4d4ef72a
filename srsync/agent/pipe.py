"""The helper as a child process of this one, talking over pipes: a local endpoint's writer.

A local endpoint applies a long batch of small steps (a first copy of a big
tree, say) through the same helper program a remote side runs, started here
with this process's interpreter.  The per-file system calls (create, write,
set mode and times, rename: ~22 us a file on tmpfs) then run in another
process, beside this one's decoding and reading, instead of under its GIL.

``LocalHelperHost`` stands where ``srsync.endpoints.agent.AgentEndpoint``
expects an SSH connection: a label, timeouts, and ``open_command``, which
here starts the command as a child with its stdin and stdout on pipes.

Invariants:

* The child is this user's, with this process's environment and umask; it
  writes only below the root it is given, as a remote helper does.
* Closing the channel closes the child's stdin (the helper then exits) and
  reaps it; one that does not exit within ``EXIT_WAIT`` seconds is killed.
  If srsync itself dies, the child reads the end of its input and exits.
  Nothing outlives the endpoint that started it.
* The child runs in its own session, so the terminal's Ctrl-C (sent to the
  whole foreground process group) stops srsync the usual way, between steps,
  instead of killing the helper in the middle of a batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
import tempfile
import threading

from srsync.errors import ConnectError

PIPE_SIZE = 1024 * 1024  # each pipe's buffer (Linux' default of 64 KiB is a few dozen small files)
EXIT_WAIT = 5.0  # seconds a closed helper has to exit before it is killed
IO_TIMEOUT = 600.0  # seconds a call may wait for the local helper (a slow disk, not a network)
LABEL = "this machine"


class PipeChannel:
    """The child ``command`` with stdin and stdout on pipes (``srsync.agent.client.Channel``).

    ``command`` is split as a POSIX shell would (``bootstrap_command`` writes one
    that every shell passes through unchanged) and run without a shell, so the
    child is the helper itself.  Its stderr goes to an unnamed temporary file,
    read only for error messages.
    """

    open_rtt = 0.0  # no link in between

    def __init__(self, command: str) -> None:
        self._err = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())
        try:
            self._proc = subprocess.Popen(
                shlex.split(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                close_fds=True,
                # its own session: a Ctrl-C at the terminal reaches srsync, which stops
                # between steps and then closes the helper, not the helper mid-batch
                start_new_session=True,
            )
        except OSError as exc:
            self._err.close()
            raise ConnectError(f"cannot start the helper on {LABEL} ({exc.strerror})") from exc
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        self._stdin, self._stdout = stdin, stdout
        self._in, self._out = stdin.fileno(), stdout.fileno()
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError, AttributeError):  # (a kernel or Python without it)
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        # stdout is closed only when no read is under way (a reader thread may still be
        # in one): a closed fd number is soon another file's
        self._reads = threading.Condition()
        self._reading = 0
        self._out_closed = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self._in, view) :]
        except OSError as exc:  # EPIPE: the helper is gone
            raise ConnectError(f"the helper on {LABEL} ended unexpectedly ({exc.strerror}); retry later") from exc

    def recv(self, size: int) -> bytes:
        with self._reads:
            if self._out_closed:
                return b""
            self._reading += 1
        try:
            return os.read(self._out, size)
        except OSError:
            return b""
        finally:
            with self._reads:
                self._reading -= 1
                self._reads.notify_all()

    def stderr_text(self, limit: int = 4096) -> str:
        try:
            return os.pread(self._err.fileno(), limit, 0).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def exit_status(self, timeout: float) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stdin.close()  # end of input: the helper finishes what it has and exits
        try:
            self._proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with self._reads:
            # the helper is gone, so a read under way ends at once (end of file)
            self._reads.wait_for(lambda: self._reading == 0, EXIT_WAIT)
            self._out_closed = True
            with contextlib.suppress(OSError):
                self._stdout.close()
        self._err.close()


class LocalHelperHost:
    """What ``AgentEndpoint`` needs of a connection, for a helper on this machine."""

    label = LABEL
    near = True  # the compiled helper goes too: it saves the child compiling it
    io_timeout = IO_TIMEOUT

    def open_command(self, command: str) -> PipeChannel:
        return PipeChannel(command)

    def close(self) -> None:
        """Nothing to close: each channel owns its child."""
