"""Assembly of the server: the services every handler uses, and the Tornado application."""

import collections
import dataclasses
import logging

import tornado.web

from settings import Settings
from taxi import api, database, logs
from taxi.auth import Authenticator
from taxi.groups import LocalGroups
from taxi.heartbeat import Heartbeat
from taxi.redis_groups import RedisGroups
from taxi.socket_handler import TaxiSocket
from taxi.sockets import OpenSockets
from taxi.users import UserStore
from taxi.watcher import InactiveUserWatcher
from taxi.web import NotFoundHandler

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    settings: Settings
    client: object
    users: UserStore
    authenticator: Authenticator
    groups: LocalGroups
    # Sends every socket's pings; `TaxiProtocol` adds and removes itself.
    heartbeat: Heartbeat
    # Every open socket of this process, by user; `TaxiSocket` adds and removes itself.
    sockets: OpenSockets = dataclasses.field(default_factory=OpenSockets)
    watcher: InactiveUserWatcher | None = None
    # Events counted since start, such as "slow_consumers_closed"; logged at shutdown.
    counters: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def __post_init__(self):
        if self.watcher is None:
            self.watcher = InactiveUserWatcher(self.users, self.sockets)

    async def close(self) -> None:
        await self.watcher.close()
        self.heartbeat.close()
        await self.groups.close()
        self.client.close()


def create_services(settings: Settings) -> Services:
    """Create the services; call it inside the running event loop, since the Motor client binds to it."""
    client = database.connect(settings.mongodb_uri)
    users = UserStore(client[settings.database_name])
    if settings.redis_url:
        groups = RedisGroups(settings.redis_url)
    else:
        groups = LocalGroups()
    return Services(
        settings=settings,
        client=client,
        users=users,
        authenticator=Authenticator(users, settings.secret_key, settings.jwt_leeway, settings.user_cache_seconds),
        groups=groups,
        heartbeat=Heartbeat(settings.ping_interval, settings.ping_timeout),
    )


async def prepare_database(services: Services) -> None:
    """Create the indexes; raises `DatabaseUnavailable` when MongoDB is not responding."""
    await services.users.ensure_indexes()


def make_app(services: Services) -> tornado.web.Application:
    context = {"services": services}
    return tornado.web.Application(
        [
            (r"/taxi/", TaxiSocket, context),
            (r"/api/sign_up/", api.SignUpHandler, context),
            (r"/api/log_in/", api.LogInHandler, context),
            (r"/api/token/refresh/", api.RefreshHandler, context),
            (r"/api/groups/([^/]*)/send/", api.GroupSendHandler, context),
            (r"/healthz", api.HealthHandler),
            (r"/readyz", api.ReadyHandler, context),
        ],
        default_handler_class=NotFoundHandler,
        log_function=logs.log_request,
        websocket_max_message_size=services.settings.max_message_size,
        # Tornado reads None as "no pings"; PING_INTERVAL=0 means the same.
        websocket_ping_interval=services.settings.ping_interval or None,
        websocket_ping_timeout=services.settings.ping_timeout,
    )
