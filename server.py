"""Run one taxi server process: `python server.py [--host H] [--port P]`.

Everything else comes from the environment through `settings.py`.
"""

import argparse
import asyncio
import logging
import signal
import sys

import tornado.httpserver

import settings as settings_module
from taxi import logs
from taxi.app import Services, create_services, make_app, prepare_database

logger = logging.getLogger("taxi.server")

INDEX_RETRY_INTERVAL = 5.0
CLOSE_GOING_AWAY = 1001
# Seconds to wait for clients to answer close frames; the whole shutdown must fit in
# supervisord's default stop window of 10 seconds.
SOCKET_CLOSE_WAIT = 5.0


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
    if settings.secret_key_generated:
        logger.warning("SECRET_KEY is not set: using the development key in %s. "
                       "Production must set SECRET_KEY.", settings_module.SECRET_KEY_FILE)
    host = arguments.host or settings.host
    port = arguments.port or settings.port
    asyncio.run(serve(settings, host, port))
    return 0


async def serve(settings, host: str, port: int) -> None:
    services = create_services(settings)
    index_task = asyncio.ensure_future(create_indexes_until_done(services))
    server = tornado.httpserver.HTTPServer(
        make_app(services),
        # Bodies over MAX_MESSAGE_SIZE get a 413 from the handlers; this only stops a
        # client from streaming without end.
        max_body_size=max(4 * settings.max_message_size, 1024 * 1024),
    )
    server.listen(port, host)
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
    while not await prepare_database(services):
        await asyncio.sleep(INDEX_RETRY_INTERVAL)


async def shutdown(server: tornado.httpserver.HTTPServer, services: Services) -> None:
    """Close every socket with 1001, give clients a moment to answer, then release the services."""
    sockets = tuple(services.sockets)
    logger.info("Closing %d open sockets with code 1001", len(sockets))
    for socket in sockets:
        socket.close(CLOSE_GOING_AWAY, "server is shutting down")
    deadline = loop_time() + SOCKET_CLOSE_WAIT
    while services.sockets and loop_time() < deadline:
        await asyncio.sleep(0.05)
    # A client that never answers the close frame is cut off here rather than holding
    # the process past supervisord's stop window.
    for socket in tuple(services.sockets):
        socket.abort()
    await server.close_all_connections()
    await services.close()


def loop_time() -> float:
    return asyncio.get_running_loop().time()


if __name__ == "__main__":
    sys.exit(main())
