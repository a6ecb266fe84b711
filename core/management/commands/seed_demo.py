"""Create the demo users and project (idempotent). ``make run`` calls it on every start."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate.models import Project, ProjectMembership
from core.roles import GROUP_NAMES, Role

DEMO_USERS: tuple[tuple[str, str, str], ...] = (
    ("demo-admin", "pickwise-admin", Role.ADMIN),
    ("demo-annotator", "pickwise-annotator", Role.ANNOTATOR),
    ("demo-ml", "pickwise-ml", Role.ML_ENGINEER),
)
DEMO_PROJECT = "Shapes world demo"


class Command(BaseCommand):
    help = "Create the demo admin, annotator and ML engineer and a demo project, and print their logins."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            users = {role: self._user(username, password, role) for username, password, role in DEMO_USERS}
            project, _ = Project.objects.get_or_create(
                name=DEMO_PROJECT,
                defaults={
                    "description": "Rank images of the built-in shapes-world model.",
                    "created_by": users[Role.ADMIN],
                },
            )
            for role, user in users.items():
                ProjectMembership.objects.update_or_create(project=project, user=user, defaults={"role": role})
        self.stdout.write(self.style.SUCCESS("Demo logins (username / password):"))
        for username, password, role in DEMO_USERS:
            self.stdout.write(f"  {Role(role).label:<14} {username} / {password}")

    def _user(self, username: str, password: str, role: str) -> Any:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=username, defaults={"is_staff": role == Role.ADMIN})
        if created:
            user.set_password(password)
            user.save()
        user.groups.add(Group.objects.get(name=GROUP_NAMES[role]))
        return user
