"""Schema validation: every bad input names the component and the field."""

from __future__ import annotations

import copy

import pytest

from annotate.builder.components import (
    CATALOGUE,
    SubmissionError,
    edit_plan,
    new_component,
    normalise_schema,
    ranking_groups_from_form,
    ranking_validate_groups,
    schema_diff,
    validate_schema,
)
from annotate.builder.presets import PRESETS, rlhf_image_generation


def _locations(schema):
    return {issue.location for issue in validate_schema(schema)}


def _schema(*components):
    return {"schema_version": 1, "components": [{"type": t, "name": n, "config": c} for t, n, c in components]}


@pytest.mark.parametrize("key", list(PRESETS))
def test_every_preset_is_valid(key):
    assert validate_schema(PRESETS[key].build()) == []


def test_unknown_component_type_names_the_component():
    assert _locations(_schema(("carousel", "spin", {}))) == {"spin.type"}


def test_duplicate_names_point_at_the_second_component():
    issues = validate_schema(_schema(("text", "why", {}), ("text", "why", {})))
    assert [(i.index, i.location) for i in issues] == [(1, "why.name")]


def test_bad_name_is_located_by_index():
    assert _locations(_schema(("text", "Bad Name", {}))) == {"components[0].name"}


def test_ranking_without_image_source():
    assert _locations(_schema(("ranking", "rank", {}))) == {"rank.images"}


def test_ranking_pointing_at_a_non_images_component():
    issues = validate_schema(_schema(("text", "why", {}), ("ranking", "rank", {"images": "why"})))
    assert [i.location for i in issues] == ["rank.images"]
    assert "not a Images component" in issues[0].message


def test_images_without_source():
    assert _locations(_schema(("images", "pics", {"source": ""}))) == {"pics.source"}


def test_generate_button_without_prompt():
    assert _locations(_schema(("generate_button", "go", {}))) == {"go.prompt"}


def test_generate_button_pointing_at_missing_prompt():
    assert _locations(_schema(("generate_button", "go", {"prompt": "nowhere"}))) == {"go.prompt"}


@pytest.mark.parametrize(("config", "field"), [
    ({"count": 0}, "count"),
    ({"count": 17}, "count"),
    ({"count": "4"}, "count"),
    ({"count": True}, "count"),
    ({"max_regenerations": 99, "allow_regenerate": True}, "max_regenerations"),
])
def test_counts_out_of_range(config, field):
    schema = _schema(("prompt_input", "prompt", {}), ("generate_button", "go", {"prompt": "prompt", **config}))
    assert _locations(schema) == {f"go.{field}"}


def test_images_count_out_of_range():
    assert _locations(_schema(("images", "pics", {"source": "task", "count": 40}))) == {"pics.count"}


def test_pairwise_needs_exactly_two_images():
    schema = _schema(("images", "pics", {"source": "task", "count": 3}),
                     ("ranking", "rank", {"images": "pics", "mode": "pairwise"}))
    assert _locations(schema) == {"rank.mode"}


@pytest.mark.parametrize(("ctype", "config", "field"), [
    ("text", {"label": "x" * 201}, "label"),
    ("text", {"placeholder": "x" * 500}, "placeholder"),
    ("instructions", {"markdown": "x" * 20_001}, "markdown"),
    ("select", {"options": ["x" * 201]}, "options"),
    ("prompt_input", {"mode": "choices", "choices": ["ok"] * 101}, "choices"),
])
def test_oversized_text(ctype, config, field):
    assert _locations(_schema((ctype, "c", config))) == {f"c.{field}"}


def test_text_min_above_max_and_unknown_field():
    assert _locations(_schema(("text", "why", {"min_length": 50, "max_length": 10, "colour": "red"}))) == {
        "why.min_length", "why.colour"}


def test_select_sources():
    assert _locations(_schema(("select", "s", {"source": "model_versions"}))) == set()
    assert "s.source" in _locations(_schema(("select", "s", {"source": "llm"})))
    assert _locations(_schema(("select", "s", {"source": "static", "options": []}))) == {"s.options"}
    assert _locations(_schema(("select", "s", {"source": "image_count", "options": ["2", "99"]}))) == {"s.options"}


def test_top_level_problems():
    assert _locations({"components": []}) == {"schema.schema_version"}
    assert _locations([]) == {"schema"}
    assert _locations({"schema_version": 1, "components": [{"type": "text", "name": "t", "config": {}}] * 41}) >= {
        "schema.components"}


def test_normalise_fills_defaults():
    normal = normalise_schema(_schema(("text", "why", {})))
    assert normal["components"][0]["config"]["max_length"] == 2000


RANKING = {"name": "rank", "config": {"mode": "full", "allow_ties": False, "allow_partial": False}}


def _ranking(**config):
    component = copy.deepcopy(RANKING)
    component["config"].update(config)
    return component


def test_full_ranking_submissions():
    ids = ["a", "b", "c"]
    assert ranking_validate_groups(component=_ranking(), image_ids=ids, groups=[["b"], ["a"], ["c"]]) == [
        ["b"], ["a"], ["c"]]
    with pytest.raises(SubmissionError, match="ties are not allowed") as exc:
        ranking_validate_groups(component=_ranking(), image_ids=ids, groups=[["a", "b"], ["c"]])
    assert exc.value.field == "rank"
    with pytest.raises(SubmissionError, match="partial"):
        ranking_validate_groups(component=_ranking(), image_ids=ids, groups=[["a"], ["b"]])
    assert ranking_validate_groups(component=_ranking(allow_ties=True, allow_partial=True), image_ids=ids,
                                   groups=[["a", "b"]]) == [["a", "b"]]
    with pytest.raises(SubmissionError, match="unknown image"):
        ranking_validate_groups(component=_ranking(), image_ids=ids, groups=[["a"], ["b"], ["zzz"]])
    with pytest.raises(SubmissionError, match="more than once"):
        ranking_validate_groups(component=_ranking(), image_ids=ids, groups=[["a"], ["a"], ["c"]])


def test_form_fields_become_groups():
    ids = ["a", "b", "c"]
    data = {"rank.rank.a": "2", "rank.rank.b": "1", "rank.rank.c": "2"}
    assert ranking_groups_from_form(component=_ranking(allow_ties=True), image_ids=ids, data=data) == [
        ["b"], ["a", "c"]]
    pair = _ranking(mode="pairwise", allow_ties=True)
    assert ranking_groups_from_form(component=pair, image_ids=["a", "b"], data={"rank.winner": "tie"}) == [["a", "b"]]
    assert ranking_groups_from_form(component=pair, image_ids=["a", "b"], data={"rank.winner": "b"}) == [["b"], ["a"]]
    best = _ranking(mode="best_of_n")
    assert ranking_groups_from_form(component=best, image_ids=ids, data={"rank.best": "c"}) == [["c"]]


def test_diff_names_changes():
    old = rlhf_image_generation()
    new = copy.deepcopy(old)
    new["components"][1], new["components"][2] = new["components"][2], new["components"][1]
    new["components"][-1]["config"]["required"] = True
    new["components"].pop(0)
    changes = schema_diff(old, new)
    assert any(c.startswith("Removed Instructions") for c in changes)
    assert any(c.startswith("Reordered:") for c in changes)
    assert "“rationale”.required: false → true" in changes


@pytest.mark.parametrize("ctype", list(CATALOGUE))
def test_every_default_component_can_be_saved_as_a_draft(ctype):
    schema = {"schema_version": 1, "components": [new_component(type=ctype, taken=[])]}
    assert [i for i in validate_schema(schema) if i.kind == "structure"] == []


# --- image-editing components (issue 23) ---------------------------------------------------


def _edit(*components):
    return _schema(("prompt_input", "prompt", {}), ("generate_button", "go", {"prompt": "prompt"}), *components)


def test_edit_presets_plan_their_kind():
    assert edit_plan(PRESETS["rank_img2img_edits"].build()["components"]).kind == "img2img"
    inpaint = edit_plan(PRESETS["rank_inpaintings"].build()["components"])
    assert (inpaint.kind, inpaint.mask["name"], inpaint.strength["name"]) == ("inpaint", "mask", "strength")
    outpaint = edit_plan(PRESETS["rank_outpaintings"].build()["components"])
    assert (outpaint.kind, outpaint.outpaint["name"], outpaint.strength) == ("outpaint", "outpaint", None)
    assert edit_plan(PRESETS["rlhf_image_generation"].build()["components"]) is None


@pytest.mark.parametrize(("components", "location", "words"), [
    ((("source_image", "src", {"generate": "go", "sources": []}),), "src.sources", "at least 1"),
    ((("source_image", "src", {"generate": "go", "sources": ["upload", "camera"]}),), "src.sources", "'camera'"),
    ((("source_image", "src", {"generate": "go", "sources": ["task", "task"]}),), "src.sources", "twice"),
    ((("source_image", "src", {"generate": "go", "sources": "upload"}),), "src.sources", "list of strings"),
    ((("source_image", "src", {}),), "src.generate", "feeds no Generate button"),
    ((("source_image", "src", {"generate": "prompt"}),), "src.generate", "not a Generate button"),
    ((("source_image", "src", {"generate": "go"}), ("source_image", "src2", {"generate": "go"})), "src2.generate",
     "already takes its source from 'src'"),
    ((("source_image", "src", {"generate": "go"}), ("mask_painter", "m", {})), "m.source", "no source image"),
    ((("source_image", "src", {"generate": "go"}), ("mask_painter", "m", {"source": "go"})), "m.source",
     "not a Source image"),
    ((("source_image", "src", {"generate": "go"}), ("mask_painter", "m", {"source": "src", "brush_size": 0})),
     "m.brush_size", "between 1 and 512"),
    ((("source_image", "src", {"generate": "go"}), ("mask_painter", "m", {"source": "src", "brush_max": 9999})),
     "m.brush_max", "between 2 and 512"),
    ((("source_image", "src", {"generate": "go"}), ("mask_painter", "m", {"source": "src"}),
      ("outpaint_canvas", "o", {"source": "src"})), "o.source", "already has the mask painter 'm'"),
    ((("source_image", "src", {"generate": "go"}), ("outpaint_canvas", "o", {"source": "src", "default_extend": 12})),
     "o.default_extend", "multiple of 8 px; got 12"),
    ((("source_image", "src", {"generate": "go"}), ("outpaint_canvas", "o", {"source": "src", "default_extend": 2048})),
     "o.default_extend", "between 0 and 1024"),
    ((("source_image", "src", {"generate": "go"}), ("strength", "s", {"generate": "go", "default": 5})),
     "s.default", "between 10 and 100; got 5"),
    ((("source_image", "src", {"generate": "go"}), ("strength", "s", {"generate": "go", "minimum": 90, "maximum": 20})),
     "s.minimum", "lowest strength is above the highest"),
    ((("source_image", "src", {"generate": "go"}), ("strength", "s", {"generate": "go", "default": 0.5})),
     "s.default", "whole number"),
    ((("strength", "s", {"generate": "go"}),), "s.generate", "has no Source image"),
    ((("source_image", "src", {"generate": "go"}), ("outpaint_canvas", "o", {"source": "src"}),
      ("strength", "s", {"generate": "go"})), "s.generate", "outpaints, which takes no strength"),
])
def test_edit_component_config_errors_are_located(components, location, words):
    issues = validate_schema(_edit(*components))
    assert [i.location for i in issues] == [location]
    assert words in issues[0].message
    assert issues[0].message.startswith(CATALOGUE[next(c[0] for c in components if c[1] == location.split(".")[0])]
                                        .label)


def test_edit_components_bind_to_their_only_source():
    from annotate.builder.components import bind_to_only_sources

    components = _edit()["components"]
    for ctype in ("source_image", "mask_painter", "strength"):
        new = new_component(type=ctype, taken=[c["name"] for c in components])
        components.append(new)
        bind_to_only_sources(components, new)
    by_type = {c["type"]: c for c in components}
    assert by_type["source_image"]["config"]["generate"] == "go"
    assert by_type["mask_painter"]["config"]["source"] == "source"
    assert by_type["strength"]["config"]["generate"] == "go"
    assert validate_schema({"schema_version": 1, "components": components}) == []
