"""Page-number pagination whose ``page`` and ``page_size`` are read by ``core.parsing`` (400 naming the
parameter for "", "abc", "²" or 0) and documented with their bounds."""

from __future__ import annotations

from typing import Any

from rest_framework import pagination

from core.parsing import query_int

MAX_PAGE_SIZE = 500


class PageNumberPagination(pagination.PageNumberPagination):
    """``?page=`` (from 1; a page past the last is a 404) and, where a view allows it, ``?page_size=``."""

    page_size = 50
    max_page_size = MAX_PAGE_SIZE

    def get_page_number(self, request: Any, paginator: Any) -> int:
        return query_int(request.query_params, self.page_query_param, minimum=1) or 1

    def get_page_size(self, request: Any) -> int:
        if self.page_size_query_param:
            size = query_int(request.query_params, self.page_size_query_param, minimum=1,
                             maximum=self.max_page_size)
            if size is not None:
                return size
        return self.page_size

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters


class LargePagination(PageNumberPagination):
    """Pages of 50 by default, ``?page_size=`` up to 500 (the annotation workflow's lists)."""

    page_size_query_param = "page_size"
