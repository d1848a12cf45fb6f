"""Checks of file sources before any Spark work: files, columns and types.

Only file listings, CSV headers, Parquet schemas and the first ``SAMPLE_ROWS``
lines of text files are read (with Python and pyarrow), so a wrong path, a
missing column or a column of the wrong type stops the run in a second, with
one message that names the file, the column, what was expected and what was
found. Row-level problems (one bad line among good ones) are not errors here:
ingest sends those rows to quarantine.

A text column has the wrong type when none of its sampled values parses as
the expected type (e.g. a timestamp column holding dates in another format).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import os
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

SAMPLE_ROWS = 1000

#: What a column must hold. Timestamps name their encoding.
KINDS = ("id", "number", "unix_seconds", "unix_millis", "iso8601", "categorical", "multi_categorical", "text")
_EXPECTED = {
    "id": "an id (integer or string)",
    "number": "a number",
    "unix_seconds": "a timestamp in unix seconds (an integer)",
    "unix_millis": "a timestamp in unix milliseconds (an integer)",
    "iso8601": "an ISO-8601 timestamp like 2024-06-30T12:00:00",
    "categorical": "a categorical value (string, integer or boolean)",
    "multi_categorical": "a separated string or a list of strings",
    "text": "text",
}


class SourceError(ValueError):
    """A source file is missing, lacks a column or holds a column of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One expected column (or field, in a file without a header).

    Attributes:
        name: the column's name in the file (or the field's documented name).
        kind: one of ``KINDS``.
        key: the config key that names this column, quoted in messages.
    """

    name: str
    kind: str
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown column kind {self.kind!r}, expected one of {', '.join(KINDS)}")

    def label(self) -> str:
        return f"'{self.name}'" + (f" ({self.key})" if self.key else "")


class Problems:
    """Collects every problem of a source and raises them as one ``SourceError``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, file: str, what: str, expected: str, found: str, fix: str = "") -> None:
        self.lines.append(f"{file}: {what}: expected {expected}, found {found}." + (f" {fix}" if fix else ""))

    def raise_if_any(self, source: str) -> None:
        if self.lines:
            raise SourceError(f"source {source} cannot be read:\n  " + "\n  ".join(self.lines))


# -- files ---------------------------------------------------------------------------
def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def data_files(path: str) -> list[str]:
    """The data files at ``path``: the file itself, or a folder's files not starting with '_' or '.'."""
    fs, local = _fs(path)
    info = fs.get_file_info(local)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        return []
    selector = pafs.FileSelector(local, recursive=True)
    found = []
    for entry in fs.get_file_info(selector):
        rel = os.path.relpath(entry.path, local)
        if entry.type == pafs.FileType.File and not any(p.startswith(("_", ".")) for p in rel.split(os.sep)):
            found.append(entry.path if "://" not in path else path.rstrip("/") + "/" + rel)
    return sorted(found)


def require_file(problems: Problems, path: str, what: str) -> str | None:
    """The first data file at ``path``, or None after recording a 'missing' problem."""
    files = data_files(path)
    if not files:
        problems.add(path, what, "a file (or a folder of files)", "nothing at that path",
                     "Check source.path / the table's path in the config.")
        return None
    return files[0]


def read_lines(path: str, encoding: str, limit: int = SAMPLE_ROWS + 1) -> list[str]:
    """The first ``limit`` non-empty lines of a text file, decoded with ``encoding``."""
    fs, local = _fs(path)
    with fs.open_input_stream(local) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")
        lines = []
        for line in text:
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
                if len(lines) >= limit:
                    break
    return lines


# -- value parsing (the same rules Spark's try_cast applies) ----------------------------
def _is_int(value: str) -> bool:
    try:
        int(value.strip())
        return True
    except ValueError:
        return False


def _is_number(value: str) -> bool:
    try:
        float(value.strip())
        return True
    except ValueError:
        return False


def _is_iso(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value.strip())
        return True
    except ValueError:
        return False


_PARSES = {
    "id": lambda v: bool(v.strip()),
    "number": _is_number,
    "unix_seconds": _is_int,
    "unix_millis": _is_int,
    "iso8601": _is_iso,
}


def check_values(problems: Problems, file: str, column: Column, values: Sequence[str]) -> None:
    """Record a problem when no sampled value of a text column parses as its kind."""
    parses = _PARSES.get(column.kind)
    if parses is None:
        return
    present = [v for v in values if v is not None and v.strip()]
    if any(parses(v) for v in present):
        return
    examples = ", ".join(repr(v) for v in dict.fromkeys(present[:50]).keys() if v)
    found = f"{examples} (none of the first {len(values)} rows parse)" if present else (
        f"only empty values in the first {len(values)} rows"
    )
    problems.add(file, f"column {column.label()}", _EXPECTED[column.kind], found[:300])


def id_type(values: Iterable[str]) -> str:
    """'bigint' when every non-empty sampled id is an integer, else 'string'."""
    present = [v for v in values if v is not None and v.strip()]
    return "bigint" if present and all(_is_int(v) for v in present) else "string"


# -- text files without a header (MovieLens 100K and 1M) ------------------------------------
def check_delimited(
    problems: Problems, path: str, *, sep: str, fields: Sequence[Column], encoding: str
) -> list[list[str]]:
    """Check field count and field types of a headerless delimited file.

    Returns:
        The sampled lines that have the expected number of fields, split.
    """
    file = require_file(problems, path, "file")
    if file is None:
        return []
    lines = read_lines(file, encoding)[:SAMPLE_ROWS]
    if not lines:
        problems.add(file, "content", f"lines of {len(fields)} fields", "an empty file")
        return []
    split = [line.split(sep) for line in lines]
    good = [parts for parts in split if len(parts) == len(fields)]
    if not good:
        names = ", ".join(f.name for f in fields)
        problems.add(
            file, "every line", f"{len(fields)} fields separated by {sep!r} ({names})",
            f"{len(split[0])} fields in line 1: {lines[0][:120]!r} (and no line of the first {len(lines)} fits)",
            "Is this the right MovieLens format for source.kind?",
        )
        return []
    for index, column in enumerate(fields):
        check_values(problems, f"{file} field {index + 1}", column, [parts[index] for parts in good])
    return good


# -- CSV files with a header ------------------------------------------------------------------
@dataclasses.dataclass
class CsvSample:
    """Header and sampled rows of a CSV file.

    Attributes:
        file: the file that was read.
        header: the column names in file order.
        rows: sampled rows as dicts column -> string value.
    """

    file: str
    header: list[str]
    rows: list[dict[str, str]]

    def values(self, column: str) -> list[str]:
        return [row.get(column) or "" for row in self.rows]


def check_csv(
    problems: Problems, path: str, *, columns: Sequence[Column], sep: str = ",", encoding: str = "utf-8"
) -> CsvSample | None:
    """Check that a CSV file has a header with ``columns`` whose values parse as their kinds."""
    file = require_file(problems, path, "file")
    if file is None:
        return None
    lines = read_lines(file, encoding)
    if not lines:
        problems.add(file, "header", "a header line naming the columns", "an empty file")
        return None
    reader = csv.reader(lines, delimiter=sep)
    header = [h.strip() for h in next(reader)]
    rows = [dict(zip(header, row)) for row in reader]
    sample = CsvSample(file=file, header=header, rows=rows)
    for column in columns:
        if column.name not in header:
            problems.add(
                file, f"column {column.label()}", f"a column named '{column.name}' in the header",
                f"columns {', '.join(header)}", "Map the right column name in the config.",
            )
            continue
        check_values(problems, file, column, sample.values(column.name))
    return sample


# -- Parquet --------------------------------------------------------------------------------------
def _parquet_type_ok(kind: str, dtype: pa.DataType) -> bool:
    is_int = pa.types.is_integer(dtype)
    is_str = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    if kind == "id":
        return is_int or is_str
    if kind == "number":
        return is_int or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)
    if kind in ("unix_seconds", "unix_millis"):
        return is_int or pa.types.is_timestamp(dtype)
    if kind == "iso8601":
        return is_str or pa.types.is_timestamp(dtype) or pa.types.is_date(dtype)
    if kind == "categorical":
        return is_int or is_str or pa.types.is_boolean(dtype)
    if kind == "multi_categorical":
        return is_str or ((pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and (
            pa.types.is_string(dtype.value_type) or pa.types.is_integer(dtype.value_type)))
    return True


def check_parquet(problems: Problems, path: str, *, columns: Sequence[Column]) -> pa.Schema | None:
    """Check that a Parquet file or folder has ``columns`` of the right types (schema only)."""
    if require_file(problems, path, "Parquet data") is None:
        return None
    fs, local = _fs(path)
    try:
        schema = pads.dataset(local, format="parquet", filesystem=fs).schema
    except (pa.ArrowInvalid, OSError) as exc:
        problems.add(path, "content", "Parquet data", f"a file pyarrow cannot read ({exc})")
        return None
    for column in columns:
        if column.name not in schema.names:
            problems.add(
                path, f"column {column.label()}", f"a column named '{column.name}'",
                f"columns {', '.join(schema.names)}", "Map the right column name in the config.",
            )
        elif not _parquet_type_ok(column.kind, schema.field(column.name).type):
            problems.add(path, f"column {column.label()}", _EXPECTED[column.kind],
                         f"type {schema.field(column.name).type}")
        elif column.kind == "iso8601" and pa.types.is_string(schema.field(column.name).type):
            head = pads.dataset(local, format="parquet", filesystem=fs).head(SAMPLE_ROWS, columns=[column.name])
            check_values(problems, path, column, [v or "" for v in head.column(0).to_pylist()])
    return schema
