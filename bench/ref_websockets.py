"""The taxi WebSocket protocol on the asyncio server of the `websockets` library.

It is the pure-Python reference of the benchmark: no database, users in a set built
from `--users` (ids from common.generate_user_ids).

The websockets server only accepts GET requests without a body, so the group-send
endpoint `POST /api/groups/<group>/send/` listens on a second port (`--api-port`,
default `--port` + 1) in the same process and event loop.
"""

import argparse
import asyncio
import hmac
import http
import json
import logging
import re
import signal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

from common import COMMON_GROUPS, MAX_MESSAGE_SIZE, decode_access_user_id, generate_user_ids

log = logging.getLogger("ref_websockets")

GROUP_SEND_PATH = re.compile(r"^/api/groups/([^/]+)/send/$")
MAX_REQUEST_HEAD = 16384


class Groups:
    """Group name to the set of open connections in it, for this process only."""

    def __init__(self):
        self.members = {}

    def add(self, name, connection):
        self.members.setdefault(name, set()).add(connection)

    def discard(self, name, connection):
        connections = self.members.get(name)
        if connections is None:
            return
        connections.discard(connection)
        if not connections:
            del self.members[name]

    def connections(self, name):
        return self.members.get(name, ())


def error_message(code, detail):
    return json.dumps({"type": "error", "data": {"code": code, "detail": detail}})


class TaxiProtocol:
    """Handshake check, socket handler and group-send logic, bound to one secret and user set."""

    def __init__(self, secret, api_key, user_ids):
        self.secret = secret
        self.api_key = api_key
        self.users = frozenset(user_ids)
        self.groups = Groups()

    def process_request(self, connection, request):
        target = urlsplit(request.path)
        if target.path != "/taxi/":
            return connection.respond(404, "Not Found\n")
        token = parse_qs(target.query).get("token", [None])[0]
        if token is None:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and credentials:
                token = credentials.strip()
        user_id = decode_access_user_id(token, self.secret, self.users) if token else None
        if user_id is None:
            return connection.respond(401, "Authentication credentials were not provided or are invalid.\n")
        # The handler reads the user id back from the connection after the upgrade.
        connection.user_id = user_id
        return None

    async def handle_socket(self, connection):
        joined = (*COMMON_GROUPS, f"user.{connection.user_id}")
        for name in joined:
            self.groups.add(name, connection)
        try:
            async for message in connection:
                if isinstance(message, bytes):
                    await connection.close(1003, "binary frames are not supported")
                    return
                reply = self.reply_to(message)
                await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            for name in joined:
                self.groups.discard(name, connection)

    @staticmethod
    def reply_to(message):
        try:
            payload = json.loads(message)
        except ValueError:
            return error_message("invalid_message", "message is not valid JSON")
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            return error_message("invalid_message", "message must be a JSON object with a string type")
        if payload["type"] == "echo.message":
            # The received text is the same object, so it goes back without re-encoding.
            return message
        return error_message("unknown_type", f"unknown message type {payload['type']!r}")

    def group_send(self, method, path, headers, body):
        """Return (status, JSON body) for one request to the HTTP API port."""
        match = GROUP_SEND_PATH.match(path)
        if match is None:
            return 404, {"detail": "Not found."}
        if method != "POST":
            return 405, {"detail": f"Method {method} is not allowed."}
        if not self.api_key:
            return 404, {"detail": "Not found."}
        expected = f"Api-Key {self.api_key}".encode()
        if not hmac.compare_digest(headers.get("authorization", "").encode(), expected):
            return 401, {"detail": "Invalid API key."}
        try:
            message = json.loads(body)
        except ValueError:
            return 400, {"detail": "Body is not valid JSON."}
        if not isinstance(message, dict):
            return 400, {"detail": "Body must be a JSON object."}

        group = match.group(1)
        # broadcast() writes to every connection without waiting for its buffer to drain.
        broadcast(self.groups.connections(group), body.decode())
        return 202, {"group": group}

    async def handle_http(self, reader, writer):
        """Serve one HTTP/1.1 request on the API port, then close the connection."""
        status, reply = 400, {"detail": "Malformed HTTP request."}
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, separator, value = line.partition(":")
                if separator:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length > MAX_MESSAGE_SIZE:
                status, reply = 413, {"detail": f"Body is larger than {MAX_MESSAGE_SIZE} bytes."}
            else:
                body = await reader.readexactly(length)
                status, reply = self.group_send(method, urlsplit(target).path, headers, body)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("malformed HTTP request on the API port: %s", exc)

        payload = json.dumps(reply).encode()
        writer.write(
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + payload
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="WebSocket listen port")
    parser.add_argument("--api-port", type=int, help="HTTP API listen port (default --port + 1)")
    parser.add_argument("--secret", required=True, help="HMAC key for HS256 access tokens")
    parser.add_argument("--api-key", default="", help="key for the group-send endpoint; when empty, the endpoint returns 404")
    parser.add_argument("--users", type=int, default=1000, help="number of active users (default 1000)")
    return parser.parse_args()


async def run(args):
    protocol = TaxiProtocol(args.secret, args.api_key, generate_user_ids(args.users))
    api_port = args.api_port or args.port + 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # Compression and keepalive pings are off because Tornado has both off by default,
    # and the floor server is measured beside this one.
    async with serve(
        protocol.handle_socket,
        args.host,
        args.port,
        process_request=protocol.process_request,
        compression=None,
        ping_interval=None,
        max_size=MAX_MESSAGE_SIZE,
        backlog=4096,
    ):
        api_server = await asyncio.start_server(
            protocol.handle_http, args.host, api_port, limit=MAX_REQUEST_HEAD, backlog=4096
        )
        log.info(
            "listening on %s:%d (API on port %d) with %d users", args.host, args.port, api_port, args.users
        )
        await stop.wait()
        api_server.close()
    log.info("stopped")


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # websockets logs every opened and rejected connection at INFO, which at thousands
    # of handshakes per second would be a large share of what the benchmark measures.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
