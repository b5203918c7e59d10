"""Rider and driver accounts in the MongoDB `users` collection.

Usernames keep the case they were registered with but are unique case-insensitively.
MongoDB would do that with a collation index; FerretDB (used for development and tests)
does not implement index collations, so each document also stores `username_key`, the
username case-folded, under a unique index. That works on both servers and stays true under
concurrent sign-ups, because the database enforces it, not a lookup made beforehand.
"""

import contextlib
import dataclasses
import datetime
import re
import unicodedata

import pymongo
import pymongo.errors
from bson import ObjectId

from taxi.database import UNAVAILABLE_ERRORS, DatabaseUnavailable

RIDER = "rider"
DRIVER = "driver"
GROUPS = (RIDER, DRIVER)

MAX_USERNAME_LENGTH = 150
MAX_NAME_LENGTH = 150
MIN_PASSWORD_LENGTH = 8
# Argon2 accepts any length, but hashing a megabyte per log-in attempt is wasted CPU.
MAX_PASSWORD_LENGTH = 1024
USERNAME_PATTERN = re.compile(r"[\w.@+-]+")

USERNAME_INDEX = "username_key_unique"


def username_problem(username: str) -> str | None:
    """Return why `username` cannot be registered, or None when it can."""
    if len(username) > MAX_USERNAME_LENGTH:
        return f"Ensure this field has no more than {MAX_USERNAME_LENGTH} characters."
    if not USERNAME_PATTERN.fullmatch(username):
        return "Enter a valid username: letters, digits and the characters @ . + - _ only."
    return None


def password_problem(password: str) -> str | None:
    """Return why `password` is not acceptable, or None when it is."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"This password is too short. It must contain at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Ensure this field has no more than {MAX_PASSWORD_LENGTH} characters."
    return None


class UsernameTaken(Exception):
    """Another user already has this username, compared case-insensitively."""


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    username: str
    first_name: str
    last_name: str
    group: str
    is_active: bool
    date_joined: datetime.datetime
    password_hash: str = dataclasses.field(repr=False, default="")

    def public(self) -> dict:
        """Return the fields a client may see (never the password hash)."""
        return {
            "id": self.id,
            "username": self.username,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "group": self.group,
        }


def username_key(username: str) -> str:
    """Return the form of `username` that uniqueness and log-in compare."""
    return unicodedata.normalize("NFKC", username).casefold()


class UserStore:
    """Reads and writes users. Every method raises `DatabaseUnavailable` when MongoDB does not respond."""

    def __init__(self, database):
        self.collection = database["users"]

    async def ensure_indexes(self) -> None:
        """Create the unique username index; safe to call on every start."""
        async with _unavailable_as_error():
            await self.collection.create_index(
                [("username_key", pymongo.ASCENDING)], unique=True, name=USERNAME_INDEX
            )

    async def create(self, username, password_hash, first_name, last_name, group, is_active=True) -> User:
        """Insert a user; raises `UsernameTaken` when the username is in use."""
        document = {
            "username": username,
            "username_key": username_key(username),
            "password": password_hash,
            "first_name": first_name,
            "last_name": last_name,
            "group": group,
            "is_active": is_active,
            "date_joined": datetime.datetime.now(datetime.timezone.utc),
        }
        async with _unavailable_as_error():
            try:
                result = await self.collection.insert_one(document)
            except pymongo.errors.DuplicateKeyError:
                raise UsernameTaken(username) from None
        document["_id"] = result.inserted_id
        return _user_from_document(document)

    async def get(self, user_id: str) -> User | None:
        """Return the user with this 24-character hex id, or None."""
        if not ObjectId.is_valid(user_id):
            return None
        async with _unavailable_as_error():
            document = await self.collection.find_one({"_id": ObjectId(user_id)})
        return None if document is None else _user_from_document(document)

    async def find_by_username(self, username: str) -> User | None:
        """Return the user whose username matches case-insensitively, or None."""
        async with _unavailable_as_error():
            document = await self.collection.find_one({"username_key": username_key(username)})
        return None if document is None else _user_from_document(document)

    async def set_active(self, username: str, is_active: bool) -> User | None:
        """Set `is_active` for the user with this username; return the updated user, or None if unknown."""
        async with _unavailable_as_error():
            document = await self.collection.find_one_and_update(
                {"username_key": username_key(username)},
                {"$set": {"is_active": is_active}},
                return_document=pymongo.ReturnDocument.AFTER,
            )
        return None if document is None else _user_from_document(document)

    async def active_among(self, user_ids: list[str]) -> set[str]:
        """Return the ids in `user_ids` whose users exist and have `is_active` true.

        One `$in` query; callers split long lists into chunks.
        """
        object_ids = [ObjectId(user_id) for user_id in user_ids if ObjectId.is_valid(user_id)]
        if not object_ids:
            return set()
        async with _unavailable_as_error():
            cursor = self.collection.find({"_id": {"$in": object_ids}, "is_active": True}, {"_id": 1})
            documents = await cursor.to_list(length=None)
        return {str(document["_id"]) for document in documents}

    async def ping(self) -> None:
        async with _unavailable_as_error():
            await self.collection.database.command("ping")


def _user_from_document(document: dict) -> User:
    return User(
        id=str(document["_id"]),
        username=document["username"],
        first_name=document.get("first_name", ""),
        last_name=document.get("last_name", ""),
        group=document.get("group", RIDER),
        # A document edited by hand without the field is treated as inactive, not active.
        is_active=document.get("is_active") is True,
        date_joined=document.get("date_joined"),
        password_hash=document.get("password", ""),
    )


@contextlib.asynccontextmanager
async def _unavailable_as_error():
    """Turn the driver's connection and timeout errors into `DatabaseUnavailable`."""
    try:
        yield
    except UNAVAILABLE_ERRORS as error:
        raise DatabaseUnavailable(str(error)) from error
