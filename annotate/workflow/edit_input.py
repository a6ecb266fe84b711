"""Reading an edit request's inputs (the source upload, the mask PNG, the strength, the outpaint box) from
an HTTP request, for the annotation page's form and the REST API alike: uploads are refused by their size
before they are read, and every error names the template's component and field
(:func:`annotate.workflow.services.edit_error_located`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.files.uploadedfile import UploadedFile

from annotate.builder import components as catalogue
from annotate.workflow import services as workflow_services
from core.exceptions import ApplicationError
from core.parsing import parse_float, parse_int

SIDES = ("left", "top", "right", "bottom")


def edit_body_limit(limits: Mapping[str, Any]) -> int:
    """The largest edit request accepted before its body is read: a source and a mask file plus the fields."""
    return 2 * int(limits["max_upload_bytes"]) + 256 * 1024


def megabytes(n: int) -> str:
    """A byte count as generation's messages write it (MB, one decimal; kB below 0.1 MB)."""
    if n < 100_000:
        return f"{n / 1000:.0f} kB"
    return f"{n / 1_000_000:.1f}".rstrip("0").rstrip(".") + " MB"


def body_too_large(content_length: str, *, limits: Mapping[str, Any], plan: catalogue.EditPlan
                   ) -> ApplicationError | None:
    """The located error for a body over :func:`edit_body_limit` (judged by its Content-Length), else None."""
    length = content_length or "0"
    if not (length.isdecimal() and int(length) > edit_body_limit(limits)):
        return None
    return workflow_services.edit_error_located(ApplicationError(
        f"The upload is {megabytes(int(length))}; each image may be at most "
        f"{megabytes(int(limits['max_upload_bytes']))}.", field="source_image"), plan)


def read_upload(upload: UploadedFile | None, *, limits: Mapping[str, Any], field: str,
                plan: catalogue.EditPlan) -> bytes | None:
    """An uploaded file's bytes, refused by its size before it is read (Django streams large uploads to a
    temporary file); None when nothing was uploaded."""
    if upload is None:
        return None
    limit = int(limits["max_upload_bytes"])
    if upload.size is not None and upload.size > limit:
        raise workflow_services.edit_error_located(ApplicationError(
            f"The image is {megabytes(upload.size)}; the limit is {megabytes(limit)}.", field=field), plan)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise workflow_services.edit_error_located(ApplicationError(
            f"The image is over {megabytes(limit)}; the limit is {megabytes(limit)}.", field=field), plan)
    return data


def parse_strength(raw: str, *, plan: catalogue.EditPlan) -> float | None:
    """The strength (0 to 1, within the Strength component's range); None when not given or not used."""
    if plan.strength is None or plan.kind == "outpaint" or not raw.strip():
        return None
    config = plan.strength["config"]
    try:
        return parse_float(raw, field="The strength", minimum=config["minimum"] / 100,
                           maximum=config["maximum"] / 100)
    except ApplicationError as exc:
        raise workflow_services.edit_error_located(ApplicationError(exc.message, field="strength"), plan) from None


def parse_outpaint(values: Mapping[str, str], *, plan: catalogue.EditPlan) -> tuple[int, int, int, int] | None:
    """The outpaint box from ``values`` (side name -> text; a missing side is 0); None unless outpainting."""
    if plan.kind != "outpaint" or plan.outpaint is None:
        return None
    sides = []
    for side in SIDES:
        try:
            sides.append(parse_int(values.get(side, "") or "0", field=side.capitalize(), minimum=None, maximum=None))
        except ApplicationError as exc:
            raise workflow_services.edit_error_located(ApplicationError(exc.message, field="outpaint"), plan) from None
    return sides[0], sides[1], sides[2], sides[3]
