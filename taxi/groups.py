"""Groups of sockets, and sending one message to every socket in a group.

`LocalGroups` keeps the group map in this process: it reaches only sockets connected to
this process, so with several processes behind a proxy a send made in one process does
not reach sockets held by another. `taxi.redis_groups.RedisGroups` extends it across
processes through Redis with the same coroutines (`group_add`, `group_discard`,
`group_send`, `health`, `close`), so callers do not change. `taxi.app.create_services`
picks one of the two from `REDIS_URL`.
"""

import logging
import re
from typing import Protocol

from taxi import messages

logger = logging.getLogger(__name__)

GROUP_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")


class Member(Protocol):
    """Anything a group can deliver to; the socket handler is the real one."""

    def send_payload(self, payload: bytes) -> None:
        """Queue `payload`, a JSON object encoded as UTF-8, as one text frame.

        Must not block and must not raise for a connection that has gone away.
        """


def check_group_name(group: str) -> str:
    """Return `group` if it is a valid group name, else raise ValueError saying what is allowed."""
    if not isinstance(group, str) or not GROUP_NAME_PATTERN.fullmatch(group):
        raise ValueError(
            f"invalid group name {group!r}: use 1 to 100 ASCII letters, digits, '.', '_' or '-'"
        )
    return group


class LocalGroups:
    """Group map of this process.

    `_members` maps a group name to the set of sockets in this process that are in it.
    The socket handler adds a socket to its groups when it opens and discards it from
    all of them when it closes, however it closes. A group whose last member leaves is
    deleted, so the map only contains groups that have members.
    """

    def __init__(self):
        self._members: dict[str, set[Member]] = {}

    async def group_add(self, group: str, member: Member) -> None:
        check_group_name(group)
        self.add_local(group, member)

    async def group_discard(self, group: str, member: Member) -> None:
        """Remove `member` from `group`. Removing a member that is not there does nothing."""
        self.discard_local(group, member)

    async def group_send(self, group: str, message: dict) -> int:
        """Deliver `message` to every member of `group`; return how many were reached."""
        check_group_name(group)
        # Encoded once here, not once per recipient.
        return self.deliver(group, messages.encode(message))

    async def health(self) -> str:
        """Return the state `/readyz` reports for the cross-process backend: none is in use."""
        return "disabled"

    async def close(self) -> None:
        """Release what the backend holds; the in-process map holds nothing outside itself."""

    def add_local(self, group: str, member: Member) -> bool:
        """Add `member` to the local map; return True when that created the group."""
        members = self._members.get(group)
        if members is None:
            self._members[group] = {member}
            return True
        members.add(member)
        return False

    def discard_local(self, group: str, member: Member) -> bool:
        """Remove `member` from the local map; return True when that emptied the group."""
        members = self._members.get(group)
        if members is None:
            return False
        members.discard(member)
        if members:
            return False
        del self._members[group]
        return True

    def deliver(self, group: str, payload: bytes) -> int:
        """Send an encoded message to the local members of `group`.

        Works on a copy of the member set, so sockets joining or leaving while the
        frames are queued (a close callback can run inside a send) cannot break the loop.
        A member that fails is logged and skipped; the others still get the message.
        """
        members = self._members.get(group)
        if not members:
            return 0
        reached = 0
        for member in tuple(members):
            try:
                member.send_payload(payload)
            except Exception:
                logger.exception("Group %s: delivery to one member failed; continuing with the rest", group)
            else:
                reached += 1
        return reached

    def members(self, group: str) -> frozenset:
        return frozenset(self._members.get(group, ()))

    def group_names(self) -> list[str]:
        return sorted(self._members)
