"""Requests to addresses that users name: webhook endpoints, image URLs to import.

Such a URL must not let a user reach what only the server can reach (the database, a cloud metadata
service, an admin port on loopback). So every outbound request here:

- is ``http`` or ``https`` and names a host;
- connects only to public addresses, checked on the addresses the socket actually connects to (after DNS
  resolution, so a name that resolves to a private address, or changes its answer between a check and the
  connection, is refused too), unless ``OUTBOUND_ALLOW_PRIVATE_ADDRESSES`` is on (tests, on-premise use);
- never follows redirects (a redirect is the caller's to judge: see ``fetch``), never reads proxy settings
  from the environment, and is limited in time and, for downloads, in size.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from django.conf import settings

from core.exceptions import ApplicationError

SCHEMES = ("http", "https")


class OutboundError(ApplicationError):
    """An outbound request was refused or failed; the message says why, ``field`` names the input."""


class AddressNotAllowed(httpcore.ConnectError):
    """The host resolves to a private, loopback or link-local address and those are not allowed."""


def refused_address(exc: BaseException) -> bool:
    """Whether ``exc`` (an httpx error) was caused by :class:`AddressNotAllowed`: a setting, not a network
    failure, so retrying cannot help."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressNotAllowed):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def address_is_public(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a public unicast address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def private_addresses_allowed() -> bool:
    return bool(getattr(settings, "OUTBOUND_ALLOW_PRIVATE_ADDRESSES", False))


class _PublicOnlyBackend(httpcore.SyncBackend):
    """Resolves the host itself and connects only to addresses that pass the check."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.allow_private:
            refused = [address for address in addresses if not address_is_public(address)]
            if refused:
                raise AddressNotAllowed(
                    f"{host} resolves to {refused[0]}, a private, loopback or link-local address")
        error: httpcore.ConnectError | None = None
        for address in addresses:  # the checked addresses themselves, never a second lookup
            try:
                return super().connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                           socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")


class _PublicOnlyTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose sockets go through :class:`_PublicOnlyBackend`."""

    def __init__(self, *, allow_private: bool) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=_PublicOnlyBackend(allow_private=allow_private),
        )


def check_url(url: str, *, field: str) -> httpx.URL:
    """The parsed URL when it is http(s) with a host; an :class:`OutboundError` naming ``field`` otherwise."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise OutboundError(f"{url!r} is not a valid URL: {exc}", field=field) from None
    if parsed.scheme not in SCHEMES:
        raise OutboundError(f"Only http and https URLs are allowed, not {parsed.scheme or 'none'!r}.", field=field)
    if not parsed.host:
        raise OutboundError("The URL names no host.", field=field)
    return parsed


def client(*, timeout: float, allow_private: bool | None = None) -> httpx.Client:
    """An httpx client for user-named URLs: public addresses only (unless allowed), no redirects, no proxies."""
    allow = private_addresses_allowed() if allow_private is None else allow_private
    return httpx.Client(transport=_PublicOnlyTransport(allow_private=allow), timeout=timeout,
                        follow_redirects=False, trust_env=False)


@dataclass(frozen=True)
class Fetched:
    content: bytes
    content_type: str
    url: str  # where the bytes came from, after any redirects


def fetch(url: str, *, field: str, max_bytes: int, timeout: float, max_redirects: int = 3,
          allow_private: bool | None = None, content_types: tuple[str, ...] = ()) -> Fetched:
    """GET ``url``'s body, at most ``max_bytes``, following up to ``max_redirects`` redirects, each one
    checked like the first. With ``content_types`` (prefixes such as ``"image/"``), a response of another
    declared type is refused before its body is read. Every failure is an :class:`OutboundError` naming
    ``field``."""
    current = check_url(url, field=field)
    with client(timeout=timeout, allow_private=allow_private) as http:
        for _ in range(max_redirects + 1):
            try:
                with http.stream("GET", current) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        current = check_url(str(current.join(location)), field=field)
                        continue
                    if response.status_code != 200:
                        raise OutboundError(f"{current} answered {response.status_code}.", field=field)
                    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if content_types and not kind.startswith(content_types):
                        raise OutboundError(f"{current} is {kind or 'of no declared type'}, not "
                                            f"{' or '.join(t.rstrip('/') for t in content_types)}.", field=field)
                    declared = response.headers.get("content-length")
                    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                        raise OutboundError(f"{current} is {int(declared):,} bytes; the limit is {max_bytes:,}.",
                                            field=field)
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise OutboundError(f"{current} is larger than the limit of {max_bytes:,} bytes.",
                                                field=field)
                    return Fetched(content=bytes(body), content_type=response.headers.get("content-type", ""),
                                   url=str(current))
            except httpx.TimeoutException:
                raise OutboundError(f"{current} did not answer within {timeout:g} s.", field=field) from None
            except httpx.HTTPError as exc:
                raise OutboundError(f"Could not fetch {current}: {exc}", field=field) from None
    raise OutboundError(f"{url} redirected more than {max_redirects} times.", field=field)
