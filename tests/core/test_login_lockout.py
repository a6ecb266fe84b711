"""Brute force on /login/ and POST /api/token/ is locked out by username and by client address (issue 21.2)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.db.models import F
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from projects.roles import Role
from tests.factories import PASSWORD, UserFactory

LOCKOUT = ("Too many failed logins for this account or from this address. Logins are refused, even with the "
           "right password, until 15 minutes pass without a failed attempt.")
WRONG = "Please enter a correct username and password."


@pytest.fixture(autouse=True)
def _documented_defaults(settings):
    """The README's defaults, whatever the environment running the tests says."""
    settings.LOGIN_FAILURE_LIMIT, settings.LOGIN_FAILURE_LIMIT_PER_IP, settings.LOGIN_LOCKOUT_MINUTES = 5, 20, 15
    settings.TRUSTED_PROXY_COUNT = 0


def login(client, username: str, password: str, ip: str = "192.0.2.1", **headers: str):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip, **headers)


def token(username: str, password: str, ip: str = "192.0.2.1"):
    return APIClient().post("/api/token/", {"username": username, "password": password}, format="json",
                            REMOTE_ADDR=ip)


def time_passes(minutes: float) -> None:
    """Move every recorded failed attempt ``minutes`` into the past, as if the clock had run on."""
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=minutes))


def test_login_page_locks_a_username_and_refuses_even_the_right_password(client, annotator):
    for _ in range(4):
        response = login(client, annotator.username, "wrong")
        assert response.status_code == 200
        assert WRONG in response.content.decode()
    fifth = login(client, annotator.username, "wrong")
    assert fifth.status_code == 429
    assert fifth["Retry-After"] == "900"
    assert LOCKOUT in fifth.content.decode()
    assert 'role="alert"' in fifth.content.decode()

    right = login(client, annotator.username, PASSWORD)
    assert right.status_code == 429
    assert LOCKOUT in right.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_lock_ends_after_the_cool_off_without_failures(client, annotator):
    for _ in range(5):
        login(client, annotator.username, "wrong")
    time_passes(14)
    assert login(client, annotator.username, PASSWORD).status_code == 429  # a refused try counts as a failure
    time_passes(14)
    assert login(client, annotator.username, PASSWORD).status_code == 429  # so 14 minutes on, still locked
    time_passes(15)
    response = login(client, annotator.username, PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    assert client.session["_auth_user_id"] == str(annotator.pk)


def test_the_cool_off_is_the_configured_one(client, annotator, settings):
    settings.LOGIN_LOCKOUT_MINUTES = 60
    for _ in range(5):
        login(client, annotator.username, "wrong")
    time_passes(59)
    response = login(client, annotator.username, PASSWORD)
    assert response.status_code == 429
    assert response["Retry-After"] == "3600"
    assert "until 60 minutes pass" in response.content.decode()
    time_passes(61)
    assert login(client, annotator.username, PASSWORD).status_code == 302


def test_a_username_is_locked_whichever_addresses_the_guesses_come_from(client, annotator):
    for n in range(5):
        login(client, annotator.username, "wrong", ip=f"198.51.100.{n + 1}")
    assert login(client, annotator.username, PASSWORD, ip="203.0.113.50").status_code == 429


def test_an_address_is_locked_after_guesses_at_many_usernames(client, annotator, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_IP = 6
    others = [UserFactory(username=f"victim{n}", role=Role.ANNOTATOR) for n in range(3)]
    for user in others:  # two guesses each: no username reaches its own limit of 5
        for _ in range(2):
            login(client, user.username, "wrong", ip="192.0.2.66")
    response = login(client, annotator.username, PASSWORD, ip="192.0.2.66")
    assert response.status_code == 429
    assert LOCKOUT in response.content.decode()
    assert login(client, annotator.username, PASSWORD, ip="192.0.2.67").status_code == 302


def test_behind_a_proxy_the_address_is_the_one_the_proxy_saw(client, annotator, settings):
    """With one trusted proxy, the last X-Forwarded-For entry counts; what the client put before it does not."""
    settings.TRUSTED_PROXY_COUNT, settings.LOGIN_FAILURE_LIMIT_PER_IP = 1, 3
    for n in range(3):
        login(client, f"nobody{n}", "wrong", ip="10.0.0.2", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}, 192.0.2.80")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"192.0.2.80"}
    locked = login(client, annotator.username, PASSWORD, ip="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.80")
    assert locked.status_code == 429
    other = login(client, annotator.username, PASSWORD, ip="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.81")
    assert other.status_code == 302


def test_api_token_locks_out_with_a_json_answer(annotator):
    for _ in range(4):
        response = token(annotator.username, "wrong")
        assert response.status_code == 400
        assert response.json() == {"non_field_errors": ["Unable to log in with provided credentials."],
                                   "detail": "Unable to log in with provided credentials."}
    fifth = token(annotator.username, "wrong")
    assert fifth.status_code == 429
    assert fifth["Retry-After"] == "900"
    assert fifth.json() == {"detail": LOCKOUT}

    right = token(annotator.username, PASSWORD)
    assert right.status_code == 429
    assert right.json() == {"detail": LOCKOUT}
    assert not Token.objects.filter(user=annotator).exists()

    time_passes(16)
    granted = token(annotator.username, PASSWORD)
    assert granted.status_code == 200
    assert granted.json() == {"token": Token.objects.get(user=annotator).key}


def test_failures_on_the_api_and_the_page_add_up(client, annotator):
    for _ in range(3):
        token(annotator.username, "wrong")
    login(client, annotator.username, "wrong")
    assert login(client, annotator.username, "wrong").status_code == 429
    assert token(annotator.username, PASSWORD).status_code == 429


def test_a_successful_login_does_not_reset_the_count_for_another_account(client, annotator, admin_user):
    """An attacker with an account of their own cannot clear their guesses at someone else's by logging in."""
    for _ in range(4):
        login(client, admin_user.username, "wrong", ip="192.0.2.9")
    assert login(client, annotator.username, PASSWORD, ip="192.0.2.9").status_code == 302
    client.logout()
    assert login(client, admin_user.username, "wrong", ip="192.0.2.9").status_code == 429
