"""The dataset card (README.md) that goes with every export."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any


def render_card(
    *,
    title: str,
    source_project: str,
    export_format: str,
    created_at: datetime,
    tie_policy: str,
    filters: Mapping[str, Any],
    counts: Mapping[str, int],
    split_counts: Mapping[str, int],
    split_seed: int,
    content_hash: str,
    weighting: str,
    notes: Sequence[str] = (),
) -> str:
    lines = [
        f"# {title}",
        "",
        f"Preference data exported by Pickwise from project **{source_project}** on "
        f"{created_at.strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    if counts.get("pairs", 0) == 0 and counts.get("rankings", 0) == 0:
        lines += ["**This export is empty: no ranking matched the filters below.**", ""]
    lines += [
        "## Contents",
        "",
        f"- Format: `{export_format}`",
        *(f"- {name.replace('_', ' ').capitalize()}: {value}" for name, value in counts.items()),
        f"- Tie policy: `{tie_policy}`",
        f"- Pair weighting: {weighting}",
        f"- Content hash (sha256 of the data files): `{content_hash}`",
        *(f"- {note}" for note in notes),
        "",
        "## Splits",
        "",
        f"Prompts are assigned to splits by a hash of (seed {split_seed}, prompt), so no prompt is in two splits.",
        "",
        "| split | rows |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in split_counts.items()),
        "",
        "## Filters",
        "",
    ]
    if filters:
        lines += [f"- `{key}`: {value}" for key, value in filters.items()]
    else:
        lines.append("- none (every non-rejected ranking of the project)")
    lines += [
        "",
        "## Columns",
        "",
        "Pair formats follow the Pick-a-Pic v2 schema: `caption`, `jpg_0`, `jpg_1` (image bytes), "
        "`label_0`, `label_1` (1/0 for a preference, 0.5/0.5 for a kept tie), `model_0`, `model_1`, "
        "`user_id`, `ranking_id`, plus provenance: seeds, generation parameters, model version ids, "
        "sha256 and origin of each image (`generated`, or `external` for an imported image, whose seed, "
        "parameters and model version id are empty: it has no seed to regenerate), the task's own key and "
        "metadata, `tie`, `weight` and `split`. Image-editing candidates carry `edit_kind_0/1` (img2img, "
        "inpaint or outpaint; empty for text to image), `edit_0/1` (the edit's provenance as JSON), the source "
        "image and mask (`source_0/1`, `mask_0/1`) and their storage paths.",
        "",
    ]
    return "\n".join(lines)
