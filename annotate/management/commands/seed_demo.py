"""Create the demo users and projects (idempotent). ``make run`` calls it on every start.

Two projects: "Shapes world demo" (rank text-to-image candidates of the shapes model) and "Rank inpaintings"
(paint over a shape of a shapes-model render, generate four inpaintings, rank them), whose tasks are
imported through the task import, each with its source image as a base64 data URI."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate.builder import services as template_services
from annotate.workflow import services as workflow_services
from annotate.workflow.access import workflow_of
from annotate.workflow.imports import services as import_services
from generation.models import ModelVersion
from generation.selectors import project_model_version_ids
from generation.services import model_version_register
from generation.shapes.world import prompt_captions
from projects.models import Project, ProjectMembership
from projects.roles import GROUP_NAMES, Role

DEMO_USERS: tuple[tuple[str, str, str], ...] = (
    ("demo-admin", "pickwise-admin", Role.ADMIN),
    ("demo-annotator", "pickwise-annotator", Role.ANNOTATOR),
    ("demo-ml", "pickwise-ml", Role.ML_ENGINEER),
)
DEMO_PROJECT = "Shapes world demo"
DEMO_MODEL = "shapes-v1"
INPAINT_PROJECT = "Rank inpaintings"
INPAINT_TASKS = 6


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
            self._demo_model(users[Role.ADMIN])
            self._demo_workflow(project, users[Role.ADMIN])
            inpaint = self._inpaint_project(users)
        if inpaint is not None and not inpaint.tasks.exists():
            self._inpaint_tasks(inpaint, users[Role.ADMIN])  # outside the transaction: the import's heartbeat
        self.stdout.write(self.style.SUCCESS("Demo logins (username / password):"))
        for username, password, role in DEMO_USERS:
            self.stdout.write(f"  {Role(role).label:<14} {username} / {password}")

    def _demo_model(self, admin: Any) -> None:
        """Register the shipped shapes-world model as the enabled demo version, once its weights exist."""
        weights = Path(settings.BASE_DIR) / "generation" / "weights" / "shapes"
        if not (weights / "model_index.json").is_file() or ModelVersion.objects.filter(name=DEMO_MODEL).exists():
            return
        vae_config = weights / "vae" / "config.json"
        side = 64  # the VAE's sample_size is the image side it was built for
        if vae_config.is_file():
            side = int(json.loads(vae_config.read_text()).get("sample_size", side))
        model_version_register(
            name=DEMO_MODEL, source="generation/weights/shapes", dtype="float32", scheduler="dpmpp_2m", steps=12,
            guidance=2.5, width=side, height=side, description="The built-in shapes-world model.",
            created_by=admin,
        )
        self.stdout.write(f"Registered the demo model version {DEMO_MODEL}.")

    def _demo_workflow(self, project: Project, admin: Any) -> None:
        """The RLHF preset as the project's published template, and a prompt set of the shapes world."""
        if workflow_of(project).template_version is None:
            template = template_services.template_create_from_preset(
                project=project, preset="rlhf_image_generation", created_by=admin
            )
            version = template_services.template_version_publish(template=template, created_by=admin)
            workflow_services.project_update_settings(project=project, template_version=version, images_per_task=4)
        demo_model = ModelVersion.objects.filter(name=DEMO_MODEL).first()
        offered = project_model_version_ids(project=project)
        if demo_model is not None and demo_model.pk not in offered:
            workflow_services.project_update_settings(project=project, model_version_ids=[*offered, demo_model.pk])
        if not project.prompts.exists():
            captions = "\n".join(prompt_captions(40, seed=1)).encode()
            report = workflow_services.prompt_set_import(
                project=project, data=captions, filename="shapes-world.txt", created_by=admin,
                name="Shapes world captions", deduplicate=True,
            )
            self.stdout.write(f"Imported {report.created} demo prompts.")

    def _inpaint_project(self, users: dict[str, Any]) -> Project | None:
        """The "Rank inpaintings" project (the preset of that name, four edits a task, the shapes model), once
        the shapes model is registered."""
        demo_model = ModelVersion.objects.filter(name=DEMO_MODEL).first()
        if demo_model is None:
            return None
        admin = users[Role.ADMIN]
        project, _ = Project.objects.get_or_create(name=INPAINT_PROJECT, defaults={
            "description": "Paint over a shape of a shapes-model render, generate four inpaintings, rank them.",
            "created_by": admin})
        for role, user in users.items():
            ProjectMembership.objects.update_or_create(project=project, user=user, defaults={"role": role})
        if workflow_of(project).template_version is None:
            template = template_services.template_create_from_preset(
                project=project, preset="rank_inpaintings", created_by=admin)
            version = template_services.template_version_publish(template=template, created_by=admin)
            workflow_services.project_update_settings(project=project, template_version=version, images_per_task=4)
        if demo_model.pk not in project_model_version_ids(project=project):
            workflow_services.project_update_settings(
                project=project, model_version_ids=[*project_model_version_ids(project=project), demo_model.pk])
        return project

    def _inpaint_tasks(self, project: Project, admin: Any) -> None:
        """Tasks whose source images are renders of the shapes model (one shape each), with a prompt that asks
        for that shape in another colour, imported like any task table (the sources as data URIs)."""
        # torch loads here, on the first start only, not on every `make run`
        from generation.shapes.edits import recolour_cases
        from generation.shapes.model import generate, load_pipeline

        self.stdout.write(f"Rendering {INPAINT_TASKS} source images with the shapes model...")
        cases = recolour_cases(INPAINT_TASKS, seed=23)
        pipe = load_pipeline(Path(settings.BASE_DIR) / "generation" / "weights" / "shapes")
        renders = generate(pipe, [case.scene.caption for case in cases], seed=23)
        rows = []
        for index, (case, render) in enumerate(zip(cases, renders, strict=True)):
            buffer = io.BytesIO()
            render.save(buffer, format="PNG")
            shape = case.scene.objects[0]
            rows.append({
                "key": f"inpaint-demo-{index + 1}", "prompt": case.prompt,
                "source_image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
                "hint": f"Paint over the {shape.colour} {shape.shape}; the prompt asks for it in {case.new_colour}.",
            })
        table = ContentFile("".join(json.dumps(row) + "\n" for row in rows).encode(), name="inpaint-demo.jsonl")
        task_import = import_services.task_import_create(project=project, user=admin, name="Inpainting demo",
                                                         table=table)
        done = import_services.task_import_start(task_import=task_import, inline=True)
        if done.status != "succeeded":
            raise RuntimeError(f"The inpainting demo's import failed: {done.error}")
        self.stdout.write(f"Imported {len(rows)} inpainting tasks into {INPAINT_PROJECT!r}.")

    def _user(self, username: str, password: str, role: str) -> Any:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=username)  # the admin site is for superusers
        if created:
            user.set_password(password)
            user.save()
        user.groups.add(Group.objects.get(name=GROUP_NAMES[role]))
        return user
