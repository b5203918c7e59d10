"""Operator commands: `python -m taxi createuser | token | deactivate`.

They read the same environment as the server (`MONGODB_URI`, `SECRET_KEY`, ...). Errors
go to standard error with exit status 1; a bad environment exits with 2, as the server does.
"""

import argparse
import asyncio
import contextlib
import getpass
import sys
from urllib.parse import urlsplit, urlunsplit

import settings as settings_module
from taxi import database, passwords, tokens
from taxi.database import DatabaseUnavailable
from taxi.users import GROUPS, RIDER, UserStore, UsernameTaken, password_problem, username_problem


class CommandError(Exception):
    """A failure to report to the operator as one line, with exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m taxi", description="Manage taxi users.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser("createuser", help="create a user")
    create.add_argument("username")
    create.add_argument("--password", help="the password (default: prompt twice on a terminal, "
                                           "else read one line from standard input)")
    create.add_argument("--group", choices=GROUPS, default=RIDER, help="rider or driver (default: rider)")
    create.add_argument("--inactive", action="store_true", help="create the user with is_active false")

    token = commands.add_parser("token", help="print a fresh access token for a user")
    token.add_argument("username")

    deactivate = commands.add_parser("deactivate", help="set is_active to false; their open sockets close with 4003")
    deactivate.add_argument("username")
    return parser


def main(argv=None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as error:
        print(f"taxi: invalid configuration: {error}", file=sys.stderr)
        return 2
    try:
        if arguments.command == "createuser":
            password = arguments.password if arguments.password is not None else read_password()
            asyncio.run(create_user(settings, arguments.username, password, arguments.group, arguments.inactive))
        elif arguments.command == "token":
            print(asyncio.run(access_token(settings, arguments.username)))
        elif arguments.command == "deactivate":
            asyncio.run(deactivate(settings, arguments.username))
    except CommandError as error:
        print(f"taxi: {error}", file=sys.stderr)
        return 1
    except DatabaseUnavailable:
        print(f"taxi: MongoDB at {redact_uri(settings.mongodb_uri)} is not responding; is it running "
              "and is MONGODB_URI right?", file=sys.stderr)
        return 1
    return 0


def redact_uri(uri: str) -> str:
    """Return `uri` without its user name and password, for messages."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def read_password() -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise CommandError("the two passwords differ")
        return password
    line = sys.stdin.readline()
    if not line:
        raise CommandError("no password on standard input: pass --password or pipe one line")
    return line.rstrip("\r\n")


async def create_user(settings, username: str, password: str, group: str, inactive: bool) -> None:
    problem = username_problem(username) or password_problem(password)
    if problem:
        raise CommandError(problem)
    async with user_store(settings) as users:
        await users.ensure_indexes()
        password_hash = await passwords.hash_password(password)
        try:
            user = await users.create(username, password_hash, "", "", group, is_active=not inactive)
        except UsernameTaken:
            raise CommandError(f"a user named {username!r} already exists (usernames ignore case)") from None
    state = "inactive" if inactive else "active"
    print(f"Created {state} {group} {user.username!r} with id {user.id}")


async def access_token(settings, username: str) -> str:
    async with user_store(settings) as users:
        user = await users.find_by_username(username)
    if user is None:
        raise CommandError(f"no user named {username!r}")
    if not user.is_active:
        raise CommandError(f"user {username!r} is inactive; no token was issued")
    return tokens.mint(settings.secret_key, tokens.ACCESS, user.id, settings.access_token_lifetime)


async def deactivate(settings, username: str) -> None:
    async with user_store(settings) as users:
        user = await users.set_active(username, False)
    if user is None:
        raise CommandError(f"no user named {username!r}")
    print(f"Deactivated {user.username!r} (id {user.id}); their open sockets close within 5 seconds")


@contextlib.asynccontextmanager
async def user_store(settings):
    """Yield a `UserStore` on a client that is closed when the command ends."""
    client = database.connect(settings.mongodb_uri)
    try:
        yield UserStore(client[settings.database_name])
    finally:
        client.close()
