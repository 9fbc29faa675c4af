"""Which webhook addresses may be called: alerts go where a dealer's row of dealers.csv says, so a
webhook is an outbound request made on someone else's say-so.  ``check_webhook_url`` refuses
at configuration time what is visibly wrong; ``AddressPolicy`` checks again at send time what
the host resolves to, and ``CheckingResolver`` hands the HTTP client only the addresses it
checked, so the connection goes to one of them (no DNS rebinding between check and connect).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Collection
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

#: Addresses a webhook must not point at: (what, network).  A webhook is an outbound request
#: made on a dealer's say-so (dealers.csv); these would reach the deployment's own network.
FORBIDDEN_NETWORKS: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = tuple(
    (what, ipaddress.ip_network(net)) for what, net in (
        ("loopback", "127.0.0.0/8"), ("loopback", "::1/128"),
        ("link-local", "169.254.0.0/16"), ("link-local", "fe80::/10"),
        ("private", "10.0.0.0/8"), ("private", "172.16.0.0/12"), ("private", "192.168.0.0/16"),
        ("private", "fc00::/7"),
        # 0.0.0.0 and :: reach the local host on Linux: loopback in effect
        ("unspecified", "0.0.0.0/8"), ("unspecified", "::/128"),
    ))


class WebhookRefused(ValueError):
    """A webhook URL that must not be called: not http(s), or an address in ``FORBIDDEN_NETWORKS``."""


def address_refusal(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, *,
                    allow_loopback: bool = False) -> str:
    """Why ``address`` must not be called, or '' when it may (IPv4-mapped IPv6 is judged as IPv4)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for what, network in FORBIDDEN_NETWORKS:
        if ip.version == network.version and ip in network:
            if what in ("loopback", "unspecified") and allow_loopback:
                return ""
            hint = " (allowed only with alerts.allow_loopback = true)" if what in ("loopback", "unspecified") else ""
            return f"{ip} is a {what} address ({network}){hint}"
    return ""


def check_webhook_url(url: str, *, allow_loopback: bool = False) -> None:
    """Raise ``WebhookRefused`` (saying why) when ``url`` is not http(s) with a host, has a bad port,
    or its host is an IP literal in a forbidden range.  Host names are checked when sending
    (``AddressPolicy.resolve``): what they resolve to may change."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise WebhookRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise WebhookRefused("the URL has no host")
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a host name
    reason = address_refusal(ip, allow_loopback=allow_loopback)
    if reason:
        raise WebhookRefused(reason)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a ``WebhookNotifier`` may connect to: none of ``FORBIDDEN_NETWORKS``, the
    loopback ones when ``allow_loopback`` (tests and laptops with a local receiver)."""

    allow_loopback: bool = False

    def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        """``(family, sockaddr)`` of every address of ``host``; ``WebhookRefused`` when any is
        forbidden (one bad answer is enough: a resolver may rotate them).  ``OSError`` when it
        does not resolve."""
        out = lookup(host, port, family)
        for _, sockaddr in out:
            reason = address_refusal(str(sockaddr[0]).split("%", 1)[0], allow_loopback=self.allow_loopback)
            if reason:
                shown = "" if sockaddr[0] == host else f"{host} resolves to "
                raise WebhookRefused(shown + reason)
        return out


def lookup(host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
    """``(family, sockaddr)`` of every stream address of ``host`` (blocking: the system resolver);
    ``OSError`` when it has none."""
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    out = [(af, sockaddr) for af, _, _, _, sockaddr in infos]
    if not out:
        raise OSError(f"{host} resolves to no address")
    return out


#: ``ResolveResult.flags`` of an answer that is already numeric: the connector must not look it up.
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class CheckingResolver(AbstractResolver):
    """The HTTP client's resolver (``aiohttp``): it resolves a host name once, applies ``policy``
    to every address and hands the connector only those, as numbers, so the connection goes to
    an address that was checked; a name with any forbidden address raises ``WebhookRefused``.
    TLS still verifies the URL's host name: the connector passes it as ``server_hostname``.

    ``policy`` None resolves without checking.  ``unchecked`` names are resolved without checking
    too: the configured HTTP proxies, which the operator chose and which often sit on a private
    address.  Lookups run on ``executor`` because ``getaddrinfo`` blocks; the caller owns it.

    The connector skips its resolver for a URL whose host is an IP address: those are checked by
    the caller (``AddressPolicy.resolve`` answers them without a lookup).
    """

    def __init__(self, policy: AddressPolicy | None, executor: Executor, unchecked: Collection[str] = ()):
        self.policy = policy
        self.executor = executor
        self.unchecked = frozenset(unchecked)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        """Every (checked) address of ``host``; ``WebhookRefused``, or ``OSError`` when it does not resolve."""
        loop = asyncio.get_running_loop()
        if self.policy is None or host in self.unchecked:
            addresses = await loop.run_in_executor(self.executor, lookup, host, port, family)
        else:
            addresses = await loop.run_in_executor(self.executor, self.policy.resolve, host, port, family)
        return [ResolveResult(hostname=host, host=str(sockaddr[0]), port=int(sockaddr[1]), family=af, proto=0,
                              flags=_NUMERIC) for af, sockaddr in addresses]

    async def close(self) -> None:
        """Nothing to release: the executor is the caller's."""
