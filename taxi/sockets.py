"""The open sockets of this process, indexed by user.

`OpenSockets` serves three callers: shutdown closes every socket, the handshake
counts a user's sockets against `MAX_SOCKETS_PER_USER`, and the inactive-user watcher
closes all sockets of a user. The socket handler adds a socket when it opens and
discards it when it closes, however it closes. Like the in-process group map, it only
covers this process.
"""

from collections.abc import Iterator


class OpenSockets:
    """A set of sockets that also maps each user id to that user's sockets.

    Members need a `user` attribute with an `id`. A user whose last socket is
    discarded is deleted from the map, so `user_ids()` only lists connected users.
    """

    def __init__(self):
        self._all: set = set()
        self._by_user: dict[str, set] = {}

    def add(self, socket) -> None:
        self._all.add(socket)
        self._by_user.setdefault(socket.user.id, set()).add(socket)

    def discard(self, socket) -> None:
        """Remove `socket`; removing one that is not there does nothing."""
        self._all.discard(socket)
        user_sockets = self._by_user.get(socket.user.id)
        if user_sockets is None:
            return
        user_sockets.discard(socket)
        if not user_sockets:
            del self._by_user[socket.user.id]

    def of_user(self, user_id: str) -> frozenset:
        return frozenset(self._by_user.get(user_id, ()))

    def count_of_user(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def user_ids(self) -> list[str]:
        return list(self._by_user)

    def __iter__(self) -> Iterator:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, socket) -> bool:
        return socket in self._all

    def __eq__(self, other) -> bool:
        # Compares as the plain set of sockets, so `sockets == set()` reads as it would for a set.
        if isinstance(other, OpenSockets):
            return self._all == other._all
        if isinstance(other, (set, frozenset)):
            return self._all == other
        return NotImplemented

    __hash__ = None
