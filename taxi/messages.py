"""The JSON messages a socket sends and receives.

Every frame is a JSON object with a string `type`; `parse` turns client text into such
an object or raises `InvalidMessage` carrying the error code and detail the client gets.
"""

import json

INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
RATE_LIMITED = "rate_limited"
INVALID_TOKEN = "invalid_token"
UNAVAILABLE = "unavailable"


class InvalidMessage(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every message: json.loads with a parse_constant builds a new
# JSONDecoder per call, which took half the parse time of a small echo message.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str | bytes):
    """Parse JSON text as browsers would: NaN and Infinity are rejected, not accepted as Python does.

    Raises ValueError for invalid JSON and RecursionError for nesting too deep to decode.
    """
    if isinstance(text, (bytes, bytearray)):
        # json.loads accepts UTF-8 bytes; the decoder object takes only text.
        text = text.decode("utf-8")
    return _DECODER.decode(text)


def parse(text: str) -> dict:
    """Return the message object in `text`; raises `InvalidMessage` for anything else.

    """
    try:
        message = loads(text)
    except (ValueError, RecursionError) as error:
        # RecursionError: deeply nested arrays exhaust the decoder's stack.
        raise InvalidMessage(INVALID_MESSAGE, f"message is not valid JSON: {_short(error)}") from None
    if not isinstance(message, dict):
        raise InvalidMessage(INVALID_MESSAGE, f"message must be a JSON object, got {_json_kind(message)}")
    message_type = message.get("type")
    if not isinstance(message_type, str):
        raise InvalidMessage(INVALID_MESSAGE, 'message must have a string "type"')
    return message


def unknown_type(message_type: str) -> InvalidMessage:
    shown = message_type if len(message_type) <= 64 else message_type[:64] + "..."
    return InvalidMessage(UNKNOWN_TYPE, f"unknown message type {shown!r}")


def encode(message: dict) -> bytes:
    """Encode `message` as compact UTF-8 JSON; raises ValueError for NaN or infinity."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def error(code: str, detail: str) -> dict:
    return {"type": "error", "data": {"code": code, "detail": detail}}


def _short(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)[:200]


def _json_kind(value) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
