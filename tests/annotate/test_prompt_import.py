"""The Django-free prompt-file parser: formats, line-numbered errors, duplicates, limits."""

from __future__ import annotations

import json

from annotate.workflow.prompt_import import Limits, detect_format, parse_prompt_file


def lines(result):
    return [(e.line, e.message) for e in result.errors]


def test_plain_text_one_prompt_per_line_blank_lines_ignored():
    result = parse_prompt_file(b"a cat\n\n  a dog  \r\na cat\n", fmt="txt", deduplicate=True)
    assert result.ok
    assert [(p.line, p.text) for p in result.prompts] == [(1, "a cat"), (3, "a dog")]
    assert [(d.line, d.first_line) for d in result.duplicates] == [(4, 1)]


def test_repeated_prompts_are_kept_unless_deduplicating():
    result = parse_prompt_file(b"a cat\na dog\na cat\n", fmt="txt")
    assert result.ok
    assert [(p.line, p.text) for p in result.prompts] == [(1, "a cat"), (2, "a dog"), (3, "a cat")]
    assert result.duplicates == []


def test_csv_with_metadata_columns():
    data = (
        b"prompt,negative_prompt,seed,tags,style\n"
        b'a cat,blurry,42,animal;cute,photo\n'
        b'"a dog, running",,,,\n'
    )
    result = parse_prompt_file(data, fmt="csv")
    assert result.ok, result.errors
    cat, dog = result.prompts
    assert (cat.text, cat.negative_prompt, cat.seed, cat.tags, cat.metadata) == (
        "a cat", "blurry", 42, ("animal", "cute"), {"style": "photo"})
    assert (dog.line, dog.text, dog.seed, dog.tags) == (3, "a dog, running", None, ())


def test_csv_missing_prompt_column_is_an_error_on_line_1():
    result = parse_prompt_file(b"text,seed\na cat,1\n", fmt="csv")
    assert lines(result) == [(1, "missing column 'prompt' (found: text, seed)")]
    assert result.prompts == []


def test_csv_bad_seed_and_empty_prompt_name_their_lines_and_nothing_is_kept():
    result = parse_prompt_file(b"prompt,seed\nfine,1\n,2\nok,abc\n", fmt="csv")
    assert [line for line, _ in lines(result)] == [3, 4]
    assert "empty" in lines(result)[0][1]
    assert "not a whole number" in lines(result)[1][1]
    assert result.prompts == []


def test_jsonl_with_metadata_and_errors():
    good = [{"prompt": "a cat", "seed": 3, "tags": ["x"], "negative_prompt": "ugly", "camera": "35mm"}]
    result = parse_prompt_file("\n".join(json.dumps(o) for o in good).encode(), fmt="jsonl")
    assert result.ok
    (cat,) = result.prompts
    assert (cat.seed, cat.tags, cat.negative_prompt, cat.metadata) == (3, ("x",), "ugly", {"camera": "35mm"})

    bad = b'{"prompt": "ok"}\n{"prompt": \n{"text": "x"}\n[1, 2]\n{"prompt": "s", "seed": -1}\n'
    result = parse_prompt_file(bad, fmt="jsonl")
    assert [line for line, _ in lines(result)] == [2, 3, 4, 5]
    assert "invalid JSON" in lines(result)[0][1]
    assert "missing the 'prompt' key" in lines(result)[1][1]
    assert result.prompts == []


def test_encoding_error_names_the_line():
    result = parse_prompt_file(b"fine\nalso fine\nbad \xff\xfe byte\n", fmt="txt")
    assert [line for line, _ in lines(result)] == [3]
    assert "UTF-8" in lines(result)[0][1]


def test_utf8_bom_and_unicode_are_fine():
    result = parse_prompt_file("\ufeffun chat é\n猫\n".encode(), fmt="txt")
    assert [p.text for p in result.prompts] == ["un chat é", "猫"]


def test_over_long_prompt():
    result = parse_prompt_file(b"short\n" + b"x" * 2001 + b"\n", fmt="txt")
    assert lines(result) == [(2, "the prompt is 2001 characters; at most 2000 allowed")]


def test_too_many_rows_and_too_large_file():
    result = parse_prompt_file(b"a\nb\nc\nd\n", fmt="txt", limits=Limits(max_rows=3))
    assert lines(result) == [(4, "too many rows: at most 3 prompts per file")]
    result = parse_prompt_file(b"a" * 101, fmt="txt", limits=Limits(max_bytes=100))
    assert lines(result)[0][0] == 0 and "at most 100 bytes" in lines(result)[0][1]


def test_empty_file_and_unknown_format():
    assert lines(parse_prompt_file(b"\n\n", fmt="txt")) == [(0, "the file holds no prompts")]
    assert "unknown format" in lines(parse_prompt_file(b"a", fmt="xml"))[0][1]
    assert detect_format("P.CSV") == "csv" and detect_format("p.jsonl") == "jsonl" and detect_format("p.pdf") is None


def test_html_in_prompts_is_kept_verbatim_for_escaping_on_output():
    result = parse_prompt_file(b"<script>alert(1)</script> a cat\n", fmt="txt")
    assert result.prompts[0].text == "<script>alert(1)</script> a cat"
