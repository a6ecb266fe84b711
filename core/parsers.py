"""DRF's JSON parser with ``core.parsing``'s limits on nesting and size (a 400, never a 500)."""

from __future__ import annotations

import codecs
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json

from core.parsing import InvalidValue, check_json

# Generous: fields that hold JSON (a template schema, metadata) have their own, tighter limits naming them.
BODY_MAX_DEPTH = 100
BODY_MAX_NODES = 1_000_000


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than ``BODY_MAX_DEPTH`` (Python's decoder
    would otherwise stop with a ``RecursionError``: a 500) or holding more than ``BODY_MAX_NODES`` values."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            data = json.loads(codecs.getreader(encoding)(stream).read(),
                             parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:
            raise ParseError(f"JSON parse error - the body nests deeper than {BODY_MAX_DEPTH} levels.") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        try:
            return check_json(data, field="the body", max_depth=BODY_MAX_DEPTH, max_nodes=BODY_MAX_NODES)
        except InvalidValue as exc:
            raise ParseError(f"JSON parse error - {exc.message}") from None
