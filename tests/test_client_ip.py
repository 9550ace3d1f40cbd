"""The trusted-proxy rule: forwarded addresses count only when a trusted proxy sent them."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.datastructures import Headers

from eventstore.settings import Settings
from web.client_ip import client_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def ip(peer: str | None, **headers: str) -> str:
    raw = {k.replace("_", "-"): v for k, v in headers.items()}
    return client_ip(peer, Headers(raw), PROXIES)


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert ip("203.0.113.5", x_forwarded_for="1.2.3.4", x_real_ip="5.6.7.8") == "203.0.113.5"


def test_trusted_peer_rightmost_untrusted_hop_wins() -> None:
    # The client forged "1.2.3.4"; nginx appended the address it saw, 198.51.100.2.
    assert ip("10.0.0.2", x_forwarded_for="1.2.3.4, 198.51.100.2") == "198.51.100.2"
    # Two trusted proxies in a row are skipped.
    assert ip("10.0.0.2", x_forwarded_for="1.2.3.4, 198.51.100.2, 10.0.0.9") == "198.51.100.2"
    assert ip("::1", x_forwarded_for="2001:db8::7") == "2001:db8::7"


def test_trusted_peer_falls_back_to_x_real_ip_then_peer() -> None:
    assert ip("10.0.0.2", x_real_ip="198.51.100.3") == "198.51.100.3"
    assert ip("10.0.0.2") == "10.0.0.2"
    assert ip("10.0.0.2", x_real_ip="not an address") == "10.0.0.2"


def test_garbage_and_ports_and_all_trusted_chains() -> None:
    assert ip("10.0.0.2", x_forwarded_for="bogus, 10.0.0.3") == "10.0.0.3"
    assert ip("10.0.0.2", x_forwarded_for="198.51.100.4:5555") == "198.51.100.4"
    assert ip("10.0.0.2", x_forwarded_for="[2001:db8::9]:443") == "2001:db8::9"
    assert ip("10.0.0.2", x_forwarded_for="10.0.0.7, 10.0.0.3") == "10.0.0.7"
    assert ip("::ffff:10.0.0.2", x_forwarded_for="198.51.100.4") == "198.51.100.4"
    assert ip(None) == "unknown"


def test_settings_parse_proxies_and_reject_nonsense() -> None:
    s = Settings.from_env({"OMNITUTOR_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8 ::1"})
    assert [str(n) for n in s.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(SystemExit, match="OMNITUTOR_TRUSTED_PROXIES"):
        Settings.from_env({"OMNITUTOR_TRUSTED_PROXIES": "10.0.0.0/33"})
    with pytest.raises(SystemExit, match="OMNITUTOR_DAILY_CAP_USD"):
        Settings.from_env({"OMNITUTOR_DAILY_CAP_USD": "-1"})
    limits = Settings.from_env({"OMNITUTOR_LIMIT_PLAN_ANON_PER_HOUR": "7", "OT_OVER_QUOTA": "1"})
    assert limits.limit_plan_anon_per_hour == 7
    assert limits.over_quota_forced is True
    assert Settings.from_env({}).daily_cap_usd == 50
