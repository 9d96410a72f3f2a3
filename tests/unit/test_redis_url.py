"""`SIDECAR_REDIS_URL` is checked whole at start: each supported form is understood, anything
else is refused naming what is wrong, and no message repeats the password."""

from __future__ import annotations

import pytest

from ext_authz.ratelimit import BackendConfigError
from ext_authz.ratelimit.redis_url import RedisTarget, parse_redis_url


def test_a_single_server_with_acl_credentials_and_a_database() -> None:
    got = parse_redis_url("redis://limiter:s%3Acret@redis.internal:6380/2?client_name=sidecar")
    assert got == RedisTarget(
        "single",
        (("redis.internal", 6380),),
        username="limiter",
        password="s:cret",
        db=2,
        options={"client_name": "sidecar"},
    )


def test_defaults_are_port_6379_and_database_0() -> None:
    got = parse_redis_url("redis://:pw@127.0.0.1")
    assert (got.nodes, got.db, got.username, got.password) == (
        (("127.0.0.1", 6379),),
        0,
        None,
        "pw",
    )


def test_a_cluster_takes_one_or_more_seed_nodes() -> None:
    got = parse_redis_url("redis+cluster://10.0.0.1:7000, 10.0.0.2:7001,[::1]:7002")
    assert got.kind == "cluster"
    assert got.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))


def test_tls_forms_take_tls_options() -> None:
    got = parse_redis_url("rediss+cluster://h:7000?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required")
    assert got.tls and got.kind == "cluster"
    assert got.options == {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}


def test_sentinel_names_the_master_and_may_name_a_database() -> None:
    got = parse_redis_url("redis+sentinel://:pw@s1:26379,s2/mymaster/3?sentinel_password=sp")
    assert got.kind == "sentinel"
    assert got.nodes == (("s1", 26379), ("s2", 26379))
    assert (got.service, got.db, got.password) == ("mymaster", 3, "pw")
    assert got.options == {"sentinel_password": "sp"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://h:6379?cluster=true", "unknown option 'cluster' (for Redis Cluster write redis+"),
        ("redis://h?socket_timeout=1", "set SIDECAR_REDIS_TIMEOUT_MS instead"),
        ("redis://h?ssl_ca_certs=/ca.pem", "TLS options need rediss://"),
        ("redis://h?bogus=1", "known options: client_name, db, health_check_interval"),
        ("redis://h1:6379,h2:6379", "several hosts need redis+cluster://"),
        ("redis+cluster://h:7000/1", "Redis Cluster has only database 0"),
        ("redis+cluster://h:7000?db=1", "Redis Cluster has only database 0"),
        ("redis+sentinel://s:26379", "name the master"),
        ("redis://h:port", "the port in 'h:port' is not a number"),
        ("redis://h:70000", "out of range"),
        ("redis://h/zero", "the database /zero is not a number"),
        ("redis://user@h", "a user name without a password"),
        ("memcached://h", "the scheme must be one of"),
        ("127.0.0.1:6379", "the scheme must be one of"),
        ("redis://h?protocol=4", "option protocol='4': must be 2 or 3"),
        ("redis://h?socket_keepalive=maybe", "not a yes/no value"),
    ],
)
def test_a_url_that_cannot_work_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(BackendConfigError) as caught:
        parse_redis_url(url)
    assert str(caught.value).startswith("SIDECAR_REDIS_URL: ")
    assert says in str(caught.value)


def test_no_message_repeats_a_password() -> None:
    for url in (
        "redis://u:hunter2@h:6379?cluster=1",
        "redis+sentinel://u:hunter2@s/m?sentinel_password=hunter2&x=1",
        "rediss://u:hunter2@h:bad",
    ):
        with pytest.raises(BackendConfigError) as caught:
            parse_redis_url(url)
        assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(parse_redis_url("redis://u:hunter2@h"))
    assert "hunter2" not in parse_redis_url("redis://u:hunter2@h").describe()
