"""The WebSocket protocol as the `/taxi/` socket speaks it: close codes, UTF-8 checks, backlog.

These are the places where the socket handler reaches below Tornado's public API.
Each is pinned to Tornado 6.6.1 by tests: the close code 1007 tests, the slow consumer
tests and the ping tests fail if an upgrade changes what they rely on.
"""

import tornado.iostream
import tornado.websocket

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOKEN_EXPIRED = 4001

TEXT_OPCODE = 0x1


class TaxiProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, with a close code for text that is not UTF-8, and pings from `Heartbeat`.

    Tornado 6.6.1 drops the connection without a close frame when a text message is
    not valid UTF-8. This class closes it with 1007 instead, the code that RFC 6455
    section 7.4.1 assigns to non-UTF-8 data in a text message.
    """

    def start_pinging(self) -> None:
        # NOTE: replaces Tornado 6.6.1's task per socket (checked against 6.6.1); the
        # process-wide heartbeat sends the pings with the same interval and timeout.
        if self.ping_interval > 0:
            self.handler.services.heartbeat.add(self)

    def close(self, code=None, reason=None) -> None:
        self.handler.services.heartbeat.discard(self)
        super().close(code, reason)

    def _handle_message(self, opcode, data):
        # NOTE: overrides a private Tornado method (checked against 6.6.1). Compression
        # is never negotiated here, so `data` is the message as the client sent it.
        if opcode == TEXT_OPCODE and not self.client_terminated:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                # The handler is the `TaxiSocket` that made this protocol.
                self.handler.close_with(CLOSE_INVALID_PAYLOAD, "text frame is not valid UTF-8")
                return None
        return super()._handle_message(opcode, data)


def unsent_bytes(stream: tornado.iostream.IOStream) -> int:
    """Return how many bytes `stream` has buffered that the kernel has not yet taken.

    Tornado 6.6.1 has no public accessor (`IOStream.writing()` is only a bool), so this
    reads the stream's private write counters. They are plain integers that stay
    valid after the stream closes.
    """
    return stream._total_write_index - stream._total_write_done_index
