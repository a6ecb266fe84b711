from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from projects import roles as role_defs


def roles(request: HttpRequest) -> dict[str, Any]:
    """What the navigation may show: one flag per capability of the signed-in user."""
    user = request.user
    if not user.is_authenticated:
        return {"can": {}}
    return {
        "can": {
            "manage": user.has_perm(role_defs.MANAGE),
            "annotate": user.has_perm(role_defs.ANNOTATE),
            "export": user.has_perm(role_defs.EXPORT),
            "train": user.has_perm(role_defs.TRAIN),
        }
    }
