"""Label lists: a zip's `labels.csv` or `labels.jsonl` naming each image's labels (and, if it
likes, its split) instead of class folders, as Vertex AutoML's and Rekognition's manifests do.
Parsing only, no files read: which line says what, and each bad line with its reason (the
ingest report lists them as it lists skipped files).

    labels.csv     path,labels[,split]       a header row, then one image per row; labels
                   photos/1.jpg,cat;indoor   separated by ";"
    labels.jsonl   {"path": "photos/1.jpg", "labels": ["cat"], "split": "train"}
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from app.core.errors import BadRequestError, PayloadTooLargeError

CSV_NAME = "labels.csv"
JSONL_NAME = "labels.jsonl"
LABEL_LIST_NAMES = (CSV_NAME, JSONL_NAME)
LABEL_SEPARATOR = ";"
MAX_LABELS_PER_IMAGE = 50
COLUMNS = ("path", "labels", "split")
REQUIRED_COLUMNS = ("path", "labels")
# What a split cell may say, and the split it means (the split folders' names).
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


class NotALabelListError(ValueError):
    """A labels.csv whose header does not name the path and labels columns: some other CSV
    (a Kaggle set's labels.csv is `id,breed`), skipped like any file that is not an image."""


@dataclass(frozen=True)
class LabelLine:
    number: int  # 1-based line of the file
    parts: tuple[str, ...]  # the image's path in the zip, relative to the list's folder
    labels: tuple[str, ...]
    split: str | None  # train, validation, test; None: the seeded split decides


@dataclass
class LabelList:
    name: str  # labels.csv or labels.jsonl
    lines: list[LabelLine] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    # Every path a line names, bad lines' included (their files are not "unlisted").
    named: set[tuple[str, ...]] = field(default_factory=set)

    def problem(self, number: int, reason: str) -> None:
        self.problems.append({"file": f"{self.name} line {number}", "reason": reason})


def label_problem(label: str, *, max_chars: int) -> str | None:
    """Why `label` cannot be a class name, or None. Names become folder names in exports, so
    no path separators or control characters; surrounding spaces are stripped before."""
    if not label:
        return "an empty label"
    if len(label) > max_chars:
        return f"a label longer than {max_chars} characters ({label[:40]!r}...)"
    if "/" in label or "\\" in label:
        return f"label {label!r} has a path separator"
    if label.startswith("."):
        return f"label {label!r} starts with a dot (a hidden folder's name)"
    if _has_control_character(label):
        return f"label {label!r} has a control character"
    return None


def _has_control_character(text: str) -> bool:
    """Control characters and lone surrogates; format characters such as ZWNJ are part of
    names in several scripts and stay."""
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def nfc(parts: tuple[str, ...]) -> tuple[str, ...]:
    """A path's parts in Unicode NFC: a zip made on macOS names files decomposed (NFD), a
    spreadsheet's text is composed, and both mean the same file."""
    return tuple(unicodedata.normalize("NFC", part) for part in parts)


def parse_label_list(name: str, data: bytes, *, max_lines: int, max_label_chars: int) -> LabelList:
    """Every line of `data`, the file `name` (one of LABEL_LIST_NAMES). A line that cannot be
    used is a problem, not an error; a file that cannot be read at all (not UTF-8, no usable
    header, more lines than `max_lines`) is a BadRequestError or PayloadTooLargeError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"{name} is not UTF-8 text (byte {exc.start})") from exc
    parsed = LabelList(name=name)
    if name == CSV_NAME:
        rows = _csv_rows(parsed, text, max_lines=max_lines)
    else:
        rows = _jsonl_rows(parsed, text, max_lines=max_lines)
    seen: dict[tuple[str, ...], int] = {}
    for number, raw in rows:
        line = _line(parsed, number, raw, max_label_chars=max_label_chars)
        if line is None:
            continue
        if (first := seen.get(line.parts)) is not None:
            parsed.problem(
                number, f"{'/'.join(line.parts)!r} is listed again (first on line {first})"
            )
            continue
        seen[line.parts] = number
        parsed.lines.append(line)
    return parsed


def _too_many_lines(name: str, max_lines: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{name} has more than {max_lines} lines; a zip may hold at most {max_lines} files"
    )


def _csv_rows(parsed: LabelList, text: str, *, max_lines: int) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise BadRequestError(f"{parsed.name} line 1: {exc}") from exc
    if header is None or not any(cell.strip() for cell in header):
        raise BadRequestError(
            f"{parsed.name} has no header row; its first line names the columns: "
            f"{','.join(COLUMNS)} (split is optional)"
        )
    columns = [cell.strip().lower() for cell in header]
    if missing := [c for c in REQUIRED_COLUMNS if c not in columns]:
        raise NotALabelListError(
            f"not a label list: its header has no {' or '.join(missing)} column"
        )
    if unknown := [c for c in columns if c not in COLUMNS]:
        raise BadRequestError(
            f"{parsed.name} line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"the columns are {', '.join(COLUMNS)}"
        )
    if len(set(columns)) != len(columns):
        raise BadRequestError(f"{parsed.name} line 1: a column is named twice")
    rows: list[tuple[int, dict[str, Any]]] = []
    while True:
        number = reader.line_num + 1
        if number > max_lines + 1:  # counted as the reader counts: "\r" ends a line too
            raise _too_many_lines(parsed.name, max_lines)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            parsed.problem(number, f"not a CSV row ({exc})")
            continue
        if not any(cell.strip() for cell in cells):
            parsed.problem(number, "an empty line")
            continue
        if len(cells) != len(columns):
            parsed.problem(number, f"{len(cells)} cells, the header has {len(columns)}")
            continue
        row: dict[str, Any] = dict(zip(columns, cells, strict=True))
        row["labels"] = row["labels"].split(LABEL_SEPARATOR) if row["labels"].strip() else []
        rows.append((number, row))
    return rows


def _jsonl_rows(
    parsed: LabelList, text: str, *, max_lines: int
) -> list[tuple[int, dict[str, Any]]]:
    lines = text.split("\n")
    if len(lines) > max_lines + 1:
        raise _too_many_lines(parsed.name, max_lines)
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, content in enumerate(lines, start=1):
        if not content.strip():
            # The newline that ends the last line is not an empty line.
            if number < len(lines):
                parsed.problem(number, "an empty line")
            continue
        try:
            row = json.loads(content)
        except json.JSONDecodeError as exc:
            parsed.problem(number, f"not JSON ({exc.msg} at column {exc.colno})")
            continue
        except (ValueError, RecursionError):  # a number too long to convert, nesting too deep
            parsed.problem(number, "not JSON that can be read (too deep or too long a number)")
            continue
        if not isinstance(row, dict):
            parsed.problem(number, "not a JSON object")
            continue
        if unknown := sorted(set(row) - set(COLUMNS)):
            parsed.problem(number, f"unknown key(s) {', '.join(map(repr, unknown))}")
            continue
        if missing := [key for key in REQUIRED_COLUMNS if key not in row]:
            parsed.problem(number, f"no {' or '.join(map(repr, missing))}")
            continue
        labels = row["labels"]
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            parsed.problem(number, '"labels" is not a list of strings')
            continue
        if not isinstance(row["path"], str) or not isinstance(row.get("split") or "", str):
            parsed.problem(number, '"path" and "split" are strings')
            continue
        rows.append((number, row))
    return rows


def _line(
    parsed: LabelList, number: int, row: dict[str, Any], *, max_label_chars: int
) -> LabelLine | None:
    parts = _path_parts(row["path"])
    if isinstance(parts, str):
        parsed.problem(number, parts)
        return None
    parsed.named.add(parts)
    split_cell = (row.get("split") or "").strip().lower()
    split = SPLIT_NAMES.get(split_cell) if split_cell else None
    if split_cell and split is None:
        parsed.problem(number, f"split {split_cell!r} is not train, validation (val) or test")
        return None
    labels = list(
        dict.fromkeys(unicodedata.normalize("NFC", label.strip()) for label in row["labels"])
    )
    if len(labels) > MAX_LABELS_PER_IMAGE:
        parsed.problem(
            number, f"{len(labels)} labels; an image may have at most {MAX_LABELS_PER_IMAGE}"
        )
        return None
    for label in labels:
        if (reason := label_problem(label, max_chars=max_label_chars)) is not None:
            parsed.problem(number, reason)
            return None
    return LabelLine(number=number, parts=parts, labels=tuple(labels), split=split)


def _path_parts(path: str) -> tuple[str, ...] | str:
    """The normalised parts of a listed path, or why it is not one."""
    cleaned = path.strip().replace("\\", "/")
    if not cleaned:
        return "an empty path"
    if _has_control_character(cleaned):
        return f"path {cleaned!r} has a control character"
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
        return f"path {cleaned!r} is absolute; paths are relative to the list's folder"
    parts = tuple(part for part in PurePosixPath(cleaned).parts if part != ".")
    if ".." in parts:
        return f"path {cleaned!r} leaves the zip's folder"
    if not parts:
        return "an empty path"
    return nfc(parts)
