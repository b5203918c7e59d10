"""The MongoDB client and what counts as "the database is unreachable"."""

import logging

import pymongo.errors
from motor.motor_asyncio import AsyncIOMotorClient

# The driver's default server selection timeout is 30 seconds; a socket handshake must
# get its 503 within 3 seconds, so selection and connecting give up well before that.
SERVER_SELECTION_TIMEOUT_MS = 2000
CONNECT_TIMEOUT_MS = 2000
SOCKET_TIMEOUT_MS = 5000

# At DEBUG level PyMongo logs every command with its documents, which would put
# password hashes in the log; its other loggers carry no document contents.
logging.getLogger("pymongo.command").setLevel(logging.INFO)

# Errors that mean the server could not be reached or did not respond in time, as
# opposed to errors in what was asked of it (duplicate keys, bad queries).
UNAVAILABLE_ERRORS = (
    pymongo.errors.ConnectionFailure,  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
    pymongo.errors.ExecutionTimeout,
    pymongo.errors.WTimeoutError,
)


class DatabaseUnavailable(Exception):
    """MongoDB did not respond in time; the request may be retried later."""


def connect(uri: str) -> AsyncIOMotorClient:
    """Create the Motor client. Call it inside the running event loop it will serve."""
    return AsyncIOMotorClient(
        uri,
        serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
        connectTimeoutMS=CONNECT_TIMEOUT_MS,
        socketTimeoutMS=SOCKET_TIMEOUT_MS,
        tz_aware=True,
        appname="taxi",
    )
