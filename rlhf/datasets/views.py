from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from annotate.builder.selectors import render_markdown
from core.exceptions import ApplicationError
from core.htmx import redirect_after_post, render_page_or_partial
from projects import roles
from projects.access import project_view
from projects.models import Project
from rlhf.datasets import selectors
from rlhf.datasets import services as export_services
from rlhf.datasets.archive import export_archive, export_archive_url
from rlhf.datasets.forms import ExportForm
from rlhf.models import PreferenceExport, RunStatus


@login_required
@permission_required(roles.EXPORT, raise_exception=True)
def index(request: HttpRequest) -> HttpResponse:
    """The ML engineer's start page: exportable projects and recent exports."""
    projects = selectors.exportable_projects(user=request.user)
    exports = selectors.exports_for_user(user=request.user)[:50]
    return render(request, "rlhf/index.html", {"projects": projects, "exports": exports})


@project_view("export")
@require_http_methods(["GET", "POST"])
def export_create(request: HttpRequest, project: Project) -> HttpResponse:
    form = ExportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = {k: v for k, v in form.cleaned_data.items() if v is not None}
        try:
            export_request = export_services.export_request_parse(data)
        except ApplicationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            export = export_services.preference_export_create(project=project, user=request.user,
                                                              request=export_request)
            return redirect_after_post(request, reverse("rlhf:export_detail", args=[export.pk]))
    status = 400 if form.errors else 200
    return render(request, "rlhf/export_create.html", {"project": project, "form": form}, status=status)


def _export(request: HttpRequest, export_id: int) -> PreferenceExport:
    try:
        return selectors.export_for_user(user=request.user, export_id=export_id)
    except PreferenceExport.DoesNotExist:
        raise Http404("No such export") from None


@login_required
def export_detail(request: HttpRequest, export_id: int) -> HttpResponse:
    export = _export(request, export_id)
    card = None
    if export.status == RunStatus.SUCCEEDED:
        card = render_markdown(export_services.export_card(export))
    data_url = export_services.export_data_url(export) if export.status == RunStatus.SUCCEEDED else None
    response = render_page_or_partial(request, "rlhf/export_detail.html", "progress",
                                      {"export": export, "card": card, "data_url": data_url})
    if request.htmx and export.is_finished:
        # The fragment carries the final state; tell htmx to stop polling and refresh the page.
        stop = HttpResponseStopPolling(response.content)
        stop["HX-Refresh"] = "true"
        return stop
    return response


@login_required
@require_POST
def export_cancel(request: HttpRequest, export_id: int) -> HttpResponse:
    export = _export(request, export_id)
    try:
        export_services.preference_export_cancel(export=export)
    except ApplicationError as exc:
        return render(request, "rlhf/export_detail.html", {"export": export, "error": exc.message}, status=400)
    return redirect_after_post(request, reverse("rlhf:export_detail", args=[export.pk]))


@login_required
def export_download(request: HttpRequest, export_id: int) -> FileResponse | HttpResponseRedirect:
    """The zip: from the server's disk, or (an object-store export) a redirect to a signed, expiring link."""
    export = _export(request, export_id)
    if export.status != RunStatus.SUCCEEDED:
        raise Http404("This export has no files (it has not succeeded).")
    if export.storage_url:
        return HttpResponseRedirect(export_archive_url(export))
    archive = export_archive(export)
    return FileResponse(archive.open("rb"), as_attachment=True, filename=f"pickwise-export-{export.pk}.zip")
