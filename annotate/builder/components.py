"""The annotation-component catalogue and the validator for template schemas.

Django-free: plain dataclasses in, plain dicts and ``SchemaIssue`` lists out.

A template schema is JSON::

    {"schema_version": 1,
     "components": [{"type": "prompt_input", "name": "prompt", "config": {...}}, ...]}

Each component type declares its configuration as a tuple of ``FieldSpec``; the same specs
drive validation, defaults (``normalise_schema`` fills them in) and the builder's config form.
Rules between fields and between components (references) live in ``_RULES``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.parsing import JSON_MAX_DEPTH, InvalidValue, check_json

SCHEMA_VERSION = 1
MAX_COMPONENTS = 40
MAX_SCHEMA_BYTES = 256 * 1024
MAX_IMAGES = 16
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
IMAGE_SOURCE_TASK = "task"  # Images whose candidates come with the task instead of a Generate button
SELECT_SOURCES = ("static", "model_versions", "style_presets", "image_count")
RANKING_MODES = ("full", "best_of_n", "pairwise")
# Where an edit's source image may come from: an upload by the annotator, the task's own image (its data), or
# one of the candidates generated earlier in the same task.
SOURCE_IMAGE_SOURCES = ("upload", "task", "candidate")
OUTPAINT_MULTIPLE = 8  # outpainting extends each side by a multiple of this many pixels
OUTPAINT_MAX_DEFAULT = 1024  # the largest default extension a template may ask for; the model's limit applies too
EDIT_COMPONENTS = ("source_image", "mask_painter", "outpaint_canvas", "strength")

FieldKind = Literal["str", "text", "int", "bool", "choice", "choice_list", "str_list", "ref", "ref_list"]
IssueKind = Literal["structure", "reference"]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: FieldKind
    label: str
    default: Any = None
    help: str = ""
    max_length: int = 200  # str/text: characters; str_list: characters per item
    minimum: int | None = None  # int: smallest value; str_list, choice_list: fewest items
    maximum: int | None = None  # int: largest value; str_list, choice_list: most items
    choices: tuple[str, ...] = ()  # choice, choice_list: allowed values
    ref_types: tuple[str, ...] = ()  # ref/ref_list: component types a name may point at
    extra_values: tuple[str, ...] = ()  # ref: reserved values accepted besides component names


@dataclass(frozen=True)
class ComponentType:
    type: str
    label: str
    description: str
    fields: tuple[FieldSpec, ...]
    default_name: str

    def field(self, name: str) -> FieldSpec:
        return next(spec for spec in self.fields if spec.name == name)

    def defaults(self) -> dict[str, Any]:
        return {spec.name: _copy(spec.default) for spec in self.fields}


@dataclass(frozen=True)
class SchemaIssue:
    """One problem, located by component (name, or ``components[i]`` when it has none) and field."""

    index: int | None
    component: str
    field: str
    message: str
    kind: IssueKind = "structure"

    @property
    def location(self) -> str:
        return f"{self.component}.{self.field}" if self.field else self.component

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "component": self.component, "field": self.field,
                "location": self.location, "message": self.message}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _label(default: str) -> FieldSpec:
    return FieldSpec("label", "str", "Label", default=default, max_length=200)


CATALOGUE: dict[str, ComponentType] = {
    c.type: c
    for c in (
        ComponentType(
            "instructions", "Instructions", "Markdown shown above the task (sanitised).",
            (FieldSpec("markdown", "text", "Markdown", default="Rank the images from best to worst.",
                       max_length=20_000),),
            "instructions",
        ),
        ComponentType(
            "prompt_input", "Prompt input", "Where the prompt comes from: typed, picked from a list, or the task's.",
            (
                _label("Prompt"),
                FieldSpec("placeholder", "str", "Placeholder", default="Describe the image", max_length=200),
                FieldSpec("mode", "choice", "Prompt source", default="free", choices=("free", "choices", "prompt_set"),
                          help="free: typed; choices: picked from the list below; prompt_set: read-only, from the task"),
                FieldSpec("choices", "str_list", "Prompt choices", default=[], max_length=2000, maximum=100,
                          help="One prompt per line (mode 'choices')"),
                FieldSpec("min_length", "int", "Minimum length", default=1, minimum=0, maximum=4000),
                FieldSpec("max_length", "int", "Maximum length", default=1000, minimum=1, maximum=4000),
            ),
            "prompt",
        ),
        ComponentType(
            "generate_button", "Generate button", "Generates candidates from a prompt and selects.",
            (
                _label("Generate"),
                FieldSpec("prompt", "ref", "Prompt component", default="", ref_types=("prompt_input",)),
                FieldSpec("selects", "ref_list", "Select components that feed it", default=[], ref_types=("select",),
                          maximum=10),
                FieldSpec("count", "int", "Images per generation", default=4, minimum=1, maximum=MAX_IMAGES),
                FieldSpec("allow_regenerate", "bool", "Annotators may regenerate", default=False),
                FieldSpec("max_regenerations", "int", "Regenerations allowed", default=0, minimum=0, maximum=20),
            ),
            "generate",
        ),
        ComponentType(
            "select", "Select", "Single or multiple choice; fixed options or bound to a source.",
            (
                _label("Model"),
                FieldSpec("multiple", "bool", "Multiple choice", default=False),
                FieldSpec("source", "choice", "Options from", default="static", choices=SELECT_SOURCES,
                          help="static: the options below; or the enabled model versions, style presets, image counts"),
                FieldSpec("options", "str_list", "Options", default=["Option A", "Option B"], max_length=200, maximum=50,
                          help="One per line (source 'static'; for 'image_count', whole numbers)"),
                FieldSpec("required", "bool", "Required", default=True),
            ),
            "select",
        ),
        ComponentType(
            "images", "Images", "Grid of generated candidates; click to enlarge.",
            (
                _label("Candidates"),
                FieldSpec("source", "ref", "Image source", default="", ref_types=("generate_button",),
                          extra_values=(IMAGE_SOURCE_TASK,),
                          help="A Generate button, or 'task' for images that come with the task"),
                FieldSpec("count", "int", "Number of images", default=4, minimum=1, maximum=MAX_IMAGES),
                FieldSpec("count_from", "ref", "Count bound to Select", default="", ref_types=("select",)),
                FieldSpec("enlarge", "bool", "Click to enlarge", default=True),
                FieldSpec("blind", "bool", "Blind (hide which model made each image)", default=True),
            ),
            "images",
        ),
        ComponentType(
            "ranking", "Ranking", "Full ranking, best-of-N pick or pairwise A/B; ties and partial optional.",
            (
                _label("Rank the images"),
                FieldSpec("images", "ref", "Images component", default="", ref_types=("images",)),
                FieldSpec("mode", "choice", "Mode", default="full", choices=RANKING_MODES),
                FieldSpec("allow_ties", "bool", "Ties allowed", default=False),
                FieldSpec("allow_partial", "bool", "Partial ranking allowed", default=False),
            ),
            "ranking",
        ),
        ComponentType(
            "rating", "Per-image rating", "A score per image on a small scale.",
            (
                _label("Rate each image"),
                FieldSpec("images", "ref", "Images component", default="", ref_types=("images",)),
                FieldSpec("scale_min", "int", "Lowest score", default=1, minimum=0, maximum=1),
                FieldSpec("scale_max", "int", "Highest score", default=5, minimum=2, maximum=10),
                FieldSpec("labels", "str_list", "Score labels", default=[], max_length=60, maximum=11,
                          help="Optional, one per score from lowest to highest"),
                FieldSpec("required", "bool", "Required", default=False),
            ),
            "rating",
        ),
        ComponentType(
            "flags", "Per-image flags", "Checkboxes per image, e.g. artifact or unsafe.",
            (
                _label("Flags"),
                FieldSpec("images", "ref", "Images component", default="", ref_types=("images",)),
                FieldSpec("options", "str_list", "Flags", default=["artifact", "unsafe"], max_length=60,
                          minimum=1, maximum=20, help="One per line"),
            ),
            "flags",
        ),
        ComponentType(
            "text", "Text", "Free text, e.g. a rationale.",
            (
                _label("Rationale"),
                FieldSpec("placeholder", "str", "Placeholder", default="Why?", max_length=200),
                FieldSpec("required", "bool", "Required", default=False),
                FieldSpec("min_length", "int", "Minimum length", default=0, minimum=0, maximum=5000),
                FieldSpec("max_length", "int", "Maximum length", default=2000, minimum=1, maximum=5000),
            ),
            "rationale",
        ),
        ComponentType(
            "source_image", "Source image",
            "The image an edit starts from: uploaded by the annotator, the task's own image, or a candidate "
            "generated earlier in the task.",
            (
                _label("Source image"),
                FieldSpec("sources", "choice_list", "Allowed sources", default=list(SOURCE_IMAGE_SOURCES),
                          choices=SOURCE_IMAGE_SOURCES, minimum=1, maximum=len(SOURCE_IMAGE_SOURCES),
                          help="upload: the annotator uploads one; task: the task's image; candidate: one "
                               "generated earlier in the task"),
                FieldSpec("generate", "ref", "Generate button it feeds", default="", ref_types=("generate_button",)),
            ),
            "source",
        ),
        ComponentType(
            "mask_painter", "Mask painter",
            "Paint over the part of the source image to repaint (brush, eraser, rectangle, invert, undo).",
            (
                _label("Paint the part to repaint"),
                FieldSpec("source", "ref", "Source image component", default="", ref_types=("source_image",)),
                FieldSpec("brush_size", "int", "Starting brush size (px)", default=32, minimum=1, maximum=512),
                FieldSpec("brush_max", "int", "Largest brush size (px)", default=128, minimum=2, maximum=512),
            ),
            "mask",
        ),
        ComponentType(
            "outpaint_canvas", "Outpaint canvas",
            "Extend the source image beyond its borders, each side by a multiple of 8 px.",
            (
                _label("Extend the image"),
                FieldSpec("source", "ref", "Source image component", default="", ref_types=("source_image",)),
                FieldSpec("default_extend", "int", "Starting extension per side (px)", default=64, minimum=0,
                          maximum=OUTPAINT_MAX_DEFAULT,
                          help="A multiple of 8; the model's own limit caps it on the annotation page"),
            ),
            "outpaint",
        ),
        ComponentType(
            "strength", "Strength",
            "How far an edit may move from the source (a slider sent with the Generate button).",
            (
                _label("Strength"),
                FieldSpec("generate", "ref", "Generate button", default="", ref_types=("generate_button",)),
                FieldSpec("default", "int", "Starting strength (%)", default=75, minimum=1, maximum=100),
                FieldSpec("minimum", "int", "Lowest strength (%)", default=10, minimum=1, maximum=100),
                FieldSpec("maximum", "int", "Highest strength (%)", default=100, minimum=1, maximum=100),
            ),
            "strength",
        ),
    )
}


def empty_schema() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "components": []}


def new_component(*, type: str, taken: Iterable[str]) -> dict[str, Any]:  # noqa: A002 - JSON key
    """A component of ``type`` with default config and a name not in ``taken``."""
    spec = CATALOGUE[type]
    taken = set(taken)
    name, n = spec.default_name, 1
    while name in taken:
        n += 1
        name = f"{spec.default_name}_{n}"
    return {"type": type, "name": name, "config": spec.defaults()}


# The reference each kind of component gets its input from, which a new component is wired to when only one
# component could feed it.
SOURCE_FIELDS: dict[str, str] = {"generate_button": "prompt", "images": "source", "ranking": "images",
                                 "rating": "images", "flags": "images", "source_image": "generate",
                                 "mask_painter": "source", "outpaint_canvas": "source", "strength": "generate"}


def bind_to_only_sources(components: list[dict[str, Any]], new: dict[str, Any]) -> None:
    """Wire ``new`` (just added to ``components``) and whatever waits for a source of its type, in place.

    A new Generate button takes the only Prompt input, a new Images the only Generate button (the task's own
    images when there is none), a new Ranking, Rating or Flags the only Images; an existing component whose
    source is still empty takes ``new`` when ``new`` is now the only component that could feed it.
    """
    for component in components:
        field_name = SOURCE_FIELDS.get(component["type"])
        if field_name is None or component["config"].get(field_name):
            continue
        spec = CATALOGUE[component["type"]].field(field_name)
        matches = [other["name"] for other in components
                   if other is not component and other["type"] in spec.ref_types]
        if component is new:
            if len(matches) == 1:
                component["config"][field_name] = matches[0]
            elif not matches and spec.extra_values:
                component["config"][field_name] = spec.extra_values[0]
        elif matches == [new["name"]]:
            component["config"][field_name] = new["name"]


# --- validation -------------------------------------------------------------------------


@dataclass
class _Collector:
    issues: list[SchemaIssue] = field(default_factory=list)

    def add(self, index: int | None, component: str, field_name: str, message: str,
            kind: IssueKind = "structure") -> None:
        self.issues.append(SchemaIssue(index, component, field_name, message, kind))


def _check_field(spec: FieldSpec, value: Any, report: Callable[[str], None]) -> Any:
    """Return the value when valid (normalised), else report and return the default."""
    if spec.kind in ("str", "text", "choice", "ref"):
        if not isinstance(value, str):
            report("must be a string")
            return _copy(spec.default)
        if spec.kind in ("str", "text") and len(value) > spec.max_length:
            report(f"is {len(value)} characters; at most {spec.max_length} allowed")
            return value[: spec.max_length]
        if spec.kind == "choice" and value not in spec.choices:
            report(f"must be one of {', '.join(spec.choices)}; got {value!r}")
            return _copy(spec.default)
        return value.strip() if spec.kind == "ref" else value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            report("must be a whole number")
            return spec.default
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            report(f"must be between {spec.minimum} and {spec.maximum}; got {value}")
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            report("must be true or false")
            return spec.default
        return value
    # str_list / ref_list / choice_list
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        report("must be a list of strings")
        return _copy(spec.default)
    if spec.maximum is not None and len(value) > spec.maximum:
        report(f"has {len(value)} items; at most {spec.maximum} allowed")
    if spec.minimum is not None and len(value) < spec.minimum:
        report(f"needs at least {spec.minimum} item(s)")
    if spec.kind == "str_list":
        for item in value:
            if len(item) > spec.max_length:
                report(f"has an item of {len(item)} characters; at most {spec.max_length} allowed")
                break
        if any(not item.strip() for item in value):
            report("has an empty item")
    if spec.kind == "choice_list":
        unknown = [item for item in value if item not in spec.choices]
        if unknown:
            report(f"must hold only {', '.join(spec.choices)}; got {unknown[0]!r}")
            return [item for item in value if item in spec.choices]
        if len(set(value)) != len(value):
            report("names a choice twice")
            return list(dict.fromkeys(value))
    return list(value)


def validate_schema(schema: Any) -> list[SchemaIssue]:
    """Every problem of ``schema``: structure (types, ranges, sizes, names) and references."""
    return _validate(schema)[0]


def normalise_schema(schema: Any) -> dict[str, Any]:
    """``schema`` with defaults filled in and unknown keys dropped (valid or not)."""
    return _validate(schema)[1]


def _validate(schema: Any) -> tuple[list[SchemaIssue], dict[str, Any]]:
    out = _Collector()
    normal = empty_schema()
    if not isinstance(schema, dict):
        out.add(None, "schema", "", "The template must be a JSON object with schema_version and components.")
        return out.issues, normal
    try:
        check_json(schema, field="The template", max_depth=JSON_MAX_DEPTH)
    except InvalidValue as exc:
        out.add(None, "schema", "", exc.message)
        return out.issues, normal
    if len(json.dumps(schema, ensure_ascii=False).encode()) > MAX_SCHEMA_BYTES:
        out.add(None, "schema", "", f"The template is larger than {MAX_SCHEMA_BYTES // 1024} KiB.")
        return out.issues, normal
    if schema.get("schema_version") != SCHEMA_VERSION:
        out.add(None, "schema", "schema_version", f"schema_version must be {SCHEMA_VERSION}.")
    unknown_top = sorted(set(schema) - {"schema_version", "components"})
    if unknown_top:
        out.add(None, "schema", unknown_top[0], f"Unknown key {unknown_top[0]!r} in the template.")
    components = schema.get("components")
    if not isinstance(components, list):
        out.add(None, "schema", "components", "components must be a list.")
        return out.issues, normal
    if len(components) > MAX_COMPONENTS:
        out.add(None, "schema", "components", f"A template has at most {MAX_COMPONENTS} components.")
    seen: dict[str, int] = {}
    for index, raw in enumerate(components):
        where = f"components[{index}]"
        if not isinstance(raw, dict):
            out.add(index, where, "", "Each component must be an object with type, name and config.")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            out.add(index, where, "name",
                    f"Component {where}: name must start with a lowercase letter and use only a-z, 0-9 and _ "
                    "(at most 40 characters).")
            name = where
        elif name in seen:
            out.add(index, name, "name",
                    f"Component {name!r}: the name is already used by component {seen[name] + 1}; names must be "
                    "unique.")
        else:
            seen[name] = index
        ctype = raw.get("type")
        spec = CATALOGUE.get(ctype) if isinstance(ctype, str) else None
        if spec is None:
            out.add(index, name, "type",
                    f"Component {name!r}: unknown type {ctype!r}; expected one of {', '.join(CATALOGUE)}.")
            continue
        for key in sorted(set(raw) - {"type", "name", "config"}):
            out.add(index, name, key, f"Component {name!r}: unknown key {key!r}.")
        config = raw.get("config", {})
        if not isinstance(config, dict):
            out.add(index, name, "config", f"Component {name!r}: config must be an object.")
            config = {}
        normal_config: dict[str, Any] = {}
        for key in sorted(set(config) - {f.name for f in spec.fields}):
            out.add(index, name, key, f"{spec.label} {name!r}: unknown field {key!r}.")
        for fspec in spec.fields:
            value = config.get(fspec.name, _copy(fspec.default))
            normal_config[fspec.name] = _check_field(fspec, value, _reporter(out, index, name, spec, fspec))
        normal["components"].append({"type": spec.type, "name": name, "config": normal_config})
    by_name = {c["name"]: c for c in normal["components"]}
    for index, component in enumerate(normal["components"]):
        _check_rules(index, component, by_name, out)
    return out.issues, normal


def _reporter(out: _Collector, index: int, name: str, spec: ComponentType,
              fspec: FieldSpec) -> Callable[[str], None]:
    def report(message: str) -> None:
        out.add(index, name, fspec.name, f"{spec.label} {name!r}: {fspec.label.lower()} ({fspec.name}) {message}.")

    return report


def _check_rules(index: int, component: dict[str, Any], by_name: Mapping[str, dict[str, Any]],
                 out: _Collector) -> None:
    spec = CATALOGUE[component["type"]]
    name, config = component["name"], component["config"]

    def issue(field_name: str, message: str, kind: IssueKind = "structure") -> None:
        out.add(index, name, field_name, f"{spec.label} {name!r}: {message}", kind)

    # References: each ref names a component of the right type.
    for fspec in spec.fields:
        targets = [config[fspec.name]] if fspec.kind == "ref" else config[fspec.name] if fspec.kind == "ref_list" else []
        for target in targets:
            if not target or target in fspec.extra_values:
                continue
            other = by_name.get(target)
            if other is None or other["type"] not in fspec.ref_types:
                kinds = " or ".join(CATALOGUE[t].label for t in fspec.ref_types)
                issue(fspec.name, f"{fspec.name} points at {target!r}, which is not a {kinds} component.", "reference")

    kind = spec.type
    if kind in ("prompt_input", "text") and config["min_length"] > config["max_length"]:
        issue("min_length", "the minimum length is larger than the maximum length.")
    if kind == "prompt_input" and config["mode"] == "choices" and not config["choices"]:
        issue("choices", "mode 'choices' needs at least one prompt to pick from.")
    if kind == "generate_button":
        if not config["prompt"]:
            issue("prompt", "the button points at no prompt; choose a Prompt input.", "reference")
        if not config["allow_regenerate"] and config["max_regenerations"]:
            issue("max_regenerations", "regenerations are counted but regenerating is not allowed.")
    if kind == "select":
        if config["source"] == "static" and len(config["options"]) < 1:
            issue("options", "a Select with fixed options needs at least one option.")
        if config["source"] == "image_count":
            for option in config["options"]:
                if not option.isdigit() or not 1 <= int(option) <= MAX_IMAGES:
                    issue("options", f"image counts must be whole numbers from 1 to {MAX_IMAGES}; got {option!r}.")
                    break
        if config["source"] == "image_count" and config["multiple"]:
            issue("multiple", "an image-count Select picks exactly one count.")
    if kind == "images":
        if not config["source"]:
            issue("source", "has no image source; choose a Generate button or 'task'.", "reference")
        bound = by_name.get(config["count_from"])
        if bound is not None and bound["type"] == "select" and bound["config"]["source"] not in (
            "image_count", "model_versions"
        ):
            issue("count_from", "the count can only be bound to a Select of image counts or model versions.")
    if kind in ("ranking", "rating", "flags") and not config["images"]:
        issue("images", "has no image source; choose an Images component.", "reference")
    if kind == "ranking":
        images = by_name.get(config["images"])
        if images is not None and images["type"] == "images" and not images["config"]["count_from"]:
            count = images["config"]["count"]
            if config["mode"] == "pairwise" and count != 2:
                issue("mode", f"pairwise A/B needs exactly 2 images; {images['name']!r} shows {count}.")
            if config["mode"] in ("full", "best_of_n") and count < 2:
                issue("mode", f"ranking needs at least 2 images; {images['name']!r} shows {count}.")
        if config["mode"] == "pairwise" and config["allow_partial"]:
            issue("allow_partial", "a pairwise choice cannot be partial.")
    if kind == "rating":
        if config["scale_min"] >= config["scale_max"]:
            issue("scale_max", "the highest score must be above the lowest.")
        points = config["scale_max"] - config["scale_min"] + 1
        if config["labels"] and len(config["labels"]) != points:
            issue("labels", f"give one label per score ({points}), or none.")
    if kind in EDIT_COMPONENTS:
        _check_edit_rules(component, by_name, issue)


def _check_edit_rules(component: dict[str, Any], by_name: Mapping[str, dict[str, Any]],
                      issue: Callable[..., None]) -> None:
    """The image-editing components: what each is bound to, and one kind of edit per Generate button."""
    kind, name, config = component["type"], component["name"], component["config"]
    others = [c for c in by_name.values() if c["name"] != name]
    if kind == "source_image":
        if not config["generate"]:
            issue("generate", "feeds no Generate button; choose one.", "reference")
        earlier = [c["name"] for c in others if c["type"] == "source_image" and config["generate"]
                   and c["config"]["generate"] == config["generate"] and _before(c, component, by_name)]
        if earlier:
            issue("generate", f"{config['generate']!r} already takes its source from {earlier[0]!r}; "
                              "a Generate button edits one source image.")
    if kind in ("mask_painter", "outpaint_canvas"):
        if not config["source"]:
            issue("source", "has no source image; choose a Source image component.", "reference")
        rival = next((c for c in others if c["type"] in ("mask_painter", "outpaint_canvas") and config["source"]
                      and c["config"]["source"] == config["source"] and _before(c, component, by_name)), None)
        if rival is not None:
            what = "mask painter" if rival["type"] == "mask_painter" else "outpaint canvas"
            issue("source", f"{config['source']!r} already has the {what} {rival['name']!r}; a source image "
                            "is either inpainted (mask painter) or outpainted (outpaint canvas), once.")
    if kind == "outpaint_canvas" and config["default_extend"] % OUTPAINT_MULTIPLE:
        issue("default_extend", f"the starting extension must be a multiple of {OUTPAINT_MULTIPLE} px; "
                                f"got {config['default_extend']}.")
    if kind == "strength":
        if not config["generate"]:
            issue("generate", "is bound to no Generate button; choose one.", "reference")
        if config["minimum"] > config["maximum"]:
            issue("minimum", "the lowest strength is above the highest.")
        elif not config["minimum"] <= config["default"] <= config["maximum"]:
            issue("default", f"the starting strength must lie between {config['minimum']} and "
                             f"{config['maximum']}; got {config['default']}.")
        plan = edit_plan(list(by_name.values()), config["generate"]) if config["generate"] else None
        if plan is not None and plan.kind == "outpaint":
            issue("generate", f"{config['generate']!r} outpaints, which takes no strength; remove the slider or "
                              "the outpaint canvas.")
        elif config["generate"] in by_name and plan is None:
            issue("generate", f"{config['generate']!r} has no Source image; strength applies to edits only.",
                  "reference")


def _before(a: Mapping[str, Any], b: Mapping[str, Any], by_name: Mapping[str, dict[str, Any]]) -> bool:
    names = list(by_name)
    return names.index(a["name"]) < names.index(b["name"])


@dataclass(frozen=True)
class EditPlan:
    """What a Generate button does when a Source image feeds it: which components give the inputs."""

    kind: Literal["img2img", "inpaint", "outpaint"]
    generate: str  # the Generate button's name
    source: Mapping[str, Any]  # the source_image component
    mask: Mapping[str, Any] | None = None  # the mask_painter (inpaint)
    outpaint: Mapping[str, Any] | None = None  # the outpaint_canvas (outpaint)
    strength: Mapping[str, Any] | None = None  # the strength slider (img2img, inpaint; optional)


def edit_plan(components: Iterable[Mapping[str, Any]], generate: str = "") -> EditPlan | None:
    """The edit the Generate button ``generate`` (the first one fed by a source image when empty) makes,
    or None when no Source image feeds it (plain text-to-image)."""
    items = list(components)
    source = next((c for c in items if c["type"] == "source_image" and c["config"]["generate"]
                   and (not generate or c["config"]["generate"] == generate)), None)
    if source is None:
        return None
    button = source["config"]["generate"]
    bound = [c for c in items if c["type"] in ("mask_painter", "outpaint_canvas")
             and c["config"]["source"] == source["name"]]
    mask = next((c for c in bound if c["type"] == "mask_painter"), None)
    outpaint = next((c for c in bound if c["type"] == "outpaint_canvas"), None)
    strength = next((c for c in items if c["type"] == "strength" and c["config"]["generate"] == button), None)
    if bound and bound[0] is outpaint:
        return EditPlan("outpaint", button, source, outpaint=outpaint)
    if mask is not None:
        return EditPlan("inpaint", button, source, mask=mask, strength=strength)
    return EditPlan("img2img", button, source, strength=strength)


# --- submissions ------------------------------------------------------------------------


class SubmissionError(ValueError):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def ranking_validate_groups(*, component: Mapping[str, Any], image_ids: list[str],
                            groups: list[list[str]]) -> list[list[str]]:
    """Check a ranking answer against its component and return it normalised.

    An answer is a list of tie groups, best first: ``[["img3"], ["img1", "img2"]]`` means
    img3 beat img1 and img2, which tie. Full mode ranks every image (unless partial is
    allowed), best-of-N gives only the first group (the best), pairwise gives ``[[a], [b]]``
    or ``[[a, b]]`` for a tie. Groups of more than one image need ties to be allowed.
    Raises ``SubmissionError`` whose ``field`` is the component's name.
    """
    name, config = component["name"], component["config"]

    def fail(message: str) -> SubmissionError:
        return SubmissionError(f"Ranking {name!r}: {message}", field=name)

    if not isinstance(groups, list) or not all(isinstance(g, list) and g for g in groups):
        raise fail("the answer must be a list of non-empty groups of image ids.")
    flat = [image for group in groups for image in group]
    if not all(isinstance(image, str) for image in flat):
        raise fail("image ids must be strings.")
    if len(set(flat)) != len(flat):
        raise fail("an image appears more than once.")
    unknown = [image for image in flat if image not in image_ids]
    if unknown:
        raise fail(f"unknown image {unknown[0]!r}.")
    if not flat:
        raise fail("nothing was ranked.")
    if not config["allow_ties"] and any(len(group) > 1 for group in groups):
        raise fail("ties are not allowed.")
    mode = config["mode"]
    if mode == "best_of_n":
        if len(groups) != 1:
            raise fail("pick only the best image.")
    elif mode == "pairwise":
        if len(image_ids) != 2 or sorted(flat) != sorted(image_ids):
            raise fail("a pairwise answer compares exactly the two images shown.")
    elif not config["allow_partial"] and sorted(flat) != sorted(image_ids):
        raise fail("rank every image (partial ranking is not allowed).")
    elif len(flat) < 2 and len(image_ids) >= 2:
        raise fail("rank at least two images.")
    return [list(group) for group in groups]


def ranking_groups_from_form(*, component: Mapping[str, Any], image_ids: list[str],
                             data: Mapping[str, Any]) -> list[list[str]]:
    """Read the ranking partial's form fields into tie groups (then validate them).

    ``data`` is a QueryDict-like mapping; ``getlist`` is used when present. Field names:
    full: ``<name>.rank.<image_id>`` = 1..N (blank = unranked); best-of-N: ``<name>.best``
    (several when ties are allowed); pairwise: ``<name>.winner`` = an image id or ``tie``.
    """
    name, mode = component["name"], component["config"]["mode"]

    def getlist(key: str) -> list[str]:
        if hasattr(data, "getlist"):
            return [str(v) for v in data.getlist(key)]
        value = data.get(key)
        return [] if value in (None, "") else [str(v) for v in value] if isinstance(value, list) else [str(value)]

    if mode == "full":
        ranks: dict[int, list[str]] = {}
        for image in image_ids:
            values = [v for v in getlist(f"{name}.rank.{image}") if v.strip()]
            if not values:
                continue
            if not values[0].strip().isdigit():
                raise SubmissionError(f"Ranking {name!r}: ranks are whole numbers.", field=name)
            ranks.setdefault(int(values[0]), []).append(image)
        groups = [ranks[rank] for rank in sorted(ranks)]
    elif mode == "best_of_n":
        best = [v for v in getlist(f"{name}.best") if v]
        groups = [best] if best else []
    else:
        winner = (getlist(f"{name}.winner") or [""])[0]
        if winner == "tie":
            groups = [list(image_ids)]
        elif winner in image_ids:
            groups = [[winner], [image for image in image_ids if image != winner]]
        else:
            groups = []
    return ranking_validate_groups(component=component, image_ids=image_ids, groups=groups)


# --- diff -------------------------------------------------------------------------------


def schema_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Human-readable changes from ``old`` to ``new`` (added, removed, moved, reconfigured)."""
    old_components = normalise_schema(old)["components"] if old else []
    new_components = normalise_schema(new)["components"]
    before = {c["name"]: c for c in old_components}
    after = {c["name"]: c for c in new_components}
    changes: list[str] = []
    for c in new_components:
        if c["name"] not in before:
            changes.append(f"Added {CATALOGUE[c['type']].label} “{c['name']}”")
    for c in old_components:
        if c["name"] not in after:
            changes.append(f"Removed {CATALOGUE[c['type']].label} “{c['name']}”")
    kept_before = [c["name"] for c in old_components if c["name"] in after]
    kept_after = [c["name"] for c in new_components if c["name"] in before]
    if kept_before != kept_after:
        changes.append("Reordered: " + " → ".join(kept_after))
    for name in kept_after:
        a, b = before[name], after[name]
        if a["type"] != b["type"]:
            changes.append(f"“{name}” changed type from {a['type']} to {b['type']}")
            continue
        for key in b["config"]:
            if a["config"].get(key) != b["config"][key]:
                old_value = json.dumps(a["config"].get(key), ensure_ascii=False)
                new_value = json.dumps(b["config"][key], ensure_ascii=False)
                changes.append(f"“{name}”.{key}: {_short(old_value)} → {_short(new_value)}")
    return changes


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
