"""Configuration of the taxi server, read from the environment once at start.

Every variable is parsed and checked here, so a bad value stops the server before it
listens instead of surfacing later as a confusing failure. `load()` returns a frozen
`Settings`; a value that cannot be parsed raises `SettingsError`, which names the
variable and the form it expects.
"""

import dataclasses
import logging
import math
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY_FILE = BASE_DIR / "var" / "secret_key"

# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_KEY_BYTES = 32
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EVENT_LOOPS = ("asyncio", "uvloop")
# A deactivated user's sockets must close within 5 seconds, so a cached lookup may
# not let them open new ones for longer than that.
MAX_USER_CACHE_SECONDS = 5.0


class SettingsError(Exception):
    """An environment variable contains a value the server cannot use."""

    def __init__(self, variable: str, expected: str, value: str):
        self.variable = variable
        super().__init__(f"{variable}: expected {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    mongodb_uri: str = "mongodb://127.0.0.1:27017/taxi"
    # Kept out of repr() so that logging the settings cannot print the key.
    secret_key: str = dataclasses.field(default="", repr=False)
    # True when the key came from the development key file, not from SECRET_KEY.
    secret_key_generated: bool = False
    access_token_lifetime: int = 300
    refresh_token_lifetime: int = 86400
    jwt_leeway: int = 10
    redis_url: str | None = None
    api_key: str | None = None
    # None means "only the server's own host"; a tuple holding "*" allows any origin.
    allowed_origins: tuple[str, ...] | None = None
    max_message_size: int = 65536
    max_send_backlog: int = 1048576
    # Token bucket per socket: refills at max_messages_per_second (0 turns the limit
    # off) and contains at most message_burst messages.
    max_messages_per_second: float = 20.0
    message_burst: int = 40
    # Per process; 0 turns the limit off.
    max_sockets_per_user: int = 10
    # Seconds. A ping_interval of 0 turns pings off; a ping_timeout of 0 keeps the
    # pings but never closes for a missing pong. PING_TIMEOUT defaults to PING_INTERVAL.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    log_level: str = "info"
    # "uvloop" needs the uvloop package, which requirements.txt does not install.
    event_loop: str = "asyncio"
    # Seconds a handshake may reuse an earlier lookup of an active user; 0 looks up every time.
    user_cache_seconds: float = 0.0

    @property
    def database_name(self) -> str:
        return database_name_from_uri(self.mongodb_uri)


def load(environ=None, secret_key_file: Path = SECRET_KEY_FILE) -> Settings:
    """Build `Settings` from `environ` (default: `os.environ`).

    Raises `SettingsError` for the first variable that cannot be parsed.
    """
    if environ is None:
        environ = os.environ
    values = {}

    values["host"] = _text(environ, "HOST", Settings.host)
    values["port"] = _port(environ, "PORT", Settings.port)
    values["mongodb_uri"] = _mongodb_uri(environ, "MONGODB_URI", Settings.mongodb_uri)

    values["access_token_lifetime"] = _integer(environ, "ACCESS_TOKEN_LIFETIME", 300, minimum=1)
    values["refresh_token_lifetime"] = _integer(environ, "REFRESH_TOKEN_LIFETIME", 86400, minimum=1)
    values["jwt_leeway"] = _integer(environ, "JWT_LEEWAY", 10, minimum=0)
    values["redis_url"] = _redis_url(environ, "REDIS_URL")
    values["api_key"] = _optional_text(environ, "API_KEY")
    values["allowed_origins"] = _origins(environ, "ALLOWED_ORIGINS")
    values["max_message_size"] = _integer(environ, "MAX_MESSAGE_SIZE", 65536, minimum=1)
    values["max_send_backlog"] = _integer(environ, "MAX_SEND_BACKLOG", 1048576, minimum=1)
    values["max_messages_per_second"] = _number(environ, "MAX_MESSAGES_PER_SECOND", 20.0)
    values["message_burst"] = _integer(environ, "MESSAGE_BURST", 40, minimum=1)
    values["max_sockets_per_user"] = _integer(environ, "MAX_SOCKETS_PER_USER", 10, minimum=0)
    values["ping_interval"] = _number(environ, "PING_INTERVAL", 20.0)
    values["ping_timeout"] = _ping_timeout(environ, "PING_TIMEOUT", values["ping_interval"])
    values["log_level"] = _choice(environ, "LOG_LEVEL", "info", LOG_LEVELS)
    values["event_loop"] = _event_loop(environ, "EVENT_LOOP")
    values["user_cache_seconds"] = _number(environ, "USER_CACHE_SECONDS", 0.0)
    if values["user_cache_seconds"] > MAX_USER_CACHE_SECONDS:
        raise SettingsError("USER_CACHE_SECONDS", f"a number of seconds from 0 to {MAX_USER_CACHE_SECONDS:g}",
                            _raw(environ, "USER_CACHE_SECONDS"))

    secret_key = _optional_text(environ, "SECRET_KEY")
    if secret_key is None:
        values["secret_key"] = read_or_create_secret_key(secret_key_file)
        values["secret_key_generated"] = True
    elif len(secret_key.encode("utf-8")) < MIN_SECRET_KEY_BYTES:
        raise SettingsError("SECRET_KEY", f"at least {MIN_SECRET_KEY_BYTES} bytes (HS256 needs a 256-bit key)",
                            f"<{len(secret_key.encode('utf-8'))} bytes, not shown>")
    else:
        values["secret_key"] = secret_key

    return Settings(**values)


def read_or_create_secret_key(path: Path) -> str:
    """Return the development key stored at `path`, creating it (mode 0600) on first use.

    `O_EXCL` makes two processes starting at once agree on one key: the loser of the
    race reads the winner's file instead of overwriting it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if not key:
            raise SettingsError("SECRET_KEY", f"a key in {path} (the file is empty; delete it)", "")
        return key
    key = secrets.token_urlsafe(48)
    with os.fdopen(descriptor, "w", encoding="ascii") as key_file:
        key_file.write(key + "\n")
    return key


def database_name_from_uri(uri: str) -> str:
    return urlsplit(uri).path.lstrip("/").split("/")[0]


def _raw(environ, name):
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _text(environ, name, default):
    value = _raw(environ, name)
    return default if value is None else value


def _optional_text(environ, name):
    return _raw(environ, name)


def _integer(environ, name, default, minimum):
    value = _raw(environ, name)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise SettingsError(name, f"a whole number of at least {minimum}", value) from None
    if number < minimum:
        raise SettingsError(name, f"a whole number of at least {minimum}", value)
    return number


def _number(environ, name, default):
    """Parse a non-negative decimal number, such as a rate or a number of seconds."""
    value = _raw(environ, name)
    if value is None:
        return default
    expected = "a number of at least 0, such as 20 or 0.5"
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(name, expected, value) from None
    # float() also accepts "nan" and "inf", which no rate or interval can use.
    if not math.isfinite(number) or number < 0:
        raise SettingsError(name, expected, value)
    return number


def _ping_timeout(environ, name, ping_interval):
    timeout = _number(environ, name, ping_interval)
    if timeout > ping_interval:
        # Tornado would cut a longer timeout down to the interval with only a warning.
        raise SettingsError(name, f"a number of seconds no larger than PING_INTERVAL ({ping_interval:g})",
                            _raw(environ, name))
    return timeout


def _port(environ, name, default):
    port = _integer(environ, name, default, minimum=1)
    if port > 65535:
        raise SettingsError(name, "a TCP port between 1 and 65535", str(port))
    return port


def _choice(environ, name, default, choices):
    value = _raw(environ, name)
    if value is None:
        return default
    if value.lower() not in choices:
        raise SettingsError(name, "one of " + ", ".join(choices), value)
    return value.lower()


def _event_loop(environ, name):
    loop = _choice(environ, name, "asyncio", EVENT_LOOPS)
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise SettingsError(name, "asyncio, or uvloop after `pip install uvloop`", _raw(environ, name)) from None
    return loop


def _mongodb_uri(environ, name, default):
    value = _text(environ, name, default)
    parts = urlsplit(value)
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise SettingsError(name, "a URI such as mongodb://127.0.0.1:27017/taxi", value)
    if not database_name_from_uri(value):
        raise SettingsError(name, "a database name as the URI's path, as in mongodb://host:27017/taxi", value)
    return value


def _redis_url(environ, name):
    value = _raw(environ, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise SettingsError(name, "a URL such as redis://127.0.0.1:6379/0", value)
    return value


def _origins(environ, name):
    value = _raw(environ, name)
    if value is None:
        return None
    origins = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "*":
            origins.append("*")
            continue
        origin = normalize_origin(item)
        if origin is None:
            raise SettingsError(name, "comma-separated origins such as https://app.example.com, or *", item)
        origins.append(origin)
    if not origins:
        raise SettingsError(name, "comma-separated origins such as https://app.example.com, or *", value)
    return tuple(origins)


DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str | None:
    """Return `origin` as `scheme://host:port` in lower case, or None when it is not an origin.

    An origin has a scheme and a host and nothing after them, so `https://a.example/path`
    is rejected rather than silently cut down.
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    if port is None:
        port = DEFAULT_PORTS[parts.scheme]
    return f"{parts.scheme}://{parts.hostname}:{port}"
