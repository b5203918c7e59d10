"""Assembly of the server: the services every handler uses, and the Tornado application."""

import dataclasses
import logging

import tornado.web

from settings import Settings
from taxi import api, database, logs
from taxi.auth import Authenticator
from taxi.database import DatabaseUnavailable
from taxi.groups import LocalGroups
from taxi.socket_handler import TaxiSocket
from taxi.users import UserStore
from taxi.web import NotFoundHandler

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    settings: Settings
    client: object
    users: UserStore
    authenticator: Authenticator
    groups: LocalGroups
    # Every open socket of this process, for shutdown; `TaxiSocket` adds and removes itself.
    sockets: set = dataclasses.field(default_factory=set)

    async def close(self) -> None:
        await self.groups.close()
        self.client.close()


def create_services(settings: Settings) -> Services:
    """Create the services; call it inside the running event loop, since the Motor client binds to it."""
    client = database.connect(settings.mongodb_uri)
    users = UserStore(client[settings.database_name])
    return Services(
        settings=settings,
        client=client,
        users=users,
        authenticator=Authenticator(users, settings.secret_key, settings.jwt_leeway),
        groups=LocalGroups(),
    )


async def prepare_database(services: Services) -> bool:
    """Create the indexes; return False (and log) when MongoDB is not answering yet."""
    try:
        await services.users.ensure_indexes()
    except DatabaseUnavailable as error:
        logger.error("MongoDB is not answering; the username index will be created once it does: %s", error)
        return False
    return True


def make_app(services: Services) -> tornado.web.Application:
    context = {"services": services}
    return tornado.web.Application(
        [
            (r"/taxi/", TaxiSocket, context),
            (r"/api/sign_up/", api.SignUpHandler, context),
            (r"/api/log_in/", api.LogInHandler, context),
            (r"/api/token/refresh/", api.RefreshHandler, context),
            (r"/api/groups/([^/]+)/send/", api.GroupSendHandler, context),
            (r"/healthz", api.HealthHandler),
            (r"/readyz", api.ReadyHandler, context),
        ],
        default_handler_class=NotFoundHandler,
        log_function=logs.log_request,
        websocket_max_message_size=services.settings.max_message_size,
    )
