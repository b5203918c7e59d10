"""Masking of secrets in logged request lines."""

import pytest

from taxi.logs import MASK, mask_uri

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoiMSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize("uri", [
    f"/taxi/?token={TOKEN}",
    f"/taxi/?a=1&token={TOKEN}&b=2",
    f"/taxi/?TOKEN={TOKEN}",
    f"/taxi/?token={TOKEN}&token={TOKEN}",
    f"/taxi/?token={TOKEN}&broken=%zz&&=",
    f"/taxi/?x;token={TOKEN}",
    f"/taxi/?token={TOKEN}#fragment",
])
def test_token_is_masked(uri):
    masked = mask_uri(uri)
    assert TOKEN not in masked
    assert MASK in masked


def test_other_parameters_are_kept():
    assert mask_uri(f"/taxi/?token={TOKEN}&room=7") == f"/taxi/?token={MASK}&room=7"


def test_uri_without_query_is_unchanged():
    assert mask_uri("/api/log_in/") == "/api/log_in/"


def test_percent_encoded_name_is_masked():
    assert TOKEN not in mask_uri(f"/taxi/?t%6Fken={TOKEN}")
