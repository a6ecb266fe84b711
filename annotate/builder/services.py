"""Writes for annotation templates and their versions.

A template's content lives in numbered versions. At most one version is a draft; the builder
and the API only ever write that draft. Published versions are immutable: editing a
template whose newest version is published starts a new draft numbered one higher.
"""

from __future__ import annotations

import copy
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotate.builder import components as catalogue
from annotate.builder.presets import PRESETS
from annotate.models import AnnotationTemplate, AnnotationTemplateVersion
from core.audit import audit_record
from core.exceptions import ApplicationError
from projects.models import Project

EXPORT_FORMAT = "pickwise.annotation_template"


class TemplateSchemaError(ApplicationError):
    """The schema has problems; ``field`` is the first one's ``<component>.<field>``, ``errors`` all of them."""

    def __init__(self, issues: list[catalogue.SchemaIssue]) -> None:
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(first.message + more, field=first.location,
                         extra={"errors": [issue.as_dict() for issue in issues]})
        self.issues = issues


def _check(schema: Any, *, strict: bool) -> dict[str, Any]:
    """Validate and normalise. Drafts (``strict=False``) may still have dangling references."""
    issues = catalogue.validate_schema(schema)
    if not strict:
        issues = [issue for issue in issues if issue.kind == "structure"]
    if issues:
        raise TemplateSchemaError(issues)
    return catalogue.normalise_schema(schema)


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ApplicationError("A template needs a name.", field="name")
    if len(name) > 200:
        raise ApplicationError("A template name is at most 200 characters.", field="name")
    return name


@transaction.atomic
def template_create(
    *, project: Project, name: str, created_by: AbstractBaseUser, description: str = "",
    schema: dict[str, Any] | None = None, strict: bool = False,
) -> AnnotationTemplate:
    """A new template whose version 1 is a draft holding ``schema`` (empty by default)."""
    if len(description) > 5000:
        raise ApplicationError("A description is at most 5000 characters.", field="description")
    normal = _check(schema if schema is not None else catalogue.empty_schema(), strict=strict)
    template = AnnotationTemplate.objects.create(
        project=project, name=_clean_name(name), description=description, created_by=created_by
    )
    AnnotationTemplateVersion.objects.create(template=template, number=1, schema=normal, created_by=created_by)
    return template


@transaction.atomic
def template_create_from_preset(*, project: Project, preset: str, created_by: AbstractBaseUser) -> AnnotationTemplate:
    if preset not in PRESETS:
        raise ApplicationError(f"Unknown preset {preset!r}.", field="preset")
    spec = PRESETS[preset]
    return template_create(project=project, name=spec.name, description=spec.description,
                           schema=spec.build(), created_by=created_by, strict=True)


@transaction.atomic
def template_import(*, project: Project, data: Any, created_by: AbstractBaseUser) -> AnnotationTemplate:
    """Create a template from an export (``{"name", "description", "schema"}``) or a bare schema."""
    if not isinstance(data, dict):
        raise ApplicationError("The file must hold a JSON object.", field="file")
    if "schema" in data:
        schema, name, description = data["schema"], data.get("name") or "Imported template", data.get("description", "")
    else:
        schema, name, description = data, "Imported template", ""
    if not isinstance(name, str) or not isinstance(description, str):
        raise ApplicationError("name and description must be strings.", field="name")
    return template_create(project=project, name=name, description=description, schema=schema,
                           created_by=created_by, strict=True)


def template_export(*, version: AnnotationTemplateVersion) -> dict[str, Any]:
    """The JSON that ``template_import`` reads back (the schema is the API's schema)."""
    return {
        "format": EXPORT_FORMAT,
        "name": version.template.name,
        "description": version.template.description,
        "version": version.number,
        "status": version.status,
        "schema": version.schema,
    }


@transaction.atomic
def template_update(*, template: AnnotationTemplate, name: str, description: str = "") -> AnnotationTemplate:
    template.name = _clean_name(name)
    template.description = description
    template.save(update_fields=["name", "description", "updated_at"])
    return template


@transaction.atomic
def template_duplicate(*, template: AnnotationTemplate, created_by: AbstractBaseUser) -> AnnotationTemplate:
    """A new template (same project) whose draft v1 copies the newest version of ``template``."""
    latest = template.versions.order_by("-number").first()
    schema = copy.deepcopy(latest.schema) if latest else catalogue.empty_schema()
    return template_create(project=template.project, name=f"Copy of {template.name}"[:200],
                           description=template.description, schema=schema, created_by=created_by)


def _lock(template: AnnotationTemplate) -> AnnotationTemplate:
    return AnnotationTemplate.objects.select_for_update().get(pk=template.pk)


@transaction.atomic
def template_version_draft(*, template: AnnotationTemplate, created_by: AbstractBaseUser) -> AnnotationTemplateVersion:
    """The template's draft, creating one (number = newest + 1, copying the newest) when none exists."""
    _lock(template)
    draft = template.versions.filter(status=AnnotationTemplateVersion.Status.DRAFT).first()
    if draft is not None:
        return draft
    latest = template.versions.order_by("-number").first()
    number = (template.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    schema = copy.deepcopy(latest.schema) if latest else catalogue.empty_schema()
    return AnnotationTemplateVersion.objects.create(
        template=template, number=number, schema=schema, created_by=created_by
    )


@transaction.atomic
def template_version_save_draft(
    *, template: AnnotationTemplate, schema: dict[str, Any], created_by: AbstractBaseUser, strict: bool = False
) -> AnnotationTemplateVersion:
    """Write ``schema`` into the draft (made when needed). Never touches a published version."""
    normal = _check(schema, strict=strict)
    draft = template_version_draft(template=template, created_by=created_by)
    draft = AnnotationTemplateVersion.objects.select_for_update().get(pk=draft.pk)
    if draft.status != AnnotationTemplateVersion.Status.DRAFT:  # pragma: no cover - guarded by the lock
        raise ApplicationError("Published versions cannot be changed.", field="status")
    draft.schema = normal
    draft.save(update_fields=["schema", "updated_at"])
    template.save(update_fields=["updated_at"])
    return draft


@transaction.atomic
def template_version_publish(*, template: AnnotationTemplate, created_by: AbstractBaseUser) -> AnnotationTemplateVersion:
    """Publish the draft after full validation; it never changes again."""
    _lock(template)
    draft = template.versions.select_for_update().filter(status=AnnotationTemplateVersion.Status.DRAFT).first()
    if draft is None:
        raise ApplicationError("There is no draft to publish; edit the template first.", field="status")
    normal = _check(draft.schema, strict=True)
    if not normal["components"]:
        raise ApplicationError("Add at least one component before publishing.", field="components")
    draft.schema = normal
    draft.status = AnnotationTemplateVersion.Status.PUBLISHED
    draft.published_at = timezone.now()
    draft.save(update_fields=["schema", "status", "published_at", "updated_at"])
    audit_record(event="template.published", instance=draft, actor=created_by, project_id=template.project_id,
                 details={"template": template.pk, "name": template.name, "number": draft.number})
    return draft


# --- builder operations: each edits the draft's component list -----------------------------


def _draft_schema(template: AnnotationTemplate, created_by: AbstractBaseUser) -> dict[str, Any]:
    return copy.deepcopy(template_version_draft(template=template, created_by=created_by).schema)


def _index(schema: dict[str, Any], name: str) -> int:
    for index, component in enumerate(schema["components"]):
        if component["name"] == name:
            return index
    raise ApplicationError(f"There is no component {name!r}.", field="name")


@transaction.atomic
def template_component_add(
    *, template: AnnotationTemplate, type: str, created_by: AbstractBaseUser  # noqa: A002 - component type
) -> tuple[AnnotationTemplateVersion, str]:
    """Append a default-configured component, wired to its only possible source; returns the draft and its name."""
    if type not in catalogue.CATALOGUE:
        raise ApplicationError(f"Unknown component type {type!r}.", field="type")
    schema = _draft_schema(template, created_by)
    component = catalogue.new_component(type=type, taken=[c["name"] for c in schema["components"]])
    schema["components"].append(component)
    catalogue.bind_to_only_sources(schema["components"], component)
    return template_version_save_draft(template=template, schema=schema, created_by=created_by), component["name"]


@transaction.atomic
def template_component_remove(*, template: AnnotationTemplate, name: str,
                              created_by: AbstractBaseUser) -> AnnotationTemplateVersion:
    schema = _draft_schema(template, created_by)
    del schema["components"][_index(schema, name)]
    return template_version_save_draft(template=template, schema=schema, created_by=created_by)


@transaction.atomic
def template_component_move(*, template: AnnotationTemplate, name: str, offset: int,
                            created_by: AbstractBaseUser) -> AnnotationTemplateVersion:
    """Move a component ``offset`` places (-1 up, +1 down), clamped to the list."""
    schema = _draft_schema(template, created_by)
    items = schema["components"]
    index = _index(schema, name)
    target = max(0, min(len(items) - 1, index + offset))
    items.insert(target, items.pop(index))
    return template_version_save_draft(template=template, schema=schema, created_by=created_by)


@transaction.atomic
def template_components_reorder(*, template: AnnotationTemplate, order: list[str],
                                created_by: AbstractBaseUser) -> AnnotationTemplateVersion:
    """Put the components in ``order`` (every current name exactly once)."""
    schema = _draft_schema(template, created_by)
    by_name = {c["name"]: c for c in schema["components"]}
    if sorted(order) != sorted(by_name):
        raise ApplicationError("The new order must list every component exactly once.", field="order")
    schema["components"] = [by_name[name] for name in order]
    return template_version_save_draft(template=template, schema=schema, created_by=created_by)


@transaction.atomic
def template_component_configure(
    *, template: AnnotationTemplate, name: str, new_name: str, config: dict[str, Any], created_by: AbstractBaseUser
) -> AnnotationTemplateVersion:
    """Replace a component's config (and maybe rename it, updating references to it)."""
    schema = _draft_schema(template, created_by)
    index = _index(schema, name)
    component = schema["components"][index]
    component["config"] = config
    new_name = new_name.strip()
    if new_name and new_name != name:
        component["name"] = new_name
        _rename_references(schema, old=name, new=new_name)
    return template_version_save_draft(template=template, schema=schema, created_by=created_by)


def _rename_references(schema: dict[str, Any], *, old: str, new: str) -> None:
    for component in schema["components"]:
        spec = catalogue.CATALOGUE.get(component["type"])
        if spec is None:
            continue
        for fspec in spec.fields:
            value = component["config"].get(fspec.name)
            if fspec.kind == "ref" and value == old:
                component["config"][fspec.name] = new
            elif fspec.kind == "ref_list" and isinstance(value, list):
                component["config"][fspec.name] = [new if item == old else item for item in value]
