"""Reads for annotation templates, and the one function that renders a template for annotators.

``render_annotation_form`` is what both the builder's preview and the annotation page (issue 4)
use, so an admin sees exactly what annotators will see.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import markdown as markdown_lib
import nh3
from django.db.models import Count, Max, Q, QuerySet
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from annotate.builder import components as catalogue
from annotate.models import AnnotationTemplate, AnnotationTemplateVersion
from generation.selectors import model_versions_enabled
from projects.access import projects_for_user
from projects.models import Project

STYLE_PRESETS = ["none", "photographic", "illustration", "3d-render", "watercolor"]
DEFAULT_IMAGE_COUNTS = ["2", "4", "6", "8"]

ALLOWED_TAGS = {"p", "br", "strong", "em", "b", "i", "code", "pre", "blockquote", "ul", "ol", "li",
                "h1", "h2", "h3", "h4", "h5", "h6", "hr", "a", "table", "thead", "tbody", "tr", "th", "td"}


def templates_for_project(*, project: Project) -> QuerySet[AnnotationTemplate]:
    """The project's templates with their newest version number and published-version count."""
    return (
        AnnotationTemplate.objects.filter(project=project)
        .select_related("created_by")
        .annotate(
            latest_number=Max("versions__number"),
            published_count=Count("versions", filter=Q(versions__status=AnnotationTemplateVersion.Status.PUBLISHED)),
            has_draft=Count("versions", filter=Q(versions__status=AnnotationTemplateVersion.Status.DRAFT)),
        )
        .order_by("-updated_at")
    )


def template_for_project(*, project: Project, template_id: int) -> AnnotationTemplate:
    """``AnnotationTemplate.DoesNotExist`` unless the template belongs to ``project``."""
    return AnnotationTemplate.objects.select_related("project").get(project=project, pk=template_id)


def template_latest_version(*, template: AnnotationTemplate) -> AnnotationTemplateVersion | None:
    return template.versions.order_by("-number").first()


def template_version(*, template: AnnotationTemplate, number: int) -> AnnotationTemplateVersion:
    return template.versions.select_related("template", "created_by").get(number=number)


@dataclass(frozen=True)
class VersionWithDiff:
    version: AnnotationTemplateVersion
    changes: list[str]


def template_history(*, template: AnnotationTemplate) -> list[VersionWithDiff]:
    """Every version, newest first, each with what changed since the one before it (one query)."""
    versions = list(template.versions.select_related("created_by").order_by("number"))
    history, previous = [], None
    for version in versions:
        history.append(VersionWithDiff(version, catalogue.schema_diff(previous, version.schema)))
        previous = version.schema
    return list(reversed(history))


# --- rendering ----------------------------------------------------------------------------


def render_markdown(text: str) -> SafeString:
    """Markdown to HTML, sanitised by nh3 (no scripts, no inline handlers, safe links only)."""
    html = markdown_lib.markdown(text, extensions=["tables", "sane_lists"], output_format="html")
    cleaned = nh3.clean(html, tags=ALLOWED_TAGS, attributes={"a": {"href", "title"}},
                        url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow")
    return mark_safe(cleaned)  # noqa: S308 - sanitised by nh3 just above


def enabled_model_version_names() -> list[str]:
    """Names of the enabled model versions, for Selects bound to ``model_versions``."""
    return list(model_versions_enabled().values_list("name", flat=True))


def select_options(config: Mapping[str, Any]) -> list[str]:
    """The options a Select offers, resolved at render time for bound sources."""
    source = config["source"]
    if source == "model_versions":
        return enabled_model_version_names()
    if source == "style_presets":
        return list(STYLE_PRESETS)
    if source == "image_count":
        return list(config["options"]) or list(DEFAULT_IMAGE_COUNTS)
    return list(config["options"])


def _placeholder_images(count: int) -> list[dict[str, Any]]:
    return [{"id": f"preview-{i + 1}", "url": "", "model": f"model {i % 2 + 1}", "placeholder": True}
            for i in range(count)]


def _image_count(config: Mapping[str, Any], by_name: Mapping[str, dict[str, Any]]) -> int:
    bound = by_name.get(config.get("count_from") or "")
    if bound is not None and bound["type"] == "select":
        options = bound.get("options") or []
        if bound["config"]["source"] == "image_count" and options and options[0].isdigit():
            return max(1, min(catalogue.MAX_IMAGES, int(options[0])))
    return max(1, min(catalogue.MAX_IMAGES, int(config.get("count") or 1)))


# The components annotators use before there are candidates to rank (the annotation page shows them with the
# Generate button, not in the ranking form).
GENERATION_STEP = ("prompt_input", "generate_button", *catalogue.EDIT_COMPONENTS)
OUTPAINT_SIDES = (("left", "Left"), ("top", "Top"), ("right", "Right"), ("bottom", "Bottom"))
PREVIEW_EDIT_LIMITS = {"outpaint_max_per_side": 256, "outpaint_multiple": catalogue.OUTPAINT_MULTIPLE}


def _edit_component_context(item: dict[str, Any], limits: Mapping[str, Any]) -> None:
    """Fill in what the edit components' partials show, within the model's ``limits`` (``edit_limits``)."""
    config = item["config"]
    if item["type"] == "outpaint_canvas":
        multiple = int(limits.get("outpaint_multiple") or catalogue.OUTPAINT_MULTIPLE)
        top = int(limits.get("outpaint_max_per_side") or 0)
        top -= top % multiple
        item.update(sides=OUTPAINT_SIDES, multiple=multiple, max_extend=top,
                    start=min(config["default_extend"], top))
    elif item["type"] == "strength":
        item.update(min=f"{config['minimum'] / 100:.2f}", max=f"{config['maximum'] / 100:.2f}",
                    start=f"{config['default'] / 100:.2f}")


def annotation_form_components(
    *, schema: Mapping[str, Any], images: Sequence[Mapping[str, Any]] | None = None, prompt: str = "",
    issues: Sequence[catalogue.SchemaIssue] = (), edit_limits: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Components ready for ``components/annotation/<type>.html``.

    ``images`` are the task's candidates (``{"id", "url", "model"}``); without them (the
    builder's preview) each Images component shows placeholders of its configured count.
    ``edit_limits`` (the model version's ``edit_limits``) bound the edit components' controls.
    """
    normal = catalogue.normalise_schema(schema)
    items: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for component in normal["components"]:
        item: dict[str, Any] = {**component, "label": catalogue.CATALOGUE[component["type"]].label,
                                "issues": [i for i in issues if i.component == component["name"]],
                                "generation_step": component["type"] in GENERATION_STEP}
        config = component["config"]
        if component["type"] == "instructions":
            item["html"] = render_markdown(config["markdown"])
        elif component["type"] == "select":
            item["options"] = select_options(config)
        elif component["type"] == "prompt_input":
            item["prompt"] = prompt
        elif component["type"] in catalogue.EDIT_COMPONENTS:
            _edit_component_context(item, edit_limits or PREVIEW_EDIT_LIMITS)
        items.append(item)
        by_name[component["name"]] = item
    for item in items:
        config = item["config"]
        if item["type"] == "images":
            candidates = [dict(image) for image in images] if images else _placeholder_images(
                _image_count(config, by_name))
            for position, image in enumerate(candidates):
                image["letter"] = string.ascii_uppercase[position % 26]
                if config["blind"]:
                    image["model"] = ""
            item["images"] = candidates
    for item in items:
        if item["type"] in ("ranking", "rating", "flags"):
            source = by_name.get(item["config"]["images"])
            item["images"] = source.get("images", []) if source and source["type"] == "images" else []
        if item["type"] == "ranking":
            item["ranks"] = list(range(1, len(item["images"]) + 1))
        if item["type"] == "rating":
            config = item["config"]
            scores = list(range(config["scale_min"], config["scale_max"] + 1))
            labels = config["labels"] if len(config["labels"]) == len(scores) else [str(s) for s in scores]
            item["scale"] = list(zip(scores, labels, strict=True))
    return items


def render_annotation_form(
    *, schema: Mapping[str, Any], images: Sequence[Mapping[str, Any]] | None = None, prompt: str = "",
    preview: bool = False, issues: Sequence[catalogue.SchemaIssue] = (),
) -> SafeString:
    """The annotator's form body (no <form> tag, no submit button: the caller owns those)."""
    items = annotation_form_components(schema=schema, images=images, prompt=prompt, issues=issues)
    return render_to_string("components/annotation/form.html", {"items": items, "preview": preview})


def templates_for_user(*, user: Any) -> QuerySet[AnnotationTemplate]:
    """Templates of the projects where ``user`` may manage (is a project admin), versions prefetched."""
    projects = projects_for_user(user=user, action="manage", include_archived=True)
    return (
        AnnotationTemplate.objects.filter(project__in=projects.values("pk"))
        .select_related("project", "created_by")
        .prefetch_related("versions")
        .order_by("-updated_at")
    )


def template_versions_for_user(*, user: Any) -> QuerySet[AnnotationTemplateVersion]:
    return (
        AnnotationTemplateVersion.objects.filter(template__in=templates_for_user(user=user).values("pk"))
        .select_related("template")
        .order_by("template_id", "-number")
    )
