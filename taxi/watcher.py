"""Closing the sockets of users who were made inactive while connected.

FerretDB 1.24, the development and test server, has no change streams, so the
watcher polls instead: every `CHECK_INTERVAL` seconds it queries MongoDB for which of
the users with sockets open in this process are still active, in `$in` queries of at
most `CHUNK_SIZE` ids, and closes the sockets of the others with 4003. A user
deactivated by `python -m taxi deactivate` or by an update made directly in MongoDB
is therefore cut off within about CHECK_INTERVAL plus one query.

Each process watches only its own sockets, so this needs no Redis and works the same
with any number of processes.
"""

import asyncio
import logging

from taxi.database import DatabaseUnavailable

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0
CHUNK_SIZE = 500
# One round of queries must finish well within the 5 seconds the contract allows.
QUERY_TIMEOUT = 2.0

CLOSE_USER_INACTIVE = 4003


class InactiveUserWatcher:
    """Polls MongoDB for the users of `sockets` and closes the sockets of inactive ones.

    `sockets` is the process's `OpenSockets`; the task starts with the first socket
    (`ensure_running`) because it needs the running event loop, and ends with `close`.
    """

    def __init__(self, users, sockets, interval: float = CHECK_INTERVAL, chunk_size: int = CHUNK_SIZE):
        self.users = users
        self.sockets = sockets
        self.interval = interval
        self.chunk_size = chunk_size
        self._task: asyncio.Task | None = None
        # Logged once per outage rather than every round.
        self._database_down = False

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Inactive-user check failed; trying again in %s s", self.interval)

    async def check_once(self) -> int:
        """Close the sockets of connected users who are no longer active; return how many closed."""
        user_ids = self.sockets.user_ids()
        closed = 0
        for start in range(0, len(user_ids), self.chunk_size):
            chunk = user_ids[start:start + self.chunk_size]
            try:
                active = await asyncio.wait_for(self.users.active_among(chunk), QUERY_TIMEOUT)
            except (DatabaseUnavailable, asyncio.TimeoutError) as error:
                if not self._database_down:
                    logger.warning("Inactive-user check skipped: MongoDB is not responding: %s",
                                   error or "timed out")
                self._database_down = True
                return closed
            for user_id in chunk:
                if user_id not in active:
                    closed += self.close_user(user_id)
        if self._database_down:
            logger.info("Inactive-user check: MongoDB responds again")
            self._database_down = False
        return closed

    def close_user(self, user_id: str) -> int:
        # `close_with` skips sockets already closing, so a socket whose client is slow
        # to complete the close is not counted or logged again in the next round.
        closed = sum(socket.close_with(CLOSE_USER_INACTIVE, "user is inactive")
                     for socket in self.sockets.of_user(user_id))
        if closed:
            logger.info("User %s is inactive or deleted: closed their %d sockets with %d",
                        user_id, closed, CLOSE_USER_INACTIVE)
        return closed
