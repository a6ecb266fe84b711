"""Brute-force protection for every login (``/login/``, ``POST /api/token/``, the admin's login).

django-axes records failed ``authenticate()`` calls in the database and refuses further ones while
a lock holds: ``LOGIN_FAILURE_LIMIT`` failures for one username (from any address), or
``LOGIN_FAILURE_LIMIT_PER_IP`` failures from one client address (for any usernames), each counted
until ``LOGIN_LOCKOUT_MINUTES`` pass without a new failure. While locked, the right password is
refused too, and every refused attempt counts as a failure, so the lock lasts until the caller
stops for the cool-off. The two limits differ because many annotators may share one address
(an office NAT) while one account should take few guesses.

Pieces, wired in ``config/settings.py``:

- :class:`LockoutBackend`, first in ``AUTHENTICATION_BACKENDS``, refuses a locked-out login;
- :class:`LockoutHandler` stores attempts and applies the two limits; :func:`failure_limit` and
  :func:`cool_off` hand axes the ``LOGIN_*`` settings as they are when a request comes;
- :func:`client_ip` reads the caller's address behind ``TRUSTED_PROXY_COUNT`` proxies;
- :func:`lockout_response` answers a locked-out request: the login page with the reason (HTML) or
  ``{"detail": ...}`` (API), both 429 with ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def failure_limit(request: HttpRequest | None, credentials: dict[str, Any] | None = None) -> int:
    """Failures of one username that lock it (``AXES_FAILURE_LIMIT``)."""
    return int(settings.LOGIN_FAILURE_LIMIT)


def cool_off(request: HttpRequest | None = None) -> timedelta:
    """How long after the last failure a lock holds (``AXES_COOLOFF_TIME``)."""
    return timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)


class LockoutBackend(AxesStandaloneBackend):
    """Refuses logins while their username or address is locked out; authenticates nobody itself.

    ``authenticate()`` without a request (the test client's ``login``, a shell) is not a login from
    the network and carries no address to count, so it is left to the next backend instead of
    raising as axes' own backend does. Every web login passes its request (Django's login views,
    the admin's, DRF's token view through :func:`core.api.obtain_token`).
    """

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


class LockoutHandler(AxesDatabaseHandler):
    """Axes' database handler with a limit per username and a separate one per client address.

    ``AXES_LOCKOUT_PARAMETERS`` is ``["username", "ip_address"]``, so axes hands over two sets of
    recent attempts: those of the username (any address) and those of the address (any username).
    Axes compares one number with one limit (:func:`failure_limit`, the per-username limit); the
    address's failures count as reaching it once they reach ``LOGIN_FAILURE_LIMIT_PER_IP``.
    """

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        by_username, by_address = (
            attempts.aggregate(failures=Sum("failures_since_start"))["failures"] or 0
            for attempts in self.get_user_attempts(request, credentials)
        )
        if by_address >= settings.LOGIN_FAILURE_LIMIT_PER_IP:
            return max(int(by_username), failure_limit(request, credentials))
        return int(by_username)


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address: ``REMOTE_ADDR``, or behind ``TRUSTED_PROXY_COUNT`` proxies the entry that
    many places from the right of ``X-Forwarded-For`` (each proxy appends the address it saw, so the
    entries further left are whatever the client chose to send)."""
    hops = settings.TRUSTED_PROXY_COUNT
    if hops:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= hops and _is_ip(forwarded[-hops]):
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def lockout_message() -> str:
    minutes = settings.LOGIN_LOCKOUT_MINUTES
    return (
        "Too many failed logins for this account or from this address. Logins are refused, even with "
        f"the right password, until {minutes} minute{'s' if minutes != 1 else ''} pass without a failed attempt."
    )


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict[str, Any] | None = None) -> HttpResponse:
    """429 with ``Retry-After``: JSON ``{"detail": ...}`` for the API, else the login page saying why."""
    message = lockout_message()
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=429)
    else:
        form = AuthenticationForm(request, initial={"username": (credentials or {}).get("username", "")})
        context = {"form": form, "lockout": message, "next": request.POST.get("next", "")}
        response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(settings.LOGIN_LOCKOUT_MINUTES * 60)
    return response
