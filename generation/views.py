"""Pages: ask for images, watch a job's progress (htmx polling), and the permission-checked image URL."""

from __future__ import annotations

from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseStopPolling
from rest_framework.exceptions import AuthenticationFailed

from core.authentication import TokenAuthentication
from core.exceptions import ApplicationError
from core.htmx import is_htmx, redirect_after_post
from generation import selectors, services
from generation.forms import GenerateForm
from generation.models import GeneratedImage, GenerationJob, ModelVersion
from projects.access import projects_for_user


@login_required
@require_http_methods(["GET", "POST"])
def generate(request: HttpRequest) -> HttpResponse:
    projects = projects_for_user(user=request.user)
    form = GenerateForm(
        request.POST or None,
        model_choices=selectors.model_version_choices(),
        project_choices=[(p.pk, p.name) for p in projects],
        max_images=settings.GENERATION_MAX_IMAGES_PER_JOB,
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        project = projects.filter(pk=data["project"]).first() if data["project"] else None
        try:
            job = services.generation_job_create(
                user=request.user,
                model_version=ModelVersion.objects.get(pk=data["model_version"]),
                prompt=data["prompt"],
                num_images=data["num_images"],
                project=project,
            )
        except ApplicationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            return redirect_after_post(request, reverse("generation:job_detail", args=[job.pk]))
    jobs = selectors.jobs_for_user(user=request.user).filter(created_by=request.user)[:20]
    return render(
        request, "generation/job_create.html", {"form": form, "jobs": jobs}, status=400 if form.errors else 200
    )


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    """The page; an htmx poll gets the progress fragment, and polling stops once the job has ended."""
    try:
        job = selectors.job_for_user(user=request.user, job_id=job_id)
    except GenerationJob.DoesNotExist:
        raise Http404("No such generation job") from None
    context = {"job": job, "status": selectors.job_status(job), "poll_ms": selectors.poll_interval_ms(job)}
    if is_htmx(request):
        fragment = render(request, "generation/job_detail.html#progress", context)
        if job.is_finished:
            stop = HttpResponseStopPolling(fragment.content)
            stop["Content-Type"] = fragment["Content-Type"]
            return stop
        return fragment
    return render(request, "generation/job_detail.html", context)


@login_required
@require_http_methods(["POST"])
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    try:
        job = selectors.job_for_user(user=request.user, job_id=job_id)
        services.generation_job_cancel(job=job, user=request.user)
    except GenerationJob.DoesNotExist:
        raise Http404("No such generation job") from None
    except ApplicationError:
        pass  # already finished: the page shows how
    return redirect_after_post(request, reverse("generation:job_detail", args=[job_id]))


def _api_token_user(request: HttpRequest) -> object | None:
    """The user of a DRF ``Authorization: Token ...`` header, so API clients can fetch image URLs too."""
    try:
        found = TokenAuthentication().authenticate(request)  # type: ignore[arg-type]
    except AuthenticationFailed:
        return None
    return found[0] if found else None


def _stored_image_file(request: HttpRequest, image_id: UUID, part: str) -> HttpResponse:
    """Stream ``part`` ("image", "source" or "mask") of a stored image to a user who may see the image
    (404 to everyone else, revealing nothing; 404 too when the image has no such part)."""
    user = request.user if request.user.is_authenticated else _api_token_user(request)
    if user is None:
        if "HTTP_AUTHORIZATION" in request.META:
            return HttpResponse("Invalid token", status=401, content_type="text/plain")
        return redirect_to_login(request.get_full_path())
    try:
        found = selectors.image_for_user(user=user, image_id=image_id)  # type: ignore[arg-type]
    except GeneratedImage.DoesNotExist:
        raise Http404("No such image") from None
    key, content_type, etag = {
        "image": (found.storage_key, found.content_type or "image/png", found.sha256),
        "source": (found.edit_source_key, "image/png", (found.edit or {}).get("source_sha256", "")),
        "mask": (found.edit_mask_key, "image/png", (found.edit or {}).get("mask_sha256", "")),
    }[part]
    if not key:
        raise Http404(f"This image has no {part}") from None
    if getattr(default_storage, "querystring_auth", False):
        return HttpResponseRedirect(default_storage.url(key))
    try:
        handle = default_storage.open(key, "rb")
    except FileNotFoundError:
        raise Http404("The image file is missing") from None
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    response["ETag"] = f'"{etag}"'
    return response


@require_GET
def image(request: HttpRequest, image_id: UUID) -> HttpResponse:
    """Stream a stored image to a user who may see it (404 to everyone else, revealing nothing).

    Session (browser) and token (API) authentication both work. On S3-compatible storage with
    signed URLs the check is followed by a redirect to a URL that expires (AWS_QUERYSTRING_EXPIRE);
    on local disk the file is streamed from storage.
    """
    return _stored_image_file(request, image_id, "image")


@require_GET
def image_edit_source(request: HttpRequest, image_id: UUID) -> HttpResponse:
    """The source image an edited image started from (same access rule as the image itself)."""
    return _stored_image_file(request, image_id, "source")


@require_GET
def image_edit_mask(request: HttpRequest, image_id: UUID) -> HttpResponse:
    """The mask an inpainted image was painted with (same access rule as the image itself)."""
    return _stored_image_file(request, image_id, "mask")
