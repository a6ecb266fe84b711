"""Parse an uploaded prompt file (CSV, JSONL or plain text) into prompts, without Django (numbers and
JSON limits come from ``core.parsing``).

The parser is all-or-nothing: :func:`parse_prompt_file` returns every problem it finds with
the line it is on, and a caller imports nothing when ``errors`` is not empty. Repeated prompts
are kept unless the caller asks to de-duplicate; then repeats within the file are reported and
skipped, never errors.

Formats
  * ``txt``: one prompt per line; blank lines are ignored.
  * ``csv``: a header row with a ``prompt`` column; optional ``negative_prompt``, ``seed`` and
    ``tags`` (separated by ``;`` or ``|``); any other column goes into ``metadata``.
  * ``jsonl``: one JSON object per line with ``prompt``; optional ``negative_prompt``,
    ``seed`` (integer), ``tags`` (list of strings or a ``;``-separated string) and
    ``metadata`` (object); other keys go into ``metadata``. Blank lines are ignored.

Line numbers are 1-based physical lines of the file (the CSV header is line 1). An error
about the whole file (too large, unknown format) has ``line`` 0.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from core.parsing import JSON_MAX_DEPTH, InvalidValue, check_json, parse_int

Format = Literal["csv", "jsonl", "txt"]
FORMATS: tuple[str, ...] = ("csv", "jsonl", "txt")

MAX_FILE_BYTES = 5 * 1024 * 1024  # 5 MiB
MAX_ROWS = 10_000
MAX_PROMPT_CHARS = 2_000
MAX_NEGATIVE_CHARS = 2_000
MAX_TAGS = 20
MAX_TAG_CHARS = 50
MAX_SEED = 2**32 - 1
KNOWN_KEYS = {"prompt", "negative_prompt", "seed", "tags", "metadata"}


@dataclass(frozen=True)
class ParsedPrompt:
    line: int
    text: str
    negative_prompt: str = ""
    seed: int | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass(frozen=True)
class Duplicate:
    line: int
    text: str
    first_line: int | None  # the earlier line in the same file; None when it duplicates a stored prompt

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "text": self.text, "first_line": self.first_line}


@dataclass
class ParseResult:
    prompts: list[ParsedPrompt] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_FILE_BYTES
    max_rows: int = MAX_ROWS
    max_prompt_chars: int = MAX_PROMPT_CHARS


def detect_format(filename: str) -> Format | None:
    lower = filename.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".txt"):
        return "txt"
    return None


def normalize_prompt(text: str) -> str:
    """The text stored and compared for duplicates: surrounding whitespace removed."""
    return text.strip()


def _decode_lines(data: bytes, result: ParseResult) -> list[str] | None:
    """Decode UTF-8 line by line so an encoding error names its line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines: list[str] = []
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            result.errors.append(
                LineError(number, f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8")
            )
    if any("\x00" in line for line in lines):
        result.errors.append(LineError(0, "the file contains NUL bytes; it does not look like a text file"))
    return None if result.errors else lines


def _split_tags(value: Any, line: int, result: ParseResult) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        items = [part.strip() for part in value.replace("|", ";").split(";")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        result.errors.append(LineError(line, "tags must be a list of strings or a ';'-separated string"))
        return ()
    tags = tuple(dict.fromkeys(tag for tag in items if tag))
    if len(tags) > MAX_TAGS:
        result.errors.append(LineError(line, f"at most {MAX_TAGS} tags per prompt"))
    if any(len(tag) > MAX_TAG_CHARS for tag in tags):
        result.errors.append(LineError(line, f"a tag is at most {MAX_TAG_CHARS} characters"))
    return tags


def _parse_seed(value: Any, line: int, result: ParseResult) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, float):  # a seed in a file is written as a whole number, not 3.0
        value = repr(value)
    try:
        number = parse_int(value, field="seed", minimum=None, maximum=None)  # ASCII digits only ("²" is not)
    except InvalidValue:
        result.errors.append(LineError(line, f"seed {value!r} is not a whole number"))
        return None
    if not 0 <= number <= MAX_SEED:
        result.errors.append(LineError(line, f"seed must be between 0 and {MAX_SEED}"))
        return None
    return number


def _add(
    result: ParseResult,
    limits: Limits,
    seen: dict[str, int],
    *,
    line: int,
    text: Any,
    negative: Any = "",
    seed: Any = None,
    tags: Any = None,
    metadata: dict[str, Any] | None = None,
    deduplicate: bool = True,
) -> None:
    errors_before = len(result.errors)
    if not isinstance(text, str):
        result.errors.append(LineError(line, "prompt must be a string"))
        return
    prompt = normalize_prompt(text)
    if not prompt:
        result.errors.append(LineError(line, "the prompt is empty"))
        return
    if len(prompt) > limits.max_prompt_chars:
        result.errors.append(
            LineError(line, f"the prompt is {len(prompt)} characters; at most {limits.max_prompt_chars} allowed")
        )
    if negative is None:
        negative = ""
    if not isinstance(negative, str):
        result.errors.append(LineError(line, "negative_prompt must be a string"))
        negative = ""
    negative = negative.strip()
    if len(negative) > MAX_NEGATIVE_CHARS:
        result.errors.append(LineError(line, f"the negative prompt is over {MAX_NEGATIVE_CHARS} characters"))
    parsed_seed = _parse_seed(seed, line, result)
    parsed_tags = _split_tags(tags, line, result)
    if len(result.errors) != errors_before:
        return
    if deduplicate and prompt in seen:
        result.duplicates.append(Duplicate(line, prompt, seen[prompt]))
        return
    seen.setdefault(prompt, line)
    result.prompts.append(
        ParsedPrompt(line, prompt, negative, parsed_seed, parsed_tags, dict(metadata or {}))
    )


def _row_limit(result: ParseResult, limits: Limits, rows: int, line: int) -> bool:
    if rows > limits.max_rows:
        result.errors.append(LineError(line, f"too many rows: at most {limits.max_rows} prompts per file"))
        return True
    return False


def _parse_txt(lines: list[str], result: ParseResult, limits: Limits, dedupe: bool) -> None:
    seen: dict[str, int] = {}
    rows = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rows += 1
        if _row_limit(result, limits, rows, number):
            return
        _add(result, limits, seen, line=number, text=line, deduplicate=dedupe)


def _parse_jsonl(lines: list[str], result: ParseResult, limits: Limits, dedupe: bool) -> None:
    seen: dict[str, int] = {}
    rows = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rows += 1
        if _row_limit(result, limits, rows, number):
            return
        try:
            obj = json.loads(line)
            check_json(obj, field="the line", max_depth=JSON_MAX_DEPTH)
        except json.JSONDecodeError as exc:
            result.errors.append(LineError(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        except RecursionError:
            result.errors.append(LineError(number, f"the line nests deeper than {JSON_MAX_DEPTH} levels"))
            continue
        except InvalidValue as exc:
            result.errors.append(LineError(number, exc.message.rstrip(".")))
            continue
        if not isinstance(obj, dict):
            result.errors.append(LineError(number, "each line must be a JSON object"))
            continue
        if "prompt" not in obj:
            result.errors.append(LineError(number, "missing the 'prompt' key"))
            continue
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            result.errors.append(LineError(number, "metadata must be a JSON object"))
            continue
        metadata = {**{k: v for k, v in obj.items() if k not in KNOWN_KEYS}, **metadata}
        _add(result, limits, seen, line=number, text=obj["prompt"], negative=obj.get("negative_prompt", ""),
             seed=obj.get("seed"), tags=obj.get("tags"), metadata=metadata, deduplicate=dedupe)


def _parse_csv(lines: list[str], result: ParseResult, limits: Limits, dedupe: bool) -> None:
    if not lines:
        result.errors.append(LineError(1, "the file is empty; expected a header row with a 'prompt' column"))
        return
    # csv.reader over the decoded text; line_num tracks physical lines (quoted newlines included).
    reader = csv.reader(io.StringIO("\n".join(lines) + "\n"), strict=True)
    try:
        header = [column.strip().lower() for column in next(reader)]
    except (csv.Error, StopIteration) as exc:
        result.errors.append(LineError(1, f"unreadable header row: {exc}"))
        return
    if "prompt" not in header:
        result.errors.append(LineError(1, f"missing column 'prompt' (found: {', '.join(header) or 'none'})"))
        return
    if len(set(header)) != len(header):
        result.errors.append(LineError(1, "the header names a column twice"))
        return
    seen: dict[str, int] = {}
    rows = 0
    while True:
        start_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.errors.append(LineError(start_line, f"malformed CSV: {exc}"))
            return
        if not row or all(not cell.strip() for cell in row):
            continue
        rows += 1
        if _row_limit(result, limits, rows, start_line):
            return
        if len(row) != len(header):
            result.errors.append(LineError(start_line, f"expected {len(header)} columns, found {len(row)}"))
            continue
        values = dict(zip(header, row, strict=True))
        metadata = {key: value for key, value in values.items() if key not in KNOWN_KEYS and value != ""}
        _add(result, limits, seen, line=start_line, text=values["prompt"],
             negative=values.get("negative_prompt", ""), seed=values.get("seed"), tags=values.get("tags"),
             metadata=metadata, deduplicate=dedupe)


def parse_prompt_file(data: bytes, *, fmt: str, limits: Limits | None = None,
                      deduplicate: bool = False) -> ParseResult:
    """Parse ``data`` in format ``fmt`` (csv, jsonl or txt); see the module docstring. With ``deduplicate``,
    a prompt repeated within the file is reported in ``duplicates`` and kept once."""
    limits = limits or Limits()
    result = ParseResult()
    if fmt not in FORMATS:
        result.errors.append(LineError(0, f"unknown format {fmt!r}; expected csv, jsonl or txt"))
        return result
    if len(data) > limits.max_bytes:
        result.errors.append(
            LineError(0, f"the file is {len(data)} bytes; at most {limits.max_bytes} bytes allowed")
        )
        return result
    lines = _decode_lines(data, result)
    if lines is None:
        return result
    {"txt": _parse_txt, "jsonl": _parse_jsonl, "csv": _parse_csv}[fmt](lines, result, limits, deduplicate)
    if result.errors:
        result.prompts.clear()
    elif not result.prompts and not result.duplicates:
        result.errors.append(LineError(0, "the file holds no prompts"))
    return result
