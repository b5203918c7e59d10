"""Bare Tornado server with the taxi WebSocket protocol and no database.

It is the "floor" of the benchmark: the cost of Tornado itself with the same
handshake, token check, groups and echo as taxi, while users live in a dict built
from `--users` (ids from common.generate_user_ids).
"""

import argparse
import asyncio
import hmac
import json
import logging
import signal

import tornado.web
import tornado.websocket

from common import COMMON_GROUPS, MAX_MESSAGE_SIZE, decode_access_user_id, generate_user_ids

log = logging.getLogger("floor_tornado")


class Groups:
    """Group name to the set of open sockets in it, for this process only."""

    def __init__(self):
        self.members = {}

    def add(self, name, socket):
        self.members.setdefault(name, set()).add(socket)

    def discard(self, name, socket):
        sockets = self.members.get(name)
        if sockets is None:
            return
        sockets.discard(socket)
        if not sockets:
            del self.members[name]

    def sockets(self, name):
        return tuple(self.members.get(name, ()))


def error_message(code, detail):
    return json.dumps({"type": "error", "data": {"code": code, "detail": detail}})


def bearer_token(request):
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    return None


class TaxiSocket(tornado.websocket.WebSocketHandler):
    def initialize(self, secret, users, groups):
        self.secret = secret
        self.users = users
        self.groups = groups
        self.user_id = None
        self.joined = ()

    def prepare(self):
        # A 401 sent here ends the request before WebSocketHandler.get() can upgrade it.
        token = self.get_query_argument("token", None) or bearer_token(self.request)
        user_id = decode_access_user_id(token, self.secret, self.users) if token else None
        if user_id is None:
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish('{"detail": "Authentication credentials were not provided or are invalid."}')
            return
        self.user_id = user_id

    def open(self):
        self.joined = (*COMMON_GROUPS, f"user.{self.user_id}")
        for name in self.joined:
            self.groups.add(name, self)

    def on_close(self):
        for name in self.joined:
            self.groups.discard(name, self)
        self.joined = ()

    def on_message(self, message):
        if isinstance(message, bytes):
            self.close(1003, "binary frames are not supported")
            return
        try:
            payload = json.loads(message)
        except ValueError:
            self.write_message(error_message("invalid_message", "message is not valid JSON"))
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            self.write_message(
                error_message("invalid_message", "message must be a JSON object with a string type")
            )
            return
        if payload["type"] == "echo.message":
            # The received text is the same object, so it goes back without re-encoding.
            self.write_message(message)
            return
        self.write_message(error_message("unknown_type", f"unknown message type {payload['type']!r}"))


class GroupSend(tornado.web.RequestHandler):
    def initialize(self, api_key, groups):
        self.api_key = api_key
        self.groups = groups

    def post(self, group):
        if not self.api_key:
            raise tornado.web.HTTPError(404)
        expected = f"Api-Key {self.api_key}".encode()
        received = self.request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(received, expected):
            self.reply(401, {"detail": "Invalid API key."})
            return
        if len(self.request.body) > MAX_MESSAGE_SIZE:
            self.reply(413, {"detail": f"Body is larger than {MAX_MESSAGE_SIZE} bytes."})
            return
        try:
            message = json.loads(self.request.body)
        except ValueError:
            self.reply(400, {"detail": "Body is not valid JSON."})
            return
        if not isinstance(message, dict):
            self.reply(400, {"detail": "Body must be a JSON object."})
            return

        text = self.request.body.decode()
        for socket in self.groups.sockets(group):
            try:
                socket.write_message(text)
            except tornado.websocket.WebSocketClosedError:
                pass
        self.reply(202, {"group": group})

    def reply(self, status, body):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class Health(tornado.web.RequestHandler):
    def get(self):
        self.write({"status": "ok"})


def log_server_errors(handler):
    # Tornado logs every request by default; at thousands of handshakes per second
    # that logging would be a large share of what the benchmark measures.
    if handler.get_status() >= 500:
        log.error("%d %s", handler.get_status(), handler._request_summary())


def make_app(secret, api_key, user_ids):
    groups = Groups()
    users = frozenset(user_ids)
    return tornado.web.Application(
        [
            (r"/taxi/", TaxiSocket, {"secret": secret, "users": users, "groups": groups}),
            (r"/api/groups/([^/]+)/send/", GroupSend, {"api_key": api_key, "groups": groups}),
            (r"/healthz", Health),
        ],
        websocket_max_message_size=MAX_MESSAGE_SIZE,
        log_function=log_server_errors,
    )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    parser.add_argument("--secret", required=True, help="HMAC key for HS256 access tokens")
    parser.add_argument("--api-key", default="", help="key for the group-send endpoint; when empty, the endpoint returns 404")
    parser.add_argument("--users", type=int, default=1000, help="number of active users (default 1000)")
    return parser.parse_args()


async def serve(args):
    app = make_app(args.secret, args.api_key, generate_user_ids(args.users))
    server = app.listen(args.port, args.host, backlog=4096)
    log.info("listening on %s:%d with %d users", args.host, args.port, args.users)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    server.stop()
    log.info("stopped")


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(parse_args()))


if __name__ == "__main__":
    main()
