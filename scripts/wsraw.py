"""A minimal WebSocket client on plain asyncio streams, for tests and load scripts.

Unlike a full client it sends exactly the frames it is given (invalid UTF-8, fragments,
unknown opcodes), can stop reading altogether, and answers pings only when asked to.
It speaks just enough RFC 6455 for that: the client handshake, masked frames out, and
unmasked frames in. Standard library only, like devdb.py beside it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

TEXT = 0x1
BINARY = 0x2
CONTINUATION = 0x0
CLOSE = 0x8
PING = 0x9
PONG = 0xA

MAX_HEAD_BYTES = 16384
READ_LIMIT = 65536


class HandshakeRejected(Exception):
    """The server responded to the upgrade request with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"handshake answered {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    """Return one frame; clients must mask, but `mask=False` lets a test send an unmasked one."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        head += bytes([mask_bit | length])
    elif length <= 0xFFFF:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    # XOR with the key repeated to the payload's length, done on whole integers for speed.
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return head + key + masked


class RawSocket:
    """One client connection after a successful handshake."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin, mask))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_json(self, message: object) -> None:
        self.send_frame(TEXT, json.dumps(message).encode())

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_frame(self) -> tuple[bool, int, bytes]:
        """Return (fin, opcode, payload) of the next frame; raises IncompleteReadError at end of stream."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await self.reader.readexactly(length)
        return bool(first & 0x80), first & 0x0F, payload

    async def read_message(self, answer_pings: bool = True) -> tuple[int, bytes] | None:
        """Return (opcode, payload) of the next data message, or None once the server closes.

        Each ping gets a pong unless `answer_pings` is False. A close frame from the
        server is echoed back, and its code and reason are kept.
        """
        while True:
            try:
                fin, opcode, payload = await self.read_frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if opcode == PING:
                if answer_pings:
                    self.send_frame(PONG, payload)
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                if len(payload) >= 2:
                    (self.close_code,) = struct.unpack("!H", payload[:2])
                    self.close_reason = payload[2:].decode("utf-8", "replace")
                self.send_frame(CLOSE, payload[:2])
                return None
            return opcode, payload

    async def read_json(self, timeout: float = 5.0) -> object:
        received = await asyncio.wait_for(self.read_message(), timeout)
        if received is None:
            raise ConnectionError(f"socket closed with code {self.close_code} ({self.close_reason})")
        return json.loads(received[1])

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Read and discard messages until the server closes; return its close code."""
        async def read_until_closed():
            while await self.read_message() is not None:
                pass
        await asyncio.wait_for(read_until_closed(), timeout)
        return self.close_code

    def close(self) -> None:
        """Close the TCP connection at once, without a closing handshake."""
        self.writer.close()


async def connect(host: str, port: int, path: str, headers: dict[str, str] | None = None,
                  receive_buffer: int | None = None, timeout: float = 10.0) -> RawSocket:
    """Open a connection and complete the client handshake; raises `HandshakeRejected` for a non-101 answer.

    `receive_buffer` sets SO_RCVBUF (bytes) before connecting, so that a client that
    stops reading makes the server's backlog grow after only a little data.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
        # asyncio reads ahead until its buffer contains twice `limit`. A small limit makes
        # a client that stops reading stop taking data off the socket soon after.
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
    except BaseException:
        sock.close()
        raise
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        status, response_headers = await asyncio.wait_for(_read_response_head(reader), timeout)
        if status != 101:
            length = int(response_headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
            raise HandshakeRejected(status, body)
    except BaseException:
        writer.close()
        raise
    return RawSocket(reader, writer)


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD_BYTES:
        raise ConnectionError("response head is too long")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers
