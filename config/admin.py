"""The Django admin site, open to active superusers only.

The admin edits rows directly, outside the product's rules (project membership, roles, which
project an object belongs to). Scoping every admin model to the projects a user administers
would have to repeat those rules for every queryset, inline and foreign-key choice; instead
the whole site is for superusers, who may do everything in the product anyway. Project
admins (``is_staff`` or not) get the admin's login page, which tells them they are not
authorized, and nothing they post is saved.
"""

from __future__ import annotations

from django import forms
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest


class SuperuserAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form, which lets in superusers rather than ``is_staff`` users."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "invalid_login": "Please enter the username and password of an active superuser. "
        "Both fields may be case-sensitive.",
    }

    def confirm_login_allowed(self, user: AbstractBaseUser) -> None:
        if not user.is_active or not getattr(user, "is_superuser", False):
            raise forms.ValidationError(self.error_messages["invalid_login"], code="invalid_login",
                                        params={"username": self.username_field.verbose_name})


class PickwiseAdminSite(AdminSite):
    site_header = "Pickwise administration"
    site_title = "Pickwise admin"
    index_title = "Superuser administration"
    login_form = SuperuserAuthenticationForm

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and getattr(user, "is_superuser", False))
