from __future__ import annotations

from django.contrib import admin

from generation.models import GeneratedImage, GenerationJob, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "parent", "dtype", "default_scheduler", "default_steps", "enabled", "created_at"]
    list_filter = ["enabled", "kind", "dtype"]
    list_select_related = ["parent"]
    search_fields = ["name", "source", "description"]


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    can_delete = False
    fields = ["index", "seed", "sha256", "storage_key", "generation_seconds", "batch_size"]
    readonly_fields = fields


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = ["pk", "prompt", "model_version", "project", "created_by", "status", "num_images", "attempts",
                    "progress", "created_at"]
    list_filter = ["status", "model_version"]
    list_select_related = ["model_version", "project", "created_by"]
    search_fields = ["prompt"]
    readonly_fields = ["lease_token", "lease_expires_at", "leased_by", "params_hash", "started_at", "finished_at"]
    inlines = [GeneratedImageInline]
