"""Groups that span processes: Redis pub/sub carries group sends between them.

Each process keeps its own members in the map it inherits from `LocalGroups`. It
subscribes, on one Redis connection, to one channel per group that has a member here:
it subscribes when the first local member joins and unsubscribes when the last one
leaves. Publishing and health checks use a second connection.

Delivery is exactly once per socket while Redis is up, and at most once during an
outage. `group_send` delivers to this process's members directly, then publishes an
envelope that names this process as its origin. Every
process subscribed to the group's channel delivers the envelope to its own members,
except the origin, which skips its own echo. Local sockets therefore still get group
sends while Redis is down.

Order, per sending process: local members get the sends in call order because
delivery is synchronous. Remote members get them in the same order because envelopes
pass through one FIFO queue to one publisher task that publishes on one connection,
Redis delivers each channel's messages to a subscriber in the order it executed the
PUBLISH commands, and the subscriber task delivers them one by one.
Sends made through different processes have no guaranteed order between them.
NOTE: `group_send` returns only after Redis accepted the PUBLISH, so a caller that
waits for one send before making the next through another process usually sees them
in order (150 of 150 in a manual check through nginx with 4 processes), but nothing
enforces that.

Envelope: the first line is a JSON object `{"v": 1, "origin": "<process id>"}`, and
what follows the newline is the message exactly as the sender encoded it (compact
JSON, which has no raw newline), so receivers pass it on without decoding it. A
receiver skips, and counts, envelopes of a version it does not know, so a new format
can be rolled out process by process as long as every version keeps the JSON first line.

While Redis is down, sends reach local members only and are not queued for later
(pub/sub stores nothing either), the outage is logged once, and the subscriber
reconnects with backoff and subscribes again to every group that still has members here.
"""

import asyncio
import collections
import json
import logging
import os
import random
import uuid
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taxi import messages
from taxi.groups import LocalGroups, Member, check_group_name

logger = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
CHANNEL_PREFIX = "taxi:group:"

CONNECT_TIMEOUT = 2.0
# Bounds writes and publishes; the subscriber's reads use READ_POLL_INTERVAL instead.
SOCKET_TIMEOUT = 5.0
# The subscriber wakes at least this often to notice a failure another task reported.
READ_POLL_INTERVAL = 1.0
RECONNECT_DELAY_MIN = 0.2
RECONNECT_DELAY_MAX = 5.0
SUBSCRIBE_TIMEOUT = 2.0
HEALTH_TIMEOUT = 2.0
# Envelopes waiting for the publisher; a sender waits when it is full.
OUTBOX_SIZE = 10_000
PUBLISH_BATCH_SIZE = 500
CLOSE_FLUSH_TIMEOUT = 1.0
# After the first one, an unknown envelope version is logged again every this many.
UNKNOWN_VERSION_LOG_EVERY = 1000

# Errors that mean Redis cannot be reached, as opposed to a command it rejected.
CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisGroups(LocalGroups):
    """Group map of this process, joined with the other processes' maps through Redis.

    `_members` (from `LocalGroups`) still decides which sockets live here. Background
    tasks start on first use, inside the running event loop.
    """

    def __init__(self, url: str, channel_prefix: str = CHANNEL_PREFIX):
        super().__init__()
        self.url = url
        self.channel_prefix = channel_prefix
        # Names this instance in envelopes; tests run two instances in one process.
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._envelope_header = json.dumps({"v": ENVELOPE_VERSION, "origin": self.origin}).encode() + b"\n"
        self._redis = redis.asyncio.Redis.from_url(
            url,
            # RESP2 works with every Redis server version; pub/sub needs nothing from RESP3.
            protocol=2,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            socket_keepalive=True,
            # This class reconnects itself, with backoff; redis-py's own retries would
            # reconnect behind its back and delay the report of an outage.
            retry=Retry(NoBackoff(), 0),
            client_name=f"taxi-{self.origin}",
        )

        self._pubsub: redis.asyncio.client.PubSub | None = None
        # Serializes SUBSCRIBE and UNSUBSCRIBE so Redis receives them in the order the
        # local map changed, and so a reconnect's resubscription reads a stable map.
        self._command_lock = asyncio.Lock()
        # One future per channel named in a SUBSCRIBE or UNSUBSCRIBE sent on the current
        # connection, oldest first: Redis confirms each channel with one reply, in order.
        self._pending_replies: collections.deque[asyncio.Future] = collections.deque()
        # Group name to the reply that confirms its subscription, for members that join
        # while it is in flight.
        self._confirmations: dict[str, asyncio.Future] = {}

        self._outbox: asyncio.Queue = asyncio.Queue(OUTBOX_SIZE)
        # asyncio.Lock wakes waiters first come, first served, so senders waiting for
        # room in a full outbox keep their order.
        self._outbox_lock = asyncio.Lock()

        # Set while connected with every subscription confirmed.
        self._ready = asyncio.Event()
        # Set once the first connection attempt has succeeded or failed.
        self._first_attempt_done = asyncio.Event()
        self._connection_broken = asyncio.Event()
        self._reconnect_delay = RECONNECT_DELAY_MIN
        self._outage_started: float | None = None
        self._unpublished_before_outage = 0
        self._connected_once = False
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._publisher_stopped = False

        # Counts since start, for tests and for the log lines that report them.
        # `unpublished`: sends that reached local members only, because Redis was down.
        self.unpublished = 0
        self.unknown_versions: collections.Counter = collections.Counter()
        self.malformed = 0

    # --- The group interface ---------------------------------------------------------

    async def group_add(self, group: str, member: Member) -> None:
        """Add `member` to `group`; returns once Redis confirmed the group's subscription.

        Raises no Redis error. While Redis is down the member is added locally, and the
        reconnect subscribes its group.
        """
        check_group_name(group)
        self._ensure_started()
        if self.add_local(group, member):
            await self._change_subscription(group, subscribe=True)
        # Right after start, the first connection subscribes to this group.
        await self._wait_for_first_attempt()
        await self._wait_for_subscription(group)

    async def group_discard(self, group: str, member: Member) -> None:
        """Remove `member` from `group`. Removing a member that is not there does nothing."""
        if self.discard_local(group, member):
            await self._change_subscription(group, subscribe=False)

    async def group_send(self, group: str, message: dict) -> int:
        """Deliver `message` to local members now and publish it for the other processes.

        Returns how many local members were reached, once Redis has accepted the message
        or failed to. While Redis is down the message reaches local members only.
        """
        check_group_name(group)
        payload = messages.encode(message)
        reached = self.deliver(group, payload)
        if self._closed or self._outage_started is not None:
            self.unpublished += 1
            return reached
        self._ensure_started()
        published = asyncio.get_running_loop().create_future()
        async with self._outbox_lock:
            await self._outbox.put((self.channel(group), self._envelope_header + payload, published))
        if self._publisher_stopped:
            # `close` emptied the outbox before this put went in.
            _settle(published, False)
        await published
        return reached

    async def health(self) -> str:
        """Return "ok" when Redis responds to PING and the subscriptions are in place, else "down"."""
        self._ensure_started()
        await self._wait_for_first_attempt()
        if not self._ready.is_set():
            return "down"
        try:
            await asyncio.wait_for(self._redis.ping(), HEALTH_TIMEOUT)
        except (*CONNECTION_ERRORS, asyncio.TimeoutError) as error:
            self._connection_failed(error if str(error) else "PING timed out")
            return "down"
        return "ok"

    async def close(self) -> None:
        """Publish what is queued (for up to a second), then leave Redis.

        Closing the subscription connection ends every subscription of this process.
        Later calls only touch the local map.
        """
        if self._closed:
            return
        self._closed = True
        if self._tasks and self._outage_started is None:
            try:
                await asyncio.wait_for(self._outbox.join(), CLOSE_FLUSH_TIMEOUT)
            except asyncio.TimeoutError:
                logger.warning("Closing with %d group sends not yet published to Redis", self._outbox.qsize())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        # Senders still waiting for sends the publisher never took stop waiting.
        self._publisher_stopped = True
        while not self._outbox.empty():
            _, _, published = self._outbox.get_nowait()
            _settle(published, False)
        await self._redis.aclose()

    def channel(self, group: str) -> str:
        return self.channel_prefix + group

    # --- Subscriptions ----------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._tasks or self._closed:
            return
        self._tasks = [
            asyncio.ensure_future(self._keep_subscriber_connected()),
            asyncio.ensure_future(self._publish_outbox()),
        ]

    async def _change_subscription(self, group: str, subscribe: bool) -> None:
        """Send SUBSCRIBE or UNSUBSCRIBE for `group` on the current connection, if there is one."""
        async with self._command_lock:
            pubsub = self._pubsub
            if pubsub is None:
                # Redis is down or not yet connected; the reconnect subscribes to every
                # group in the local map at that time.
                return
            reply = self._expect_reply()
            try:
                if subscribe:
                    self._confirmations[group] = reply
                    await pubsub.subscribe(self.channel(group))
                else:
                    self._confirmations.pop(group, None)
                    await pubsub.unsubscribe(self.channel(group))
            except (*CONNECTION_ERRORS, redis.exceptions.RedisError) as error:
                self._connection_failed(error)

    async def _wait_for_first_attempt(self) -> None:
        if self._first_attempt_done.is_set() or self._closed:
            return
        try:
            await asyncio.wait_for(self._first_attempt_done.wait(), CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            pass

    async def _wait_for_subscription(self, group: str) -> None:
        reply = self._confirmations.get(group)
        if reply is None or reply.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(reply), SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("Redis did not confirm the subscription to group %s within %s s; "
                           "sends from other processes may miss its members until it does",
                           group, SUBSCRIBE_TIMEOUT)

    def _expect_reply(self) -> asyncio.Future:
        reply = asyncio.get_running_loop().create_future()
        self._pending_replies.append(reply)
        return reply

    async def _keep_subscriber_connected(self) -> None:
        """Connect, subscribe, and read messages; after any failure, wait and start again."""
        while True:
            self._connection_broken.clear()
            pubsub = self._redis.pubsub()
            try:
                await pubsub.connect()
                await self._resubscribe(pubsub)
                await self._receive(pubsub)
            except CONNECTION_ERRORS as error:
                self._connection_failed(error)
            except Exception as error:
                logger.exception("Redis subscriber failed unexpectedly; reconnecting")
                self._connection_failed(error)
            finally:
                await self._drop_subscriber(pubsub)
            delay = self._reconnect_delay * random.uniform(0.8, 1.2)
            self._reconnect_delay = min(self._reconnect_delay * 2, RECONNECT_DELAY_MAX)
            logger.debug("Reconnecting to Redis in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _resubscribe(self, pubsub) -> None:
        """Subscribe a new connection to every group with local members, and make it current."""
        async with self._command_lock:
            groups = list(self._members)
            replies = [self._expect_reply() for _ in groups]
            self._confirmations = dict(zip(groups, replies))
            if groups:
                await pubsub.subscribe(*(self.channel(group) for group in groups))
            self._pubsub = pubsub
        if replies:
            # Replies arrive in order, so the last one confirms them all.
            replies[-1].add_done_callback(lambda reply: self._subscribed(pubsub, len(groups), reply))
        else:
            self._subscribed(pubsub, 0, None)

    def _subscribed(self, pubsub, group_count: int, reply: asyncio.Future | None) -> None:
        if pubsub is not self._pubsub or (reply is not None and not reply.result()):
            return
        self._reconnect_delay = RECONNECT_DELAY_MIN
        self._ready.set()
        self._first_attempt_done.set()
        if self._outage_started is not None:
            downtime = asyncio.get_running_loop().time() - self._outage_started
            logger.warning("Redis at %s is reachable again after %.1f s; subscribed to %d groups again. "
                           "%d group sends during the outage reached this process's sockets only",
                           redact_url(self.url), downtime, group_count,
                           self.unpublished - self._unpublished_before_outage)
            self._outage_started = None
        elif not self._connected_once:
            logger.info("Connected to Redis at %s for cross-process groups (origin %s)",
                        redact_url(self.url), self.origin)
        self._connected_once = True

    async def _receive(self, pubsub) -> None:
        """Handle messages until the connection fails or another task reports a failure."""
        while not self._connection_broken.is_set():
            message = await pubsub.get_message(timeout=READ_POLL_INTERVAL)
            if message is None:
                continue
            try:
                self._handle_message(message)
            except Exception:
                logger.exception("Handling a message from Redis failed; continuing with the next")

    def _handle_message(self, message: dict) -> None:
        kind = message["type"]
        if kind in ("subscribe", "unsubscribe"):
            if self._pending_replies:
                self._pending_replies.popleft().set_result(True)
            return
        if kind != "message":
            return
        channel = message["channel"].decode("utf-8", "replace")
        if not channel.startswith(self.channel_prefix):
            return
        payload = self._open_envelope(message["data"])
        if payload is not None:
            self.deliver(channel[len(self.channel_prefix):], payload)

    def _open_envelope(self, data: bytes) -> bytes | None:
        """Return the message in envelope `data`, or None when it is this process's own or unusable."""
        header_line, newline, payload = data.partition(b"\n")
        try:
            header = json.loads(header_line) if newline else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or "v" not in header:
            self.malformed += 1
            logger.warning("Skipped a Redis message that is not a taxi envelope (%d so far)", self.malformed)
            return None
        version = header["v"]
        if version != ENVELOPE_VERSION:
            self._count_unknown_version(version)
            return None
        if header.get("origin") == self.origin:
            # Delivered to local members when it was sent.
            return None
        return payload

    def _count_unknown_version(self, version) -> None:
        key = repr(version)[:20]
        self.unknown_versions[key] += 1
        count = self.unknown_versions[key]
        if count == 1 or count % UNKNOWN_VERSION_LOG_EVERY == 0:
            logger.warning("Skipped %d group sends in envelope version %s; this process reads version %d only",
                           count, key, ENVELOPE_VERSION)

    async def _drop_subscriber(self, pubsub) -> None:
        async with self._command_lock:
            if self._pubsub is pubsub:
                self._pubsub = None
            # Nothing will confirm these any more; waiting members stop waiting.
            while self._pending_replies:
                reply = self._pending_replies.popleft()
                if not reply.done():
                    reply.set_result(False)
            self._confirmations.clear()
        try:
            await pubsub.aclose()
        except Exception as error:
            logger.debug("Closing the Redis subscription connection failed: %s", error)

    def _connection_failed(self, error) -> None:
        """Record that Redis failed; the first failure of an outage is logged, later ones are not."""
        self._ready.clear()
        self._first_attempt_done.set()
        self._connection_broken.set()
        if self._outage_started is not None or self._closed:
            logger.debug("Redis still unreachable: %s", error)
            return
        self._outage_started = asyncio.get_running_loop().time()
        self._unpublished_before_outage = self.unpublished
        logger.error("Redis at %s is unreachable (%s): group sends reach this process's sockets only "
                     "until it is back; reconnecting with backoff", redact_url(self.url), error)

    # --- Publishing -------------------------------------------------------------------

    async def _publish_outbox(self) -> None:
        """Publish queued envelopes in order, in batches of whatever has queued up."""
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < PUBLISH_BATCH_SIZE and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            published = False
            try:
                published = await self._publish(batch)
            except Exception:
                logger.exception("Publishing %d group sends to Redis failed unexpectedly", len(batch))
            finally:
                # Also on cancellation at close, so no sender waits forever.
                for _, _, sender_waiting in batch:
                    _settle(sender_waiting, published)
                    self._outbox.task_done()

    async def _publish(self, batch: list[tuple[str, bytes, asyncio.Future]]) -> bool:
        """Publish `batch` in one pipeline; return whether Redis took all of it."""
        if self._outage_started is not None:
            self.unpublished += len(batch)
            return False
        try:
            async with self._redis.pipeline(transaction=False) as pipeline:
                for channel, envelope, _ in batch:
                    pipeline.publish(channel, envelope)
                await pipeline.execute()
        except CONNECTION_ERRORS as error:
            # Some of the batch may have been published; none is sent again, so no
            # socket gets a send twice.
            self._connection_failed(error)
            self.unpublished += len(batch)
            return False
        except redis.exceptions.RedisError as error:
            logger.error("Redis rejected a batch of %d group sends: %s", len(batch), error)
            return False
        return True


def _settle(future: asyncio.Future, result: bool) -> None:
    if not future.done():
        future.set_result(result)


def redact_url(url: str) -> str:
    """Return `url` without its user name and password, for logs."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return f"{parts.scheme}://{parts.path}"
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"
