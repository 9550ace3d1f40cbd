"""Who is calling, by address: the socket peer, or what a trusted proxy says it saw.

Forwarding headers are believed only when the peer is a configured trusted proxy
(`OMNITUTOR_TRUSTED_PROXIES`, nginx in front): anyone can send `X-Forwarded-For`. Then the
client is the rightmost `X-Forwarded-For` hop that is not itself a trusted proxy (each
proxy appends the address it saw, so hops to the left of the first untrusted one are the
client's own claims); without that header, `X-Real-IP`. Anything unparsable falls back to
the nearest address we can vouch for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.requests import Request

from eventstore.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"


def _parse(value: str) -> IPAddress | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "203.0.113.9:51234"
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def client_ip(peer: str | None, headers: Headers, proxies: Sequence[IPNetwork]) -> str:
    """The client's address as text (see the module docstring for the rule)."""
    peer_addr = _parse(peer) if peer else None
    if peer_addr is None:
        return peer or UNKNOWN
    if not _trusted(peer_addr, proxies):
        return str(peer_addr)
    forwarded = ",".join(headers.getlist("x-forwarded-for"))
    if forwarded.strip():
        nearest = peer_addr  # the last address we can vouch for
        for hop in reversed(forwarded.split(",")):
            addr = _parse(hop)
            if addr is None:
                return str(nearest)
            if not _trusted(addr, proxies):
                return str(addr)
            nearest = addr
        return str(nearest)  # every hop is a trusted proxy: the leftmost is the origin
    real = _parse(headers.get("x-real-ip", ""))
    return str(real) if real is not None else str(peer_addr)


def request_client_ip(request: Request) -> str:
    peer = request.client.host if request.client else None
    return client_ip(peer, request.headers, request.app.state.deps.settings.trusted_proxies)
