"""The shared kernel's abstract models: timestamps, and the one lifecycle every background job shares.

``LeasedJob`` is what generation jobs, reward-model and fine-tune runs, preference exports, arena
generations and loop rounds have in common: a status (``JobStatus``), the phase a running job is in
(``JobPhase``, shown to people with an ETA), and a lease: whoever claimed the job holds its
``lease_token`` until ``lease_expires_at``, renews it with heartbeats, and every write it makes
afterwards names that token, so a worker whose job was taken from it (reaped, retried, cancelled)
writes nothing and learns that it must stop. :mod:`core.jobs` holds the functions that move a job
through its life; a concrete model adds its own fields and :func:`leased_job_constraints`.
"""

from __future__ import annotations

from django.db import models


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobPhase(models.TextChoices):
    """What a job is doing now, in the words its page shows. Each kind uses the phases it goes through."""

    QUEUED = "queued", "Queued"
    STARTING = "starting", "Starting"
    LOADING_MODEL = "loading_model", "Loading the model"
    READING_DATA = "reading_data", "Reading the data"
    RENDERING_BASE = "rendering_base", "Rendering base images"
    RENDERING = "rendering", "Rendering images"
    TRAINING = "training", "Training"
    RENDERING_CHECKPOINT = "rendering_checkpoint", "Rendering checkpoint images"
    RENDERING_FINAL = "rendering_final", "Rendering the final images"
    ANNOTATING = "annotating", "Annotating"
    EXPORTING = "exporting", "Writing the export"
    EVALUATING = "evaluating", "Evaluating"
    REGISTERING = "registering", "Registering the result"
    DONE = "done", "Done"


class LeasedJob(TimeStampedModel):
    """A background job run by one worker at a time under an expiring lease (see the module docstring)."""

    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED)
    phase = models.CharField(max_length=30, choices=JobPhase.choices, default=JobPhase.QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    # How many times a worker claimed it; the reaper re-queues an abandoned job until max_attempts.
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # The claim: who runs the job, under which token, until when (renewed by heartbeats).
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    leased_by = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Every phase the job entered: [{"phase", "at" (ISO time), "attempt", "step", "progress"}]; the ETA is
    # measured from the current phase's entry.
    progress_history = models.JSONField(default=list, blank=True)

    class Meta:
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in FINAL_STATUSES


def leased_job_constraints(prefix: str) -> list[models.BaseConstraint]:
    """The constraints every leased job table carries, named ``<prefix>_...``: valid status and phase,
    progress in [0, 1], and a running job always has a lease."""
    return [
        models.CheckConstraint(condition=models.Q(status__in=JobStatus.values), name=f"{prefix}_status_valid"),
        models.CheckConstraint(condition=models.Q(phase__in=JobPhase.values), name=f"{prefix}_phase_valid"),
        models.CheckConstraint(condition=models.Q(progress__gte=0, progress__lte=1), name=f"{prefix}_progress_range"),
        models.CheckConstraint(
            condition=~models.Q(status=JobStatus.RUNNING)
            | models.Q(lease_expires_at__isnull=False, lease_token__isnull=False),
            name=f"{prefix}_running_has_lease",
        ),
    ]
