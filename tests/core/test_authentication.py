"""API token authentication (one plain SQL join) behaves like DRF's own TokenAuthentication."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from projects.roles import Role
from tests.factories import UserFactory


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.mark.django_db
def test_a_valid_token_authenticates_its_user_in_one_query():
    user = UserFactory(username="tokenuser", role=Role.ANNOTATOR)
    token = Token.objects.create(user=user)
    with CaptureQueriesContext(connection) as queries:
        response = client_with(token.key).get("/api/me/")
    assert response.status_code == 200, response.content
    assert response.json()["username"] == "tokenuser"
    token_queries = [q["sql"] for q in queries if "authtoken_token" in q["sql"]]
    assert len(token_queries) == 1 and '"auth_user"' in token_queries[0]  # token and user in one join


@pytest.mark.django_db
def test_unknown_token_and_inactive_user_get_401_with_the_drf_messages():
    response = client_with("0" * 40).get("/api/me/")
    assert response.status_code == 401 and response.json()["detail"] == "Invalid token."
    assert response["WWW-Authenticate"] == "Token"
    user = UserFactory(username="gone", role=Role.ANNOTATOR)
    token = Token.objects.create(user=user)
    user.is_active = False
    user.save()
    response = client_with(token.key).get("/api/me/")
    assert response.status_code == 401 and response.json()["detail"] == "User inactive or deleted."


@pytest.mark.django_db
def test_the_authenticated_request_carries_the_user_and_token():
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from core.authentication import TokenAuthentication

    user = UserFactory(username="carrier", role=Role.ANNOTATOR)
    token = Token.objects.create(user=user)
    request = Request(APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {token.key}"),
                      authenticators=[TokenAuthentication()])
    assert request.user == user and request.user.is_authenticated
    assert request.auth == token and request.auth.user == user
    assert request.user.date_joined.tzinfo is not None  # converted like the ORM loads it
