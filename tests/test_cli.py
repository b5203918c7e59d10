"""The operator commands `python -m taxi createuser | token | deactivate`."""

import os
import subprocess
import sys
from pathlib import Path

import pymongo
import pytest

from conftest import SECRET_KEY
from settings import database_name_from_uri
from taxi import tokens

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def users_collection(environment):
    client = pymongo.MongoClient(environment["MONGODB_URI"], serverSelectionTimeoutMS=5000)
    database_name = database_name_from_uri(environment["MONGODB_URI"])
    yield client[database_name]["users"]
    client.drop_database(database_name)
    client.close()


@pytest.fixture
def taxi_command(environment):
    def run(*arguments, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "taxi", *arguments],
            cwd=ROOT,
            env={**os.environ, **environment},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def test_createuser_with_password_option(taxi_command, users_collection):
    result = taxi_command("createuser", "Dana@example.com", "--password", "long-enough", "--group", "driver")
    assert result.returncode == 0, result.stderr
    document = users_collection.find_one({"username": "Dana@example.com"})
    assert document["group"] == "driver"
    assert document["is_active"] is True
    assert document["password"].startswith("$argon2")
    assert "long-enough" not in result.stdout + result.stderr


def test_createuser_reads_password_from_stdin(taxi_command, users_collection):
    result = taxi_command("createuser", "piped@example.com", stdin="from-a-pipe\n")
    assert result.returncode == 0, result.stderr
    login = taxi_command("token", "piped@example.com")
    assert login.returncode == 0
    assert users_collection.find_one({"username": "piped@example.com"})["group"] == "rider"


def test_createuser_inactive(taxi_command, users_collection):
    assert taxi_command("createuser", "idle@example.com", "--password", "long-enough", "--inactive").returncode == 0
    assert users_collection.find_one({"username": "idle@example.com"})["is_active"] is False


def test_createuser_duplicate_ignoring_case(taxi_command, users_collection):
    assert taxi_command("createuser", "twin@example.com", "--password", "long-enough").returncode == 0
    result = taxi_command("createuser", "TWIN@example.com", "--password", "long-enough")
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert users_collection.count_documents({}) == 1


@pytest.mark.parametrize("arguments, message", [
    (("createuser", "ok@example.com", "--password", "short"), "too short"),
    (("createuser", "bad name", "--password", "long-enough"), "valid username"),
])
def test_createuser_invalid_input(taxi_command, users_collection, arguments, message):
    result = taxi_command(*arguments)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_createuser_without_password_on_empty_stdin(taxi_command, users_collection):
    result = taxi_command("createuser", "nopass@example.com", stdin="")
    assert result.returncode == 1
    assert "--password" in result.stderr


def test_token_prints_a_valid_access_token(taxi_command, users_collection):
    taxi_command("createuser", "tok@example.com", "--password", "long-enough")
    result = taxi_command("token", "TOK@example.com")
    assert result.returncode == 0, result.stderr
    claims = tokens.decode(result.stdout.strip(), SECRET_KEY, tokens.ACCESS, 0)
    assert claims.user_id == str(users_collection.find_one({"username": "tok@example.com"})["_id"])


def test_token_for_unknown_user_fails(taxi_command, users_collection):
    result = taxi_command("token", "ghost@example.com")
    assert result.returncode == 1
    assert "no user named" in result.stderr
    assert result.stdout == ""


def test_token_for_inactive_user_fails(taxi_command, users_collection):
    taxi_command("createuser", "sleepy@example.com", "--password", "long-enough", "--inactive")
    result = taxi_command("token", "sleepy@example.com")
    assert result.returncode == 1
    assert "inactive" in result.stderr
    assert result.stdout == ""


def test_deactivate_sets_is_active_false(taxi_command, users_collection):
    taxi_command("createuser", "leaving@example.com", "--password", "long-enough")
    result = taxi_command("deactivate", "Leaving@example.com")
    assert result.returncode == 0, result.stderr
    assert users_collection.find_one({"username": "leaving@example.com"})["is_active"] is False


def test_deactivate_unknown_user_fails(taxi_command, users_collection):
    result = taxi_command("deactivate", "ghost@example.com")
    assert result.returncode == 1
    assert "no user named" in result.stderr


def test_unreachable_database_is_a_clear_error(taxi_command, environment):
    sys.path.insert(0, str(ROOT / "scripts"))
    import devdb

    environment["MONGODB_URI"] = f"mongodb://operator:s3cret-pass@127.0.0.1:{devdb.free_port()}/taxi"
    result = taxi_command("token", "anyone@example.com")
    assert result.returncode == 1
    assert "not responding" in result.stderr
    assert "s3cret-pass" not in result.stderr
    assert "Traceback" not in result.stderr
