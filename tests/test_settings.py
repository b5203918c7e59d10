"""Settings from the environment, and how the server stops on a bad value."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import settings as settings_module

ROOT = Path(__file__).resolve().parent.parent
KEY = "k" * 40


def load(tmp_path, **variables):
    return settings_module.load(variables, secret_key_file=tmp_path / "secret_key")


def test_defaults(tmp_path):
    settings = load(tmp_path, SECRET_KEY=KEY)
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.mongodb_uri == "mongodb://127.0.0.1:27017/taxi"
    assert settings.database_name == "taxi"
    assert settings.access_token_lifetime == 300
    assert settings.refresh_token_lifetime == 86400
    assert settings.jwt_leeway == 10
    assert settings.redis_url is None
    assert settings.api_key is None
    assert settings.allowed_origins is None
    assert settings.max_message_size == 65536
    assert settings.max_send_backlog == 1048576
    assert settings.log_level == "info"
    assert settings.event_loop == "asyncio"
    assert settings.user_cache_seconds == 0


def test_values_are_parsed(tmp_path):
    settings = load(
        tmp_path,
        SECRET_KEY=KEY,
        HOST="0.0.0.0",
        PORT="9000",
        MONGODB_URI="mongodb://db.internal:27017/rides",
        ACCESS_TOKEN_LIFETIME="60",
        JWT_LEEWAY="0",
        REDIS_URL="redis://127.0.0.1:6379/0",
        API_KEY="publisher",
        ALLOWED_ORIGINS="https://app.example, http://localhost:3000",
        LOG_LEVEL="DEBUG",
        USER_CACHE_SECONDS="2.5",
    )
    assert settings.port == 9000
    assert settings.database_name == "rides"
    assert settings.access_token_lifetime == 60
    assert settings.jwt_leeway == 0
    assert settings.allowed_origins == ("https://app.example:443", "http://localhost:3000")
    assert settings.log_level == "debug"
    assert settings.user_cache_seconds == 2.5


@pytest.mark.parametrize("variable, value", [
    ("PORT", "eighty"),
    ("PORT", "70000"),
    ("PORT", "0"),
    ("MONGODB_URI", "postgres://127.0.0.1/taxi"),
    ("MONGODB_URI", "mongodb://127.0.0.1:27017"),
    ("ACCESS_TOKEN_LIFETIME", "-5"),
    ("REFRESH_TOKEN_LIFETIME", "1.5"),
    ("JWT_LEEWAY", "ten"),
    ("REDIS_URL", "localhost:6379"),
    ("ALLOWED_ORIGINS", "app.example"),
    ("ALLOWED_ORIGINS", "https://app.example/path"),
    ("MAX_MESSAGE_SIZE", "0"),
    ("MAX_SEND_BACKLOG", "lots"),
    ("LOG_LEVEL", "verbose"),
    ("EVENT_LOOP", "trio"),
    ("USER_CACHE_SECONDS", "-1"),
    ("USER_CACHE_SECONDS", "6"),
    ("SECRET_KEY", "short"),
])
def test_invalid_value_names_the_variable(tmp_path, variable, value):
    variables = {"SECRET_KEY": KEY, variable: value}
    with pytest.raises(settings_module.SettingsError) as caught:
        load(tmp_path, **variables)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: expected ")


def test_uvloop_is_accepted_when_installed(tmp_path):
    pytest.importorskip("uvloop")
    assert load(tmp_path, SECRET_KEY=KEY, EVENT_LOOP="UVLOOP").event_loop == "uvloop"


def test_uvloop_without_the_package_is_rejected(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import uvloop` raise ImportError.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(settings_module.SettingsError) as caught:
        load(tmp_path, SECRET_KEY=KEY, EVENT_LOOP="uvloop")
    assert caught.value.variable == "EVENT_LOOP"
    assert "pip install uvloop" in str(caught.value)


def test_short_secret_key_is_not_echoed(tmp_path):
    with pytest.raises(settings_module.SettingsError) as caught:
        load(tmp_path, SECRET_KEY="hunter2")
    assert "hunter2" not in str(caught.value)


def test_development_key_is_created_once_with_mode_0600(tmp_path):
    first = load(tmp_path)
    key_file = tmp_path / "secret_key"
    assert first.secret_key_generated
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.secret_key) >= 32
    assert load(tmp_path).secret_key == first.secret_key


def test_set_secret_key_wins_over_the_file(tmp_path):
    load(tmp_path)
    settings = load(tmp_path, SECRET_KEY=KEY)
    assert settings.secret_key == KEY
    assert not settings.secret_key_generated


def test_server_stops_with_status_2_and_one_line(tmp_path):
    env = {**os.environ, "PORT": "eighty", "SECRET_KEY": KEY}
    result = subprocess.run(
        [sys.executable, "server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PORT" in lines[0]
    assert "Traceback" not in result.stderr
