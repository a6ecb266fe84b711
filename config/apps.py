from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class PickwiseAdminConfig(AdminConfig):
    """``django.contrib.admin`` whose ``admin.site`` is :class:`config.admin.PickwiseAdminSite` (superusers only)."""

    default_site = "config.admin.PickwiseAdminSite"
