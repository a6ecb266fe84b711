"""Annotation templates and their versions (``/api/templates/``, ``/api/template-versions/``).

Only project admins build templates. A template's schema is
``{"schema_version": 1, "components": [{"type", "name", "config"}, ...]}``; the server validates it
and a :class:`~pickwise_client.ValidationError` names the component and field (``ranking.images``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from pickwise_client._base import Resource, only_given
from pickwise_client.errors import ConfigurationError
from pickwise_client.types import Template, TemplateValidation, TemplateVersion


class Templates(Resource):
    def list(self, *, project: int | None = None) -> Iterator[Template]:
        return cast(Iterator[Template], self._http.paginate("api/templates/", {"project": project}))

    def get(self, template: int) -> Template:
        return cast(Template, self._http.get(f"api/templates/{int(template)}/"))

    def create(self, project: int, name: str, *, description: str = "",
               schema: Mapping[str, Any] | None = None) -> Template:
        """A template whose version 1 is a draft (with ``schema``, validated in full)."""
        return cast(Template, self._http.post("api/templates/", only_given(
            project=project, name=name, description=description, schema=dict(schema) if schema else None)))

    def from_preset(self, project: int, preset: str) -> Template:
        """A working template from a preset: ``rlhf_image_generation``, ``pairwise_ab_with_tie``,
        ``best_of_n_with_rationale``"""
        return cast(Template, self._http.post("api/templates/preset/", {"project": project, "preset": preset}))

    def update(self, template: int, *, name: str | None = None, description: str | None = None,
               schema: Mapping[str, Any] | None = None) -> Template:
        """Rename, describe, or save ``schema`` as the draft (a new draft when the newest is published)."""
        return cast(Template, self._http.json("PATCH", f"api/templates/{int(template)}/", json_body=only_given(
            name=name, description=description, schema=dict(schema) if schema is not None else None)))

    def save_draft(self, template: int, schema: Mapping[str, Any]) -> TemplateVersion:
        return cast(TemplateVersion, self._http.json("PUT", f"api/templates/{int(template)}/draft/",
                                                     json_body={"schema": dict(schema)}))

    def publish(self, template: int) -> TemplateVersion:
        """Publish the draft; the version is immutable from then on."""
        return cast(TemplateVersion, self._http.post(f"api/templates/{int(template)}/publish/"))

    def duplicate(self, template: int) -> Template:
        return cast(Template, self._http.post(f"api/templates/{int(template)}/duplicate/"))

    def validate(self, schema: Mapping[str, Any]) -> TemplateValidation:
        """Check a schema without storing it: ``{"valid": bool, "errors": [{"location", "message"}]}``."""
        return cast(TemplateValidation, self._http.post("api/templates/validate/", {"schema": dict(schema)},
                                                        idempotent=True))

    def export(self, template: int, *, version: int | None = None,
               path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The JSON ``import_from`` reads back (the newest version, or version number ``version``);
        also written to ``path`` when given."""
        data = cast(dict[str, Any], self._http.get(f"api/templates/{int(template)}/export/", {"version": version}))
        if path is not None:
            Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return data

    def import_from(self, project: int, source: Mapping[str, Any] | str | os.PathLike[str]) -> Template:
        """A new template in ``project`` from an export (a dict, or the path of its JSON file) or a bare schema."""
        if isinstance(source, Mapping):
            data = dict(source)
        else:
            path = Path(source)
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigurationError(f"No template file {str(path)!r}.") from None
            except ValueError as exc:
                raise ConfigurationError(f"{path} is not JSON: {exc}") from None
        return cast(Template, self._http.post("api/templates/import/", {"project": project, "data": data}))

    def versions(self, *, template: int | None = None) -> Iterator[TemplateVersion]:
        return cast(Iterator[TemplateVersion], self._http.paginate("api/template-versions/",
                                                                   {"template": template}))

    def version(self, version: int) -> TemplateVersion:
        return cast(TemplateVersion, self._http.get(f"api/template-versions/{int(version)}/"))
