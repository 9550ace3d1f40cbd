"""uvicorn's HTTP/1.1 protocol, aborting a connection whose response was left incomplete.

When a stream drops a reader that stopped reading (`OMNITUTOR_SSE_SEND_TIMEOUT_S`), the app
returns before its response is complete and uvicorn closes the transport. A graceful close
first flushes the write buffer, and a reader that does not read never lets it drain, so the
socket stayed ESTABLISHED, with its buffers, for as long as the client cared to hold it. A
half-sent response is of no use to anyone: here closing one aborts the connection with a
TCP reset (SO_LINGER 0, so the kernel does not keep the queued bytes either) and frees
everything at once. Complete responses close as before.

`omnitutor serve` runs uvicorn with `http=AbortingH11Protocol`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol


class _AbortIncomplete:
    """The connection's transport, except that close() mid-response aborts."""

    def __init__(self, transport: asyncio.Transport, protocol: H11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: the kernel drops what is still queued and sends a reset, instead
                # of holding the buffers for a reader that will never take them.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class AbortingH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self.transport = cast(asyncio.Transport, _AbortIncomplete(self.transport, self))
