"""labels.csv / labels.jsonl parsing: what each line says, and every bad line's reason."""

from __future__ import annotations

import json

import pytest

from app.core.errors import BadRequestError, PayloadTooLargeError
from app.services.datasets.label_lists import (
    MAX_LABELS_PER_IMAGE,
    LabelList,
    NotALabelListError,
    parse_label_list,
)


def csv_list(text: str, *, max_lines: int = 1000) -> LabelList:
    return parse_label_list("labels.csv", text.encode(), max_lines=max_lines, max_label_chars=20)


def jsonl_list(rows: list[object | str]) -> LabelList:
    text = "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n"
    return parse_label_list("labels.jsonl", text.encode(), max_lines=1000, max_label_chars=20)


def reasons(parsed: LabelList) -> dict[str, str]:
    return {problem["file"]: problem["reason"] for problem in parsed.problems}


def test_csv_lines_give_paths_labels_and_splits() -> None:
    parsed = csv_list(
        "path,labels,split\n"
        "photos/1.jpg,cat,train\n"
        '"photos/2 b.jpg", dog ; indoor ,VAL\n'
        "./photos/3.jpg,cat;cat,\n"
        "photos\\4.jpg,,test\n"
    )
    assert parsed.problems == []
    assert [(line.number, line.parts, line.labels, line.split) for line in parsed.lines] == [
        (2, ("photos", "1.jpg"), ("cat",), "train"),
        (3, ("photos", "2 b.jpg"), ("dog", "indoor"), "validation"),
        (4, ("photos", "3.jpg"), ("cat",), None),  # a label named twice counts once
        (5, ("photos", "4.jpg"), (), "test"),  # no labels: a "none of these" image
    ]


def test_columns_may_come_in_any_order_and_split_is_optional() -> None:
    parsed = csv_list("Labels,Path\ncat,a.jpg\n")
    assert [(line.parts, line.labels, line.split) for line in parsed.lines] == [
        (("a.jpg",), ("cat",), None)
    ]


def test_a_byte_order_mark_is_not_part_of_the_header() -> None:
    parsed = parse_label_list(
        "labels.csv", "\ufeffpath,labels\na.jpg,cat\n".encode(), max_lines=10, max_label_chars=20
    )
    assert len(parsed.lines) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no header row"),
        ("path,labels,colour\na.jpg,cat,red\n", "unknown column(s) 'colour'"),
        ("path,labels,path\na.jpg,cat,b.jpg\n", "a column is named twice"),
    ],
)
def test_a_header_that_cannot_be_read_refuses_the_file(text: str, message: str) -> None:
    with pytest.raises(BadRequestError) as raised:
        csv_list(text)
    assert message in str(raised.value)


def test_a_csv_without_path_and_labels_columns_is_not_a_label_list() -> None:
    with pytest.raises(NotALabelListError, match="its header has no path or labels column"):
        csv_list("id,breed\n000bec180eb18c7604dcecc8fe0dba07,boston_bull\n")
    with pytest.raises(NotALabelListError, match="no labels column"):
        csv_list("path,split\na.jpg,train\n")


def test_a_bare_carriage_return_ends_a_line_and_counts_against_the_cap() -> None:
    with pytest.raises(PayloadTooLargeError, match="more than 3 lines"):
        csv_list("path,labels\r" + "a.jpg,x\r" * 10, max_lines=3)


def test_names_are_compared_composed_and_format_characters_stay() -> None:
    parsed = csv_list("path,labels\ncafe\u0301.jpg,\u0646\u0627\u200c\u062f\n.x.jpg,.hidden\n")
    assert parsed.lines[0].parts == ("caf\u00e9.jpg",)  # NFD in the list, NFC to compare
    assert parsed.lines[0].labels == ("\u0646\u0627\u200c\u062f",)  # a ZWNJ is part of a name
    assert reasons(parsed) == {
        "labels.csv line 3": "label '.hidden' starts with a dot (a hidden folder's name)"
    }


def test_every_bad_csv_line_is_reported_with_its_line_and_reason() -> None:
    long_label = "x" * 21
    parsed = csv_list(
        "path,labels,split\n"
        "a.jpg,cat,train\n"
        "\n"
        "a.jpg,dog,train\n"
        "b.jpg,cat\n"
        f"c.jpg,{long_label},train\n"
        "d.jpg,a/b,train\n"
        "e.jpg,bad\x07name,train\n"
        f"f.jpg,{';'.join(f'l{i}' for i in range(MAX_LABELS_PER_IMAGE + 1))},train\n"
        "g.jpg,cat,holdout\n"
        "/etc/passwd,cat,train\n"
        "../up.jpg,cat,train\n"
        ",cat,train\n"
        "h.jpg,cat;;dog,train\n"
        "i.jpg,dog,test\n"
    )
    assert [line.parts for line in parsed.lines] == [("a.jpg",), ("i.jpg",)]
    found = reasons(parsed)
    assert found == {
        "labels.csv line 3": "an empty line",
        "labels.csv line 4": "'a.jpg' is listed again (first on line 2)",
        "labels.csv line 5": "2 cells, the header has 3",
        "labels.csv line 6": "a label longer than 20 characters ('xxxxxxxxxxxxxxxxxxxxx'...)",
        "labels.csv line 7": "label 'a/b' has a path separator",
        "labels.csv line 8": "label 'bad\\x07name' has a control character",
        "labels.csv line 9": f"{MAX_LABELS_PER_IMAGE + 1} labels; an image may have at most "
        f"{MAX_LABELS_PER_IMAGE}",
        "labels.csv line 10": "split 'holdout' is not train, validation (val) or test",
        "labels.csv line 11": "path '/etc/passwd' is absolute; paths are relative to the "
        "list's folder",
        "labels.csv line 12": "path '../up.jpg' leaves the zip's folder",
        "labels.csv line 13": "an empty path",
        "labels.csv line 14": "an empty label",
    }


def test_a_quoted_cell_over_several_lines_keeps_the_line_it_starts_on() -> None:
    parsed = csv_list('path,labels\n"a\nb.jpg",cat\nc.jpg,dog\n')
    assert reasons(parsed) == {"labels.csv line 2": "path 'a\\nb.jpg' has a control character"}
    assert [(line.number, line.parts) for line in parsed.lines] == [(4, ("c.jpg",))]


def test_jsonl_lines_and_their_problems() -> None:
    parsed = jsonl_list(
        [
            {"path": "a.jpg", "labels": ["cat", "indoor"], "split": "train"},
            {"path": "b.jpg", "labels": []},
            "",
            "{not json",
            ["a", "list"],
            {"path": "c.jpg", "labels": ["cat"], "colour": "red"},
            {"path": "d.jpg"},
            {"path": "e.jpg", "labels": "cat"},
            {"path": 5, "labels": ["cat"]},
            {"path": "f.jpg", "labels": ["cat"], "split": None},
            '{"path": "g.jpg", "labels": [' + "[" * 5000 + "]" * 5000 + "]}",
            '{"path": "h.jpg", "labels": ["cat"], "n": ' + "9" * 5000 + "}",
        ]
    )
    assert [(line.number, line.parts, line.labels, line.split) for line in parsed.lines] == [
        (1, ("a.jpg",), ("cat", "indoor"), "train"),
        (2, ("b.jpg",), (), None),
        (10, ("f.jpg",), ("cat",), None),
    ]
    assert reasons(parsed) == {
        "labels.jsonl line 3": "an empty line",
        "labels.jsonl line 4": "not JSON (Expecting property name enclosed in double quotes at "
        "column 2)",
        "labels.jsonl line 5": "not a JSON object",
        "labels.jsonl line 6": "unknown key(s) 'colour'",
        "labels.jsonl line 7": "no 'labels'",
        "labels.jsonl line 8": '"labels" is not a list of strings',
        "labels.jsonl line 9": '"path" and "split" are strings',
        "labels.jsonl line 11": "not JSON that can be read (too deep or too long a number)",
        "labels.jsonl line 12": "not JSON that can be read (too deep or too long a number)",
    }


def test_a_file_that_is_not_utf8_or_too_long_is_refused() -> None:
    with pytest.raises(BadRequestError, match="not UTF-8"):
        parse_label_list(
            "labels.csv", b"path,labels\n\xff.jpg,cat\n", max_lines=10, max_label_chars=20
        )
    with pytest.raises(PayloadTooLargeError, match="more than 3 lines"):
        csv_list("path,labels\n" + "".join(f"{i}.jpg,cat\n" for i in range(10)), max_lines=3)
