"""Versions: drafts are edited in place, published versions never change."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from annotate.builder import services as template_services
from annotate.builder.presets import PRESETS
from annotate.builder.selectors import render_annotation_form, template_history
from annotate.builder.services import TemplateSchemaError
from annotate.models import AnnotationTemplateVersion
from core.exceptions import ApplicationError

pytestmark = pytest.mark.django_db


def _preset(project, admin_user, key="rlhf_image_generation"):
    return template_services.template_create_from_preset(project=project, preset=key, created_by=admin_user)


@pytest.mark.parametrize("key", list(PRESETS))
def test_each_preset_creates_a_publishable_template(project, admin_user, key):
    template = _preset(project, admin_user, key)
    version = template_services.template_version_publish(template=template, created_by=admin_user)
    assert (version.number, version.status) == (1, "published")
    assert version.published_at is not None


def test_editing_a_published_template_makes_a_new_version_and_leaves_the_old_row(project, admin_user):
    template = _preset(project, admin_user)
    v1 = template_services.template_version_publish(template=template, created_by=admin_user)
    frozen = v1.schema
    updated_at = v1.updated_at

    template_services.template_component_add(template=template, type="instructions", created_by=admin_user)
    template_services.template_component_remove(template=template, name="rationale", created_by=admin_user)

    v1.refresh_from_db()
    assert v1.schema == frozen and v1.status == "published" and v1.updated_at == updated_at
    draft = template.versions.get(status="draft")
    assert draft.number == 2
    assert [c["name"] for c in draft.schema["components"]][-1] == "instructions_2"
    v2 = template_services.template_version_publish(template=template, created_by=admin_user)
    assert v2.pk == draft.pk
    template_services.template_component_move(template=template, name="instructions_2", offset=-1, created_by=admin_user)
    assert sorted(template.versions.values_list("number", "status")) == [
        (1, "published"), (2, "published"), (3, "draft")]


def test_database_allows_one_draft_per_template(project, admin_user):
    template = _preset(project, admin_user)
    with pytest.raises(IntegrityError), transaction.atomic():
        AnnotationTemplateVersion.objects.create(template=template, number=2, schema={})


def test_invalid_status_is_refused_by_the_database(project, admin_user):
    template = _preset(project, admin_user)
    with pytest.raises(IntegrityError), transaction.atomic():
        template.versions.update(status="archived")


def test_publish_refuses_dangling_references(project, admin_user):
    template = template_services.template_create(project=project, name="Custom", created_by=admin_user)
    template_services.template_component_add(template=template, type="ranking", created_by=admin_user)
    with pytest.raises(TemplateSchemaError) as exc:
        template_services.template_version_publish(template=template, created_by=admin_user)
    assert exc.value.field == "ranking.images"
    assert template.versions.get().status == "draft"


def test_publish_without_draft_is_refused(project, admin_user):
    template = _preset(project, admin_user)
    template_services.template_version_publish(template=template, created_by=admin_user)
    with pytest.raises(ApplicationError, match="no draft"):
        template_services.template_version_publish(template=template, created_by=admin_user)


def test_rename_updates_references(project, admin_user):
    template = _preset(project, admin_user)
    schema = template.versions.get().schema
    images = next(c for c in schema["components"] if c["name"] == "images")
    template_services.template_component_configure(template=template, name="images", new_name="candidates",
                                                   config=images["config"], created_by=admin_user)
    draft = template.versions.get()
    ranking = next(c for c in draft.schema["components"] if c["type"] == "ranking")
    assert ranking["config"]["images"] == "candidates"


def test_import_of_export_roundtrips(project, admin_user):
    template = _preset(project, admin_user, "best_of_n_with_rationale")
    exported = template_services.template_export(version=template.versions.get())
    copy = template_services.template_import(project=project, data=exported, created_by=admin_user)
    assert copy.versions.get().schema == exported["schema"]
    assert copy.name == template.name


def test_import_refuses_bad_schema_with_location(project, admin_user):
    bad = {"schema_version": 1, "components": [{"type": "generate_button", "name": "go", "config": {}}]}
    with pytest.raises(TemplateSchemaError) as exc:
        template_services.template_import(project=project, data=bad, created_by=admin_user)
    assert exc.value.field == "go.prompt"


def test_history_diffs_versions(project, admin_user):
    template = _preset(project, admin_user)
    template_services.template_version_publish(template=template, created_by=admin_user)
    template_services.template_component_remove(template=template, name="rationale", created_by=admin_user)
    newest, first = template_history(template=template)
    assert newest.version.number == 2
    assert newest.changes == ["Removed Text “rationale”"]
    assert len(first.changes) == 7


def test_admin_strings_are_escaped_and_markdown_sanitised():
    schema = {"schema_version": 1, "components": [
        {"type": "instructions", "name": "intro",
         "config": {"markdown": "**hi** <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>"}},
        {"type": "text", "name": "why", "config": {"label": "<b>label</b>", "placeholder": '"><script>'}},
    ]}
    html = render_annotation_form(schema=schema, preview=True)
    assert "<strong>hi</strong>" in html
    assert "<script" not in html and "javascript:" not in html and "onerror" not in html
    assert "&lt;b&gt;label&lt;/b&gt;" in html
    assert "&quot;&gt;&lt;script&gt;" in html
