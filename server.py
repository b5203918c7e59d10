"""Run one taxi server process: `python server.py [--host H] [--port P]`.

Everything else comes from the environment through `settings.py`.
"""

import argparse
import asyncio
import gc
import logging
import signal
import sys

import tornado.httpserver

import settings as settings_module
from taxi import logs
from taxi.app import Services, create_services, make_app, prepare_database
from taxi.database import DatabaseUnavailable

logger = logging.getLogger("taxi.server")

INDEX_RETRY_INTERVAL = 5.0
CLOSE_GOING_AWAY = 1001
# Seconds to wait for clients to respond to close frames; the whole shutdown must fit in
# supervisord's default stop window of 10 seconds.
SOCKET_CLOSE_WAIT = 5.0
MIN_API_KEY_LENGTH = 16
# CPython's default first threshold (700) runs a collection every few handshakes, and
# each full collection walks the objects of every open socket. In bench/ such a pause
# made the p99 of a group send to 1,000 sockets about 120 ms instead of about 35 ms.
# Larger thresholds make full collections rare; cyclic garbage lives a little longer.
GC_THRESHOLDS = (50_000, 20, 20)


class ListenError(Exception):
    """The server could not open its listening socket (address in use, unknown host, ...)."""


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description="Run the taxi WebSocket server (one process).")
    parser.add_argument("--host", help="address to listen on (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port to listen on (default: PORT, else 8000)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as error:
        print(f"taxi: invalid configuration: {error}", file=sys.stderr)
        return 2
    if arguments.port is not None and not 1 <= arguments.port <= 65535:
        print(f"taxi: invalid --port {arguments.port}: expected a TCP port between 1 and 65535", file=sys.stderr)
        return 2

    logs.configure(settings.log_level)
    gc.set_threshold(*GC_THRESHOLDS)
    if settings.secret_key_generated:
        logger.warning("SECRET_KEY is not set: using the development key in %s. "
                       "Production must set SECRET_KEY.", settings_module.SECRET_KEY_FILE)
    if settings.api_key is not None and len(settings.api_key) < MIN_API_KEY_LENGTH:
        logger.warning("API_KEY is shorter than %d characters; anyone who guesses it can send to any group",
                       MIN_API_KEY_LENGTH)
    host = arguments.host or settings.host
    port = arguments.port or settings.port
    try:
        run_event_loop(serve(settings, host, port), settings.event_loop)
    except ListenError as error:
        print(f"taxi: {error}", file=sys.stderr)
        return 1
    return 0


def run_event_loop(main_coroutine, event_loop: str) -> None:
    if event_loop == "uvloop":
        import uvloop
        uvloop.run(main_coroutine)
    else:
        asyncio.run(main_coroutine)


async def serve(settings, host: str, port: int) -> None:
    services = create_services(settings)
    index_task = asyncio.ensure_future(create_indexes_until_done(services))
    server = tornado.httpserver.HTTPServer(
        make_app(services),
        # Bodies over MAX_MESSAGE_SIZE get a 413 from the handlers; this only stops a
        # client from streaming without end.
        max_body_size=max(4 * settings.max_message_size, 1024 * 1024),
    )
    try:
        server.listen(port, host)
    except OSError as error:
        await services.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    logger.info("Listening on http://%s:%s/ (database %s)", host, port, settings.database_name)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()

    logger.info("Stopping: no longer accepting connections")
    server.stop()
    index_task.cancel()
    await shutdown(server, services)
    logger.info("Stopped")


async def create_indexes_until_done(services: Services) -> None:
    """Create the indexes, retrying while MongoDB is down; logs the outage once, not every retry."""
    failures = 0
    while True:
        try:
            await prepare_database(services)
        except DatabaseUnavailable as error:
            failures += 1
            if failures == 1:
                logger.error("MongoDB is not responding; the username index will be created once it is "
                             "(retrying every %.0f s): %s", INDEX_RETRY_INTERVAL, error)
            await asyncio.sleep(INDEX_RETRY_INTERVAL)
            continue
        if failures:
            logger.info("MongoDB is responding again; the username index is in place")
        return


async def shutdown(server: tornado.httpserver.HTTPServer, services: Services) -> None:
    """Close every socket with 1001, give clients a moment to respond, then release the services."""
    sockets = tuple(services.sockets)
    # Read by scripts/soak.py: after every client has left, both counts must be 0.
    logger.info("Group map at shutdown: %d groups, %d open sockets; counters since start: %s",
                len(services.groups.group_names()), len(sockets), dict(services.counters))
    logger.info("Closing %d open sockets with code 1001", len(sockets))
    for socket in sockets:
        socket.close(CLOSE_GOING_AWAY, "server is shutting down")
    deadline = loop_time() + SOCKET_CLOSE_WAIT
    while services.sockets and loop_time() < deadline:
        await asyncio.sleep(0.05)
    # A client that never responds to the close frame is cut off here rather than holding
    # the process past supervisord's stop window.
    for socket in tuple(services.sockets):
        socket.abort()
    await server.close_all_connections()
    await services.close()


def loop_time() -> float:
    return asyncio.get_running_loop().time()


if __name__ == "__main__":
    sys.exit(main())
