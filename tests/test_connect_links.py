"""Signed connect links: only the product's backend can start a connection in a user's name."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from starlette.requests import Request

from api.app import signed_start_authorizer, start_link

KEY = bytes.fromhex("11" * 32)


def _request(link: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": urlsplit(link).path,
                    "query_string": urlsplit(link).query.encode(), "headers": []})


def test_a_signed_link_is_accepted_once_signed_for_that_user_only():
    allow = signed_start_authorizer(KEY)
    link = start_link("https://concord.example/", "google", "org1", "user1", KEY)
    assert allow(_request(link), "org1", "user1")
    assert not allow(_request(link), "org1", "user2"), "a link for one user must not connect another"
    assert not allow(_request(link), "org2", "user1")
    forged = start_link("https://concord.example/", "google", "org1", "user1", bytes.fromhex("22" * 32))
    assert not allow(_request(forged), "org1", "user1")


def test_an_expired_or_unsigned_link_is_refused():
    allow = signed_start_authorizer(KEY, now=lambda: time.time() + 3600)
    link = start_link("https://concord.example/", "microsoft", "org1", "user1", KEY, ttl_s=600)
    assert not allow(_request(link), "org1", "user1")
    assert not allow(_request("https://concord.example/connect/google/start?org_id=org1&user_id=user1"),
                     "org1", "user1")
