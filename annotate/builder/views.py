"""The template builder (htmx): one page per template, every edit a POST on a real form.

An htmx POST gets the builder's ``workspace`` fragment back (no reload); a plain POST
redirects to the builder page (PRG). Only project admins (action ``manage``) get in;
non-members get 404.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotate.builder import components as catalogue
from annotate.builder import selectors as template_selectors
from annotate.builder import services as template_services
from annotate.builder.presets import PRESETS
from annotate.models import AnnotationTemplate
from core.exceptions import ApplicationError
from core.htmx import is_htmx, redirect_after_post, render_page_or_partial
from core.parsing import parse_json
from projects import roles
from projects.access import project_view, projects_for_user
from projects.models import Project

BUILDER = "annotate/template_builder.html"
MAX_IMPORT_BYTES = catalogue.MAX_SCHEMA_BYTES + 16 * 1024


def _template(project: Project, template_id: int) -> AnnotationTemplate:
    try:
        return template_selectors.template_for_project(project=project, template_id=template_id)
    except AnnotationTemplate.DoesNotExist:
        raise Http404("No such template") from None


def _builder_url(template: AnnotationTemplate, selected: str = "") -> str:
    url = reverse("annotate:template_builder", args=[template.project_id, template.pk])
    return f"{url}?selected={selected}" if selected else url


# --- list, create, preset, import -----------------------------------------------------------


@project_view("manage")
@require_GET
def template_list(request: HttpRequest, project: Project) -> HttpResponse:
    return render(request, "annotate/template_list.html", _list_context(project))


def _list_context(project: Project, **extra: Any) -> dict[str, Any]:
    return {"project": project, "templates": template_selectors.templates_for_project(project=project),
            "presets": PRESETS.values(), **extra}


def _list_error(request: HttpRequest, project: Project, exc: ApplicationError) -> HttpResponse:
    return render(request, "annotate/template_list.html", _list_context(project, error=exc), status=400)


@project_view("manage")
@require_POST
def template_create(request: HttpRequest, project: Project) -> HttpResponse:
    try:
        template = template_services.template_create(
            project=project, name=request.POST.get("name", ""), created_by=request.user
        )
    except ApplicationError as exc:
        return _list_error(request, project, exc)
    return redirect_after_post(request, _builder_url(template))


@project_view("manage")
@require_POST
def template_create_preset(request: HttpRequest, project: Project) -> HttpResponse:
    try:
        template = template_services.template_create_from_preset(
            project=project, preset=request.POST.get("preset", ""), created_by=request.user
        )
    except ApplicationError as exc:
        return _list_error(request, project, exc)
    return redirect_after_post(request, _builder_url(template))


@project_view("manage")
@require_POST
def template_import(request: HttpRequest, project: Project) -> HttpResponse:
    upload = request.FILES.get("file")
    raw = upload.read(MAX_IMPORT_BYTES + 1) if upload else request.POST.get("json", "").encode()
    try:
        if len(raw) > MAX_IMPORT_BYTES:
            raise ApplicationError("The file is too large for a template.", field="file")
        data = parse_json(raw, field="file")
        template = template_services.template_import(project=project, data=data, created_by=request.user)
    except ApplicationError as exc:
        return _list_error(request, project, exc)
    return redirect_after_post(request, _builder_url(template))


# --- the builder --------------------------------------------------------------------------


def _form_fields(spec: catalogue.ComponentType, component: dict[str, Any], schema: dict[str, Any],
                 submitted: dict[str, Any] | None, errors: dict[str, str]) -> list[dict[str, Any]]:
    """The config panel's inputs, one per FieldSpec, holding the stored (or just submitted) values."""
    values = submitted if submitted is not None else component["config"]
    fields = []
    for fspec in spec.fields:
        value = values.get(fspec.name, fspec.default)
        row: dict[str, Any] = {"spec": fspec, "value": value, "error": errors.get(fspec.name, "")}
        if fspec.kind in ("str_list",):
            row["text"] = "\n".join(value) if isinstance(value, list) else str(value)
        if fspec.kind in ("ref", "ref_list"):
            row["targets"] = [c["name"] for c in schema["components"]
                              if c.get("type") in fspec.ref_types and c["name"] != component["name"]]
            row["targets"] += list(fspec.extra_values)
        fields.append(row)
    return fields


def _builder_context(
    template: AnnotationTemplate, selected: str, *, submitted: dict[str, Any] | None = None,
    submitted_name: str | None = None, error: ApplicationError | None = None,
) -> dict[str, Any]:
    version = template_selectors.template_latest_version(template=template)
    schema = catalogue.normalise_schema(version.schema if version else catalogue.empty_schema())
    issues = catalogue.validate_schema(version.schema) if version else []
    names = [c["name"] for c in schema["components"]]
    if selected not in names:
        selected = names[0] if names and not selected else ""
    selected_component = next((c for c in schema["components"] if c["name"] == selected), None)
    field_errors: dict[str, str] = {}
    if isinstance(error, template_services.TemplateSchemaError):
        for issue in error.issues:
            field_errors.setdefault(issue.field, issue.message)
    elif error is not None and error.field:
        field_errors[error.field] = error.message
    panel = None
    if selected_component is not None:
        spec = catalogue.CATALOGUE[selected_component["type"]]
        panel = {
            "component": selected_component, "spec": spec,
            "name": submitted_name if submitted_name is not None else selected_component["name"],
            "name_error": field_errors.get("name", ""),
            "fields": _form_fields(spec, selected_component, schema, submitted, field_errors),
        }
    issues_by_component: dict[str, list[catalogue.SchemaIssue]] = {}
    for issue in issues:
        issues_by_component.setdefault(issue.component, []).append(issue)
    return {
        "project": template.project, "template": template, "version": version, "schema": schema,
        "components": [{**c, "label": catalogue.CATALOGUE[c["type"]].label,
                        "issues": issues_by_component.get(c["name"], [])} for c in schema["components"]],
        "schema_issues": issues_by_component.get("schema", []),
        "issue_count": len(issues), "selected": selected, "panel": panel, "error": error,
        "catalogue": catalogue.CATALOGUE.values(),
        "preview": template_selectors.render_annotation_form(schema=schema, preview=True),
        "publishable": bool(version and version.status == "draft" and not issues and schema["components"]),
    }


@project_view("manage")
@require_GET
def template_builder(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    context = _builder_context(template, request.GET.get("selected", ""))
    return render_page_or_partial(request, BUILDER, "workspace", context)


def _after_edit(request: HttpRequest, template: AnnotationTemplate, selected: str) -> HttpResponse:
    """htmx: the fresh workspace in place; plain POST: PRG back to the builder."""
    if is_htmx(request):
        template.refresh_from_db()
        response = render(request, f"{BUILDER}#workspace", _builder_context(template, selected))
        response["HX-Push-Url"] = _builder_url(template, selected)
        return response
    return redirect_after_post(request, _builder_url(template, selected))


def _edit_failed(request: HttpRequest, template: AnnotationTemplate, selected: str, exc: ApplicationError,
                 **extra: Any) -> HttpResponse:
    context = _builder_context(template, selected, error=exc, **extra)
    # htmx swaps only 2xx responses by default, so the fragment with inline errors comes back as 200.
    return render_page_or_partial(request, BUILDER, "workspace", context, status=200 if is_htmx(request) else 400)


@project_view("manage")
@require_POST
def template_component_add(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    try:
        _, name = template_services.template_component_add(
            template=template, type=request.POST.get("type", ""), created_by=request.user
        )
    except ApplicationError as exc:
        return _edit_failed(request, template, "", exc)
    return _after_edit(request, template, name)


@project_view("manage")
@require_POST
def template_component_remove(request: HttpRequest, project: Project, template_id: int, name: str) -> HttpResponse:
    template = _template(project, template_id)
    try:
        template_services.template_component_remove(template=template, name=name, created_by=request.user)
    except ApplicationError as exc:
        return _edit_failed(request, template, "", exc)
    return _after_edit(request, template, "")


@project_view("manage")
@require_POST
def template_component_move(request: HttpRequest, project: Project, template_id: int, name: str) -> HttpResponse:
    template = _template(project, template_id)
    offset = -1 if request.POST.get("direction") == "up" else 1
    try:
        template_services.template_component_move(template=template, name=name, offset=offset,
                                                  created_by=request.user)
    except ApplicationError as exc:
        return _edit_failed(request, template, name, exc)
    return _after_edit(request, template, name)


@project_view("manage")
@require_POST
def template_components_reorder(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    order = [name for name in request.POST.get("order", "").split(",") if name]
    selected = request.POST.get("selected", "")
    try:
        template_services.template_components_reorder(template=template, order=order, created_by=request.user)
    except ApplicationError as exc:
        return _edit_failed(request, template, selected, exc)
    return _after_edit(request, template, selected)


def _config_from_post(spec: catalogue.ComponentType, post: Any) -> dict[str, Any]:
    """Read the config panel's inputs (``cfg.<field>``) into typed values; the service validates them."""
    config: dict[str, Any] = {}
    for fspec in spec.fields:
        key = f"cfg.{fspec.name}"
        if fspec.kind == "bool":
            config[fspec.name] = post.get(key) == "on"
        elif fspec.kind == "int":
            raw = post.get(key, "").strip()
            try:
                config[fspec.name] = int(raw)
            except ValueError:
                config[fspec.name] = raw
        elif fspec.kind == "str_list":
            config[fspec.name] = [line.strip() for line in post.get(key, "").splitlines() if line.strip()]
        elif fspec.kind in ("ref_list", "choice_list"):
            config[fspec.name] = [value for value in post.getlist(key) if value]
        else:
            config[fspec.name] = post.get(key, "").replace("\r\n", "\n")
    return config


@project_view("manage")
@require_POST
def template_component_configure(request: HttpRequest, project: Project, template_id: int,
                                 name: str) -> HttpResponse:
    template = _template(project, template_id)
    version = template_selectors.template_latest_version(template=template)
    schema = catalogue.normalise_schema(version.schema if version else catalogue.empty_schema())
    component = next((c for c in schema["components"] if c["name"] == name), None)
    if component is None:
        raise Http404("No such component")
    config = _config_from_post(catalogue.CATALOGUE[component["type"]], request.POST)
    new_name = request.POST.get("name", name).strip()
    try:
        template_services.template_component_configure(
            template=template, name=name, new_name=new_name, config=config, created_by=request.user
        )
    except ApplicationError as exc:
        return _edit_failed(request, template, name, exc, submitted=config, submitted_name=new_name)
    return _after_edit(request, template, new_name or name)


@project_view("manage")
@require_POST
def template_settings(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    try:
        template_services.template_update(template=template, name=request.POST.get("name", ""),
                                          description=request.POST.get("description", ""))
    except ApplicationError as exc:
        return _edit_failed(request, template, request.POST.get("selected", ""), exc)
    return _after_edit(request, template, request.POST.get("selected", ""))


@project_view("manage")
@require_POST
def template_publish(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    selected = request.POST.get("selected", "")
    try:
        template_services.template_version_publish(template=template, created_by=request.user)
    except ApplicationError as exc:
        return _edit_failed(request, template, selected, exc)
    return _after_edit(request, template, selected)


@project_view("manage")
@require_POST
def template_duplicate(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    copy = template_services.template_duplicate(template=template, created_by=request.user)
    return redirect_after_post(request, _builder_url(copy))


@project_view("manage")
@require_GET
def template_history(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    history = template_selectors.template_history(template=template)
    return render(request, "annotate/template_history.html",
                  {"project": project, "template": template, "history": history})


@project_view("manage")
@require_GET
def template_export(request: HttpRequest, project: Project, template_id: int) -> HttpResponse:
    template = _template(project, template_id)
    number = request.GET.get("version", "")
    try:
        version = (template_selectors.template_version(template=template, number=int(number)) if number
                   else template_selectors.template_latest_version(template=template))
    except (ValueError, template.versions.model.DoesNotExist):
        raise Http404("No such version") from None
    if version is None:
        raise Http404("No versions yet")
    response = JsonResponse(template_services.template_export(version=version), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="template-{template.pk}-v{version.number}.json"'
    return response


@login_required
@require_GET
def template_overview(request: HttpRequest) -> HttpResponse:
    """The nav's "Templates": every template of the projects the user administers."""
    if not request.user.has_perm(roles.MANAGE):
        raise PermissionDenied("Only project admins build templates.")
    templates = template_selectors.templates_for_user(user=request.user).select_related("project")
    projects = projects_for_user(user=request.user, action="manage")
    return render(request, "annotate/template_overview.html", {"templates": templates, "projects": projects})
