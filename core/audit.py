"""The audit trail: who did what to which object, written explicitly by the services that do it.

Stored by django-auditlog (``auditlog.LogEntry``). Nothing is registered with auditlog and no signal
writes an entry: each service that changes something worth auditing calls :func:`audit_record` in its
transaction, so the entry and the change commit together. An entry keeps the object's type, id and
text, the actor (and their username, in case the user is deleted) and the project's id in
``additional_data``; it has no foreign key to the object or the project, so it outlives them.
"""

from __future__ import annotations

from typing import Any

from auditlog.models import LogEntry
from django.db.models import Model, QuerySet

# What an entry may say happened (``additional_data["event"]``).
EVENTS = {
    "member.added": "added a member",
    "member.removed": "removed a member",
    "member.role_changed": "changed a member's role",
    "annotation.amended": "amended a ranking",
    "annotation.rejected": "rejected a ranking",
    "template.published": "published a template version",
    "export.created": "exported preferences",
    "run.started": "started a run",
    "run.cancelled": "cancelled a run",
    "run.retried": "retried a run",
    "model_version.registered": "registered a model version",
    "model_version.disabled": "disabled a model version",
    "model_version.enabled": "enabled a model version",
}
_CREATING = {"member.added", "export.created", "run.started", "model_version.registered"}


def audit_record(*, event: str, instance: Model, actor: Any, project_id: int | None,
                 changes: dict[str, list[Any]] | None = None, details: dict[str, Any] | None = None) -> LogEntry:
    """Write one entry: ``actor`` (a user, or None for the system) did ``event`` to ``instance``.

    ``changes`` maps a field to ``[old, new]`` (auditlog's format); ``details`` is anything else worth
    keeping (a run's method, an export's format), JSON-ready.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    entry: LogEntry = LogEntry.objects.log_create(
        instance, force_log=True,
        action=LogEntry.Action.CREATE if event in _CREATING else LogEntry.Action.UPDATE,
        actor=user, changes=changes,
        additional_data={"event": event, "project": project_id,
                         "actor": user.get_username() if user is not None else None, "details": details or {}},
    )
    return entry


def audit_entries(*, project_id: int) -> QuerySet[LogEntry]:
    """A project's entries, newest first (kept after the objects, and the project, are deleted)."""
    return (LogEntry.objects.filter(additional_data__project=project_id)
            .select_related("content_type").order_by("-timestamp", "-pk"))


def entry_data(entry: LogEntry) -> dict[str, Any]:
    """One entry as the page and the API show it."""
    data = entry.additional_data or {}
    event = str(data.get("event", ""))
    return {
        "id": entry.pk, "timestamp": entry.timestamp, "event": event, "summary": EVENTS.get(event, event),
        "actor": data.get("actor"), "object_type": entry.content_type.model if entry.content_type_id else "",
        "object_id": entry.object_pk, "object_repr": entry.object_repr, "changes": entry.changes or {},
        "details": data.get("details") or {},
    }
