"""The builder pages: htmx fragments vs full pages, PRG, permissions."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotate.builder import services as template_services

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def template(project, admin_user):
    return template_services.template_create_from_preset(project=project, preset="rlhf_image_generation",
                                                         created_by=admin_user)


def _url(name, template, *args):
    return reverse(f"annotate:{name}", args=[template.project_id, template.pk, *args])


def test_builder_full_page_and_fragment(client, admin_user, template):
    client.force_login(admin_user)
    page = client.get(_url("template_builder", template))
    assert page.status_code == 200
    assert b"<html" in page.content and b'id="workspace"' in page.content
    fragment = client.get(_url("template_builder", template) + "?selected=ranking", **HX)
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and fragment.content.lstrip().startswith(b'<div id="workspace"')
    assert "Ranking “ranking”" in fragment.content.decode()


def test_add_component_plain_post_redirects(client, admin_user, template):
    client.force_login(admin_user)
    response = client.post(_url("template_component_add", template), {"type": "rating"})
    assert response.status_code == 303
    assert response["Location"] == _url("template_builder", template) + "?selected=rating"


def test_add_component_htmx_returns_workspace(client, admin_user, template, project):
    client.force_login(admin_user)
    response = client.post(_url("template_component_add", template), {"type": "rating"}, **HX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="workspace"') and "<html" not in body
    assert 'data-name="rating"' in body
    # The preset has one Images component: the new Rating is wired to it.
    rating = next(c for c in template.versions.order_by("-number").first().schema["components"] if c["name"] == "rating")
    assert rating["config"]["images"] == "images"
    # With no Images to rate, its missing image source is shown inline, next to the component.
    blank = template_services.template_create(project=project, name="Blank", created_by=admin_user)
    body = client.post(_url("template_component_add", blank), {"type": "rating"}, **HX).content.decode()
    assert 'data-field="images"' in body


def test_configure_with_bad_value_shows_inline_error_and_saves_nothing(client, admin_user, template):
    client.force_login(admin_user)
    before = template.versions.get().schema
    data = {"name": "rationale", "cfg.label": "x" * 300, "cfg.placeholder": "", "cfg.min_length": "0",
            "cfg.max_length": "100"}
    response = client.post(_url("template_component_configure", template, "rationale"), data, **HX)
    assert response.status_code == 200
    assert 'class="error field-error" data-field="label"' in response.content.decode()
    assert template.versions.get().schema == before
    plain = client.post(_url("template_component_configure", template, "rationale"), data)
    assert plain.status_code == 400 and b"<html" in plain.content


def test_configure_move_publish_flow(client, admin_user, template):
    client.force_login(admin_user)
    data = {"name": "why", "cfg.label": "Why?", "cfg.placeholder": "", "cfg.required": "on",
            "cfg.min_length": "5", "cfg.max_length": "100"}
    assert client.post(_url("template_component_configure", template, "rationale"), data).status_code == 303
    assert client.post(_url("template_component_move", template, "why"), {"direction": "up"}).status_code == 303
    assert client.post(_url("template_publish", template), {}).status_code == 303
    version = template.versions.get()
    assert version.status == "published"
    names = [c["name"] for c in version.schema["components"]]
    assert names[-2:] == ["why", "ranking"]
    assert version.schema["components"][-2]["config"]["required"] is True


def test_reorder_by_drag_form(client, admin_user, template):
    client.force_login(admin_user)
    names = [c["name"] for c in template.versions.get().schema["components"]]
    order = [names[1], names[0], *names[2:]]
    response = client.post(_url("template_components_reorder", template), {"order": ",".join(order)}, **HX)
    assert response.status_code == 200
    assert [c["name"] for c in template.versions.get().schema["components"]] == order


def test_list_preset_and_import(client, admin_user, project):
    client.force_login(admin_user)
    list_url = reverse("annotate:template_list", args=[project.pk])
    assert client.get(list_url).status_code == 200
    response = client.post(reverse("annotate:template_create_preset", args=[project.pk]),
                           {"preset": "pairwise_ab_with_tie"})
    assert response.status_code == 303
    bad = client.post(reverse("annotate:template_import", args=[project.pk]), {"json": '{"schema_version": 2}'})
    assert bad.status_code == 400 and b"schema_version" in bad.content


def test_history_and_export(client, admin_user, template):
    client.force_login(admin_user)
    assert client.get(_url("template_history", template)).status_code == 200
    export = client.get(_url("template_export", template))
    assert export.json()["schema"] == template.versions.get().schema


def test_annotator_cannot_open_or_call_the_builder(client, annotator, template):
    client.force_login(annotator)
    assert client.get(_url("template_builder", template)).status_code == 403
    assert client.post(_url("template_component_add", template), {"type": "text"}).status_code == 403
    assert client.get(reverse("annotate:template_list", args=[template.project_id])).status_code == 403
    assert client.get(reverse("annotate:template_overview")).status_code == 403


def test_non_members_get_404(client, admin_user, other_project):
    template = template_services.template_create(project=other_project, name="Theirs", created_by=admin_user)
    client.force_login(admin_user)
    assert client.get(_url("template_builder", template)).status_code == 404
    assert client.post(_url("template_publish", template)).status_code == 404


def test_template_of_another_project_is_404(client, admin_user, project, other_project):
    template = template_services.template_create(project=other_project, name="Theirs", created_by=admin_user)
    client.force_login(admin_user)
    url = reverse("annotate:template_builder", args=[project.pk, template.pk])
    assert client.get(url).status_code == 404


def test_builder_query_count_does_not_grow_with_components(client, admin_user, project, django_assert_max_num_queries):
    small = template_services.template_create(project=project, name="Small", created_by=admin_user)
    big = template_services.template_create_from_preset(project=project, preset="best_of_n_with_rationale",
                                                        created_by=admin_user)
    client.force_login(admin_user)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for t in (small, big):
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(_url("template_builder", t)).status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1]


def test_the_builder_lists_and_configures_the_edit_components(client, admin_user, project):
    client.force_login(admin_user)
    template = template_services.template_create_from_preset(project=project, preset="rank_inpaintings",
                                                             created_by=admin_user)
    page = client.get(_url("template_builder", template) + "?selected=source").content.decode()
    for ctype in ("source_image", "mask_painter", "outpaint_canvas", "strength"):
        assert f'value="{ctype}"' in page  # in the palette
    assert page.count('name="cfg.sources"') == 3 and 'type="checkbox" name="cfg.sources" value="task" checked' in page
    assert 'data-mask-painter="mask"' in page and 'name="strength"' in page  # the preview renders them
    data = {"name": "source", "cfg.label": "Start from", "cfg.sources": ["upload", "candidate"],
            "cfg.generate": "generate"}
    assert client.post(_url("template_component_configure", template, "source"), data).status_code == 303
    source = next(c for c in template.versions.order_by("-number").first().schema["components"]
                  if c["name"] == "source")
    assert source["config"] == {"label": "Start from", "sources": ["upload", "candidate"], "generate": "generate"}
    bad = {"name": "strength", "cfg.label": "Strength", "cfg.generate": "generate", "cfg.default": "5",
           "cfg.minimum": "10", "cfg.maximum": "100"}
    response = client.post(_url("template_component_configure", template, "strength"), bad, **HX)
    assert 'class="error field-error" data-field="default"' in response.content.decode()
    assert "Strength &#x27;strength&#x27;: the starting strength must lie between 10 and 100; got 5." in (
        response.content.decode())
