from __future__ import annotations

from django.contrib import admin

from projects.models import Project, ProjectMembership


class MembershipInline(admin.TabularInline):
    model = ProjectMembership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at", "archived_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]
