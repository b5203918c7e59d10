"""The per-socket message rate limit: a token bucket, and a second one for abuse.

Every text frame a client sends takes one token from a bucket of `MESSAGE_BURST`
tokens that refills at `MAX_MESSAGES_PER_SECOND`. A frame that finds the bucket empty
is rejected (the client gets a `rate_limited` error) and takes one token from a
second bucket of the same size that refills at `MESSAGE_BURST` per
`ABUSE_REFILL_SECONDS`. A client that empties that one as well keeps sending far over
the limit, and its socket is closed.
"""

import enum
import time
from typing import Callable

# A client sending steadily over the limit is closed once more than MESSAGE_BURST of
# its frames were rejected faster than MESSAGE_BURST per this many seconds.
ABUSE_REFILL_SECONDS = 10.0


class TokenBucket:
    """`capacity` tokens, refilled continuously at `rate` tokens per second."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self.updated = clock()

    def take(self) -> bool:
        """Take one token; return False, taking nothing, when the bucket is empty."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    CLOSE = "close"


class MessageRateLimiter:
    """Decides, frame by frame, whether a socket's client stays within its message rate."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        # A rate of 0 means no limit.
        self.enabled = rate > 0
        self.messages = TokenBucket(rate, burst, clock)
        self.rejections = TokenBucket(burst / ABUSE_REFILL_SECONDS, burst, clock)

    def check(self) -> Verdict:
        """Count one incoming frame and return what to do with it."""
        if not self.enabled or self.messages.take():
            return Verdict.ACCEPT
        if self.rejections.take():
            return Verdict.REJECT
        return Verdict.CLOSE
