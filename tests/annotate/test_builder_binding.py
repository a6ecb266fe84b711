"""A new Generate, Images or Ranking is wired to the only component that can feed it, and nothing else."""

from __future__ import annotations

from annotate.builder.components import bind_to_only_sources, new_component


def _add(components, type_):
    component = new_component(type=type_, taken=[c["name"] for c in components])
    components.append(component)
    bind_to_only_sources(components, component)
    return component


def test_each_new_component_takes_the_only_source():
    components = []
    _add(components, "prompt_input")
    generate = _add(components, "generate_button")
    images = _add(components, "images")
    ranking = _add(components, "ranking")
    flags = _add(components, "flags")
    assert generate["config"]["prompt"] == "prompt"
    assert images["config"]["source"] == "generate"
    assert ranking["config"]["images"] == "images"
    assert flags["config"]["images"] == "images"


def test_two_candidates_bind_nothing_and_no_generate_means_the_tasks_images():
    components = []
    images = _add(components, "images")
    assert images["config"]["source"] == "task"  # no Generate button: the task's own images
    _add(components, "images")
    ranking = _add(components, "ranking")
    assert ranking["config"]["images"] == ""  # two Images to choose from: the admin picks


def test_a_waiting_component_takes_the_source_added_after_it_but_keeps_a_chosen_one():
    components = []
    ranking = _add(components, "ranking")
    generate = _add(components, "generate_button")
    assert ranking["config"]["images"] == "" and generate["config"]["prompt"] == ""
    _add(components, "images")
    _add(components, "prompt_input")
    assert ranking["config"]["images"] == "images"
    assert generate["config"]["prompt"] == "prompt"
    _add(components, "images")  # a second Images does not move the ranking off its first
    assert ranking["config"]["images"] == "images"
