"""Fine-tune a base model version (or continue a LoRA version on one) from the shell with a progress bar
(same services and task body as the worker)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.exceptions import ApplicationError
from generation.models import ModelVersion
from projects.models import Project
from rlhf.models import FineTuneRun, PreferenceExport, RewardModelVersion, RunStatus
from rlhf.runs import finetune


class Command(BaseCommand):
    help = ("LoRA fine-tune of a base model version (or further training of a LoRA version on one): --method "
            "dpo with --export ID or --data PATH, or --method ddpo with --reward NAME or --reward-version ID and "
            "--prompt-source project|export.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--base", required=True, help="base model version name, or a LoRA version to continue")
        parser.add_argument("--method", required=True, choices=FineTuneRun.Method.values)
        parser.add_argument("--export", type=int, help="preference export id")
        parser.add_argument("--data", help="DPO: a Pick-a-Pic Parquet file instead of an export")
        parser.add_argument("--project", type=int, help="DDPO: project whose prompts are sampled")
        parser.add_argument("--reward", default="", help="DDPO: built-in reward (brightness, jpeg_compressibility)")
        parser.add_argument("--reward-version", type=int, help="DDPO: registered reward model id")
        parser.add_argument("--prompt-source", default="", choices=["", "project", "export"])
        parser.add_argument("--user", help="username to check permissions for (default: trusted shell user)")
        parser.add_argument("--preset", default="tiny", choices=FineTuneRun.Preset.values)
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="hyper-parameter override (repeatable), e.g. --set max_steps=500")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        def get(model: Any, **lookup: Any) -> Any:
            found = model.objects.filter(**lookup).first()
            if found is None:
                raise CommandError(f"No {model.__name__} {lookup}")
            return found

        user = get(get_user_model(), username=options["user"]) if options["user"] else None
        try:
            run = finetune.finetune_run_create(
                user=user, base_version=get(ModelVersion, name=options["base"]), method=options["method"],
                project=get(Project, pk=options["project"]) if options["project"] else None,
                export=get(PreferenceExport, pk=options["export"]) if options["export"] else None,
                data_path=options["data"] or "", reward_name=options["reward"],
                reward_version=(get(RewardModelVersion, pk=options["reward_version"])
                                if options["reward_version"] else None),
                prompt_source=options["prompt_source"], preset=options["preset"],
                hyperparameters="\n".join(options["set"]), name=options["name"], enqueue=False,
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.field or 'error'}: {exc.message}") from None
        bar = tqdm(total=run.config.get("max_steps") or run.config.get("iterations"), unit="step",
                   desc=f"fine-tune {run.pk}", file=self.stderr._out)

        def echo(step: int, metrics: Any) -> None:
            bar.update(max(0, step - bar.n))
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "reward_mean", "kl")})

        run = finetune.finetune_run_execute(run_id=run.pk, echo=echo)
        bar.close()
        if run is None or run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"run {run.pk if run else '?'} {run.status if run else 'vanished'}: "
                               f"{run.error if run else ''}")
        self.stdout.write(f"run {run.pk} succeeded: registered {run.result_version.name} "
                          f"(LoRA at {run.result_version.lora_path})")
