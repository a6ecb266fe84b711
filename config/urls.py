from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from annotate import api as annotate_api
from annotate.builder import api as template_api
from annotate.workflow import api as workflow_api
from core import views as core_views
from core.api import obtain_token
from generation.urls import api_urlpatterns as generation_api
from projects import api as projects_api
from projects import views as projects_views
from projects.webhooks import urls as webhook_urls
from rlhf.datasets import api as rlhf_api
from rlhf.loop import api as loop_api
from rlhf.runs import api as run_api

router = DefaultRouter()
router.register("projects", annotate_api.ProjectViewSet, basename="project")
router.register("templates", template_api.AnnotationTemplateViewSet, basename="annotation-template")
router.register("exports", rlhf_api.ExportViewSet, basename="export")
router.register("reward-runs", run_api.RewardRunViewSet, basename="reward-run")
router.register("reward-models", run_api.RewardVersionViewSet, basename="reward-model")
router.register("finetune-runs", run_api.FineTuneRunViewSet, basename="finetune-run")
router.register("template-versions", template_api.AnnotationTemplateVersionViewSet, basename="annotation-template-version")

urlpatterns = [
    path("", projects_views.home, name="home"),
    path("healthz", core_views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("projects/<int:project_id>/audit/", projects_views.project_audit, name="project_audit"),
    path("projects/", include("annotate.urls")),
    path("projects/", include("projects.urls")),
    path("projects/", include("projects.webhooks.urls")),
    path("generation/", include("generation.urls")),
    path("ml/", include("rlhf.urls")),
    path("api/me/", projects_api.me, name="api-me"),
    path("api/projects/<int:project_id>/audit/", projects_api.project_audit, name="api-project-audit"),
    path("api/token/", obtain_token, name="api-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", core_views.api_docs, name="api-docs"),
    path("api/", include(generation_api)),
    path("api/", include(projects_api.urlpatterns)),
    path("api/", include(loop_api.urlpatterns)),
    path("api/", include(webhook_urls.api_urlpatterns)),
    path("api/", include(workflow_api.urlpatterns)),
    path("api/", include(router.urls)),
    path("admin/", admin.site.urls),
]

handler404 = "core.views.page_not_found"  # JSON under /api/
handler500 = "core.views.server_error"
handler400 = "core.views.bad_request"
handler403 = "core.views.permission_denied"
