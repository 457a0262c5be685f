"""Redis URL redaction: one implementation (metawsm/redact.py) behind every name it goes by."""

from __future__ import annotations

import pytest

from metawsm import policy
from metawsm.redact import redact_url
from metawsm.transport import namespace, streams


def test_the_transport_and_the_policy_use_the_same_function() -> None:
    assert streams.redact_url is redact_url
    assert namespace.redact_url is redact_url
    assert policy.redacted_redis_url is redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:pw@host/1", "redis://user:***@host/1"),
        ("rediss://user:p%40ss@host/2", "rediss://user:***@host/2"),
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("redis://:pw@Redis.Example:6379", "redis://:***@Redis.Example:6379"),
    ],
)
def test_a_password_in_the_userinfo_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("unix:///tmp/redis.sock?db=0&password=s3cret", "unix:///tmp/redis.sock?db=0&password=***"),
        ("unix:///tmp/redis.sock?PASSWORD=s3cret", "unix:///tmp/redis.sock?PASSWORD=***"),
        ("redis://host:6379/0?password=s3cret&socket_timeout=1", "redis://host:6379/0?password=***&socket_timeout=1"),
        ("redis://u:one@host/0?password=two", "redis://u:***@host/0?password=***"),
    ],
)
def test_a_password_query_parameter_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url) and "two" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "redis://user@host", "unix:///tmp/r.sock?db=0", "rediss://host/3#frag"],
)
def test_a_url_without_a_password_is_shown_as_written(url: str) -> None:
    assert redact_url(url) == url


def test_an_unparseable_url_keeps_only_its_scheme() -> None:
    assert redact_url("redis://:pw@[::1") == "redis://***"
    assert redact_url("//:pw@[::1") == "***"
