"""/api/schema/ and /api/docs/ are public only when API_DOCS_PUBLIC says so (issue 21.5)."""

from __future__ import annotations

import pytest

from tests.factories import api_client_for


@pytest.fixture
def docs_private(settings):
    settings.API_DOCS_PUBLIC = False


def test_public_docs_answer_anyone(client, db, settings):
    settings.API_DOCS_PUBLIC = True
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/token/" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b'<div id="swagger-ui"></div>' in docs.content
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"] == "application/javascript"


def test_private_schema_is_401_for_anonymous_callers(api_client, db, docs_private):
    response = api_client.get("/api/schema/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Token'


def test_private_docs_send_anonymous_visitors_to_the_login_page(client, db, docs_private):
    for url in ("/api/docs/", "/api/docs/?script="):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == "/login/?next=" + url.replace("?", "%3F").replace("=", "%3D")


def test_private_docs_open_to_signed_in_users(client, annotator, docs_private):
    client.force_login(annotator)
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/api/schema/").status_code == 200
    assert api_client_for(annotator).get("/api/schema/").status_code == 200
