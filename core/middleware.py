"""Response middleware shared by every app."""

from __future__ import annotations

from collections.abc import Callable

from django.http import FileResponse, HttpRequest, HttpResponseBase

# Raster images a browser shows and never runs; SVG is not among them (it can carry scripts).
INLINE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif"})


def download_disposition(get_response: Callable[[HttpRequest], HttpResponseBase]) -> Callable[
    [HttpRequest], HttpResponseBase
]:
    """Files served from storage that are not raster images are downloads, never rendered in the page.

    A stored file whose bytes a browser would render (HTML, SVG, a text file sniffed as HTML) would run
    with this site's cookies; ``Content-Disposition: attachment`` (with ``nosniff``) makes the browser
    save it instead. Views that already name a disposition for such a file keep their filename but
    serve it as an attachment.
    """

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        if isinstance(response, FileResponse):
            content_type = response.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type not in INLINE_CONTENT_TYPES:
                disposition = response.get("Content-Disposition", "")
                if not disposition.lower().startswith("attachment"):
                    _, _, params = disposition.partition(";")
                    response["Content-Disposition"] = "attachment" + (f";{params}" if params.strip() else "")
        return response

    return middleware
