"""Pings for every socket of the process, driven by one timer instead of a task per socket.

Tornado 6.6.1 runs a task per socket for its pings (`WebSocketProtocol13.periodic_ping`).
`Heartbeat` keeps the same rules for all sockets from one timer. The first ping goes out
`interval` seconds after the socket opens and the next `interval` seconds after the one
before. A socket whose client has not sent the pong within `timeout` is closed with
1000, reason "ping timed out". The timer fires every `interval / TICKS_PER_INTERVAL`
seconds, so a ping may leave, and a missing pong may be noticed, up to that much late.

The schedule lives in this object's dicts, not on the protocol objects: Tornado's
protocol already has about 30 attributes, and one more made CPython 3.11 trade its
shared-key instance dict for a 1.5 KiB one (tracemalloc, per idle socket).
"""

import asyncio
import logging

import tornado.iostream
import tornado.websocket

logger = logging.getLogger(__name__)

TICKS_PER_INTERVAL = 10


class Heartbeat:
    """The sockets of this process that get pings, and the one timer that sends them.

    Members are `TaxiProtocol` objects. `_next_ping` maps every member to the loop time
    of its next ping. `_ping_sent` maps each member whose last ping has no pong yet to
    the loop time that ping went out.
    """

    def __init__(self, interval: float, timeout: float):
        self.interval = interval
        self.timeout = timeout
        self._next_ping: dict = {}
        self._ping_sent: dict = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, protocol) -> None:
        loop = asyncio.get_running_loop()
        self._next_ping[protocol] = loop.time() + self.interval
        if self._timer is None:
            self._timer = loop.call_later(self.interval / TICKS_PER_INTERVAL, self._tick)

    def discard(self, protocol) -> None:
        """Stop pinging `protocol`; discarding one that is not there does nothing."""
        self._next_ping.pop(protocol, None)
        self._ping_sent.pop(protocol, None)

    def __len__(self) -> int:
        return len(self._next_ping)

    def close(self) -> None:
        """Stop the timer and forget every socket."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._next_ping.clear()
        self._ping_sent.clear()

    def _tick(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for protocol in tuple(self._next_ping):
            try:
                self._check(protocol, now)
            except Exception:
                self.discard(protocol)
                logger.exception("Pinging a socket failed; it gets no more pings")
        if self._next_ping:
            self._timer = asyncio.get_running_loop().call_later(self.interval / TICKS_PER_INTERVAL, self._tick)

    def _check(self, protocol, now: float) -> None:
        if protocol.is_closing():
            self.discard(protocol)
            return
        sent = self._ping_sent.get(protocol)
        if sent is not None and now >= sent + self.timeout:
            if self.timeout > 0 and not protocol._received_pong:
                self.discard(protocol)
                protocol.close(reason="ping timed out")
                return
            del self._ping_sent[protocol]
        if now >= self._next_ping[protocol]:
            protocol._received_pong = False
            self._ping_sent[protocol] = now
            self._next_ping[protocol] = now + self.interval
            try:
                protocol.write_ping(b"")
            except (tornado.iostream.StreamClosedError, tornado.websocket.WebSocketClosedError):
                # The peer has gone; Tornado's close callbacks clean up after it.
                self.discard(protocol)
