"""Keep paramiko's transport thread from waiting on its own key exchange.

While a key exchange runs, paramiko holds back channel messages
(``Transport._send_user_message`` waits for the exchange to finish, as RFC
4253 section 7.1 requires).  The transport thread itself sends such messages
when it handles the server's requests: most often the EOF and CLOSE answering
a channel the server closed.  If the server's CLOSE arrives after we asked
for new keys (paramiko asks every 512 MiB, so at the end of a big pull this
is a matter of timing), the transport thread waits for an exchange that only
it can complete: the connection hangs for paramiko's 30 s key-exchange
timeout and then dies.  Measured with the bench's sshd and paramiko 5.1,
receiving 130 MiB with new keys every 8 MiB: 2 of 12 runs hung.

``install`` makes the transport thread hand such messages to a queue
instead; a short-lived thread sends them, in order, once the exchange is
over.  Messages from other threads keep paramiko's own wait, and while the
queue holds anything the transport thread's later messages join it, so the
server still sees them in the order they were made.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class _Deferred:
    def __init__(self, transport: Any, send: Callable[[Any], None]) -> None:
        self._transport = transport
        self._send = send  # paramiko's own _send_user_message (bound)
        self._lock = threading.Lock()
        self._queue: list[Any] = []

    def __call__(self, message: Any) -> None:
        transport = self._transport
        if threading.get_ident() == transport.ident:
            with self._lock:
                if self._queue or not transport.clear_to_send.is_set():
                    self._queue.append(message)
                    log.debug("a message of the transport thread waits for the key exchange to end")
                    if len(self._queue) == 1:
                        threading.Thread(
                            target=self._drain, name="srsync-kex-deferred", daemon=True
                        ).start()
                    return
        self._send(message)

    def _drain(self) -> None:
        """Send the queued messages in order; paramiko's wait holds each until the exchange ends."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                message = self._queue[0]
            try:
                self._send(message)
            except Exception as exc:  # the connection died meanwhile: it reports that itself
                log.debug("a message held back during a key exchange was not sent: %s", exc)
                with self._lock:
                    self._queue.clear()
                return
            with self._lock:
                self._queue.pop(0)


def install(transport: Any) -> bool:
    """Route ``transport``'s own messages during key exchanges through a queue; False if the
    transport lacks the paramiko internals this relies on."""
    send = getattr(transport, "_send_user_message", None)
    if send is None or isinstance(send, _Deferred) or not hasattr(transport, "clear_to_send"):
        return False
    transport._send_user_message = _Deferred(transport, send)
    return True
