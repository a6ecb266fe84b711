"""Register (or update) a model version and check that its weights load on this machine's device."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from core.exceptions import ApplicationError
from generation import services, worker
from generation.inference import SCHEDULERS
from generation.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Register a base text-to-image pipeline (--source PATH_OR_HUB_ID) or a LoRA version "
        "(--parent NAME --lora PATH), then load it once to check it works."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="unique name, e.g. sd15-base or shapes-v1")
        parser.add_argument("--source", default="", help="diffusers pipeline directory or hub id (base versions)")
        parser.add_argument("--parent", default="", help="name of the parent version (LoRA versions)")
        parser.add_argument("--lora", default="", help="LoRA weights: a directory or a .safetensors file")
        parser.add_argument("--lora-scale", type=float, default=1.0)
        parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
        # Generation settings: unless given, a LoRA version's are its parent's, an updated version's stay as
        # they are, and a new base version gets GenerationParams' defaults (dpmpp_2m, 30 steps, 7.0, 512x512).
        inherit = " (default: the parent's for a LoRA version, unchanged on --update, else %s)"
        parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), help=inherit % "dpmpp_2m")
        parser.add_argument("--steps", type=int, help=inherit % "30")
        parser.add_argument("--guidance", type=float, help=inherit % "7.0")
        parser.add_argument("--width", type=int, help=inherit % "512")
        parser.add_argument("--height", type=int, help=inherit % "512")
        parser.add_argument("--negative-prompt", help=inherit % "none")
        parser.add_argument("--description", default="")
        parser.add_argument("--disabled", action="store_true", help="register without offering it to annotators")
        parser.add_argument("--update", action="store_true",
                            help="replace the settings of an existing version (generation settings not given stay)")
        parser.add_argument("--skip-check", action="store_true", help="do not load the weights")
        parser.add_argument("--allow-download", action="store_true",
                            help="let the load check download a hub id (otherwise the local HF cache only)")

    def handle(self, *args: Any, **options: Any) -> None:
        parent = None
        if options["parent"]:
            parent = ModelVersion.objects.filter(name=options["parent"]).first()
            if parent is None:
                raise CommandError(f"No model version named {options['parent']!r}.")
        with transaction.atomic():
            try:
                version = services.model_version_register(
                    name=options["name"], source=options["source"], parent=parent, lora_path=options["lora"],
                    lora_scale=options["lora_scale"], dtype=options["dtype"], scheduler=options["scheduler"],
                    steps=options["steps"], guidance=options["guidance"], width=options["width"],
                    height=options["height"], negative_prompt=options["negative_prompt"],
                    enabled=not options["disabled"], description=options["description"], update=options["update"],
                )
            except ApplicationError as exc:
                raise CommandError(f"{exc.field}: {exc.message}" if exc.field else exc.message) from None
            if not options["skip_check"]:
                try:
                    pipeline_class = worker.check_loads(version, local_files_only=not options["allow_download"])
                except (OSError, ValueError, RuntimeError) as exc:
                    # Leaving the atomic block by an exception rolls the registration back.
                    raise CommandError(f"{version.name} does not load: {exc}") from exc
                self.stdout.write(f"Loaded {version.name} as {pipeline_class}.")
        state = "enabled" if version.enabled else "disabled"
        self.stdout.write(self.style.SUCCESS(f"Registered model version {version.name} (id {version.pk}, {state})."))
