"""The loop's API: a blind arena's results (``GET /api/projects/<id>/arena/results/``).

Who may read them: ML engineers and admins of the project (the page's rule); its annotators, who vote,
get a 403 (voters must not learn which version won), non-members a 404, and a project that is not an
arena a 404.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from core.exceptions import PermissionDeniedError
from projects.access import project_api, user_can
from projects.models import Project
from rlhf.loop import arena as arena_services
from rlhf.models import Arena


class LeaderboardRowSerializer(serializers.Serializer):
    model_version = serializers.CharField(help_text="The model version's name")
    model_version_id = serializers.IntegerField()
    strength = serializers.FloatField(help_text="Bradley-Terry strength (geometric mean 1 over the versions)")
    rating = serializers.FloatField(help_text="The strength on the Elo scale: 1000 + 400 log10(strength)")
    wins = serializers.IntegerField()
    losses = serializers.IntegerField()
    ties = serializers.IntegerField()


class HeadToHeadSerializer(serializers.Serializer):
    a = serializers.CharField(help_text="The newer version of the pair (the higher id)")
    b = serializers.CharField(help_text="The version it was compared with")
    a_wins = serializers.IntegerField()
    b_wins = serializers.IntegerField()
    ties = serializers.IntegerField()
    win_rate = serializers.FloatField(help_text="a's win rate, ties counting half: (a_wins + ties / 2) / votes")
    ci_low = serializers.FloatField(help_text="Wilson 95% interval of win_rate")
    ci_high = serializers.FloatField()
    votes = serializers.IntegerField()


class ArenaResultsSerializer(serializers.Serializer):
    votes = serializers.IntegerField()
    leaderboard = LeaderboardRowSerializer(many=True)
    head_to_head = HeadToHeadSerializer(many=True)


def arena_results_data(results: arena_services.ArenaResults) -> dict[str, Any]:
    return {
        "votes": results.votes,
        "leaderboard": [{"model_version": row["version"], "model_version_id": row["version_id"],
                         "strength": row["strength"], "rating": row["rating"], "wins": row["wins"],
                         "losses": row["losses"], "ties": row["ties"]} for row in results.leaderboard],
        "head_to_head": [{"a": row["version"], "b": row["against"], "a_wins": row["wins"], "b_wins": row["losses"],
                          "ties": row["ties"], "win_rate": row["rate"], "ci_low": row["low"], "ci_high": row["high"],
                          "votes": row["n"]} for row in results.head_to_head],
    }


@extend_schema(responses=ArenaResultsSerializer,
               summary="The arena's Bradley-Terry leaderboard and head-to-head win rates with Wilson 95% intervals "
                       "(ML engineers and project admins)")
@api_view(["GET"])
@project_api("view")
def arena_results(request: Request, project: Project) -> Response:
    if not (user_can(user=request.user, action="train", project=project)
            or user_can(user=request.user, action="manage", project=project)):
        raise PermissionDeniedError("Only the project's ML engineers and admins see the arena's results "
                                    "(voters must not learn which version won).")
    arena = Arena.objects.filter(project=project).first()
    if arena is None:
        raise NotFound({"detail": f"Project {project.name!r} is not an arena; set one up first."})
    return Response(arena_results_data(arena_services.arena_results(arena=arena)))


urlpatterns = [
    path("projects/<int:project_id>/arena/results/", arena_results, name="api-arena-results"),
]
