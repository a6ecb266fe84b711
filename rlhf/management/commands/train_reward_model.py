"""Train a reward model from the shell with a progress bar (the same services and task body as the worker)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.exceptions import ApplicationError
from rlhf.models import PreferenceExport, RewardModelRun, RunStatus
from rlhf.runs import reward


class Command(BaseCommand):
    help = "Train a reward model on an export (--export ID) or a Parquet file (--data PATH), in this process."

    def add_arguments(self, parser: Any) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--export", type=int, help="preference export id (pickapic or listwise)")
        source.add_argument("--data", help="a Pick-a-Pic or listwise Parquet file")
        parser.add_argument("--user", help="username to check permissions for (default: trusted shell user)")
        parser.add_argument("--backbone", default="",
                            help="empty: the preset's own; 'tiny', 'shapes_vae', 'shapes_conv', a reward-model "
                                 "or CLIP directory, or a cached CLIP hub id")
        parser.add_argument("--preset", default="tiny", choices=RewardModelRun.Preset.values)
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="hyper-parameter override (repeatable), e.g. --set lr=1e-4")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user {options['user']!r}")
        export = None
        if options["export"] is not None:
            export = PreferenceExport.objects.select_related("project").filter(pk=options["export"]).first()
            if export is None:
                raise CommandError(f"No export {options['export']}")
        try:
            run = reward.reward_run_create(
                user=user, export=export, data_path=options["data"] or "", backbone=options["backbone"],
                preset=options["preset"], hyperparameters="\n".join(options["set"]), name=options["name"],
                enqueue=False, trusted_paths=True,  # the shell's user may name any directory of this server
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.field or 'error'}: {exc.message}") from None
        bar = tqdm(desc=f"reward run {run.pk}", unit="step", file=self.stderr._out)

        def echo(step: int, metrics: Any) -> None:
            bar.update(max(0, step - bar.n))
            if "loss" in metrics:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics.get('accuracy', 0):.3f}")

        run = reward.reward_run_execute(run_id=run.pk, echo=echo)
        bar.close()
        if run is None or run.status != RunStatus.SUCCEEDED:
            raise CommandError(f"run {run.pk if run else '?'} {run.status if run else 'vanished'}: "
                               f"{run.error if run else ''}")
        test = (run.results or {}).get("test") or {}
        self.stdout.write(f"run {run.pk} succeeded: {run.registered_version.name} at {run.registered_version.path}"
                          f" (test accuracy {test.get('accuracy')})")
