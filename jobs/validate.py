"""Checks of file sources before any Spark work: files, columns and types.

Only file listings, CSV headers, Parquet schemas and the first ``SAMPLE_ROWS``
lines of text files are read (pyarrow, through ``jobs.storage``: any file
system), so a wrong path, a missing column or a column of the wrong type stops
the run in a second, with one message that names the file, the column, what
was expected, what was found and which setting (or which file) to fix.
Row-level problems (one bad line among good ones) are not errors here:
ingest sends those rows to quarantine.

A text column has the wrong type when none of its sampled values parses as
the expected type (e.g. a timestamp column holding dates in another format).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as pads

from jobs.storage import Location

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
def require_file(problems: Problems, path: str | Location, what: str, hint: str = "") -> Location | None:
    """The first data file at ``path`` (the file, or a folder's first file), or None after recording it missing.

    Args:
        hint: how to point the source at the right file (e.g. which config key names it).
    """
    location = Location(path)
    files = location.files()
    if not files:
        problems.add(location.display(), what, "a file (or a folder of files)", "nothing at that path", hint)
        return None
    return files[0]


def read_lines(path: str | Location, encoding: str, limit: int = SAMPLE_ROWS + 1) -> list[str]:
    """The first ``limit`` non-empty lines of a text file, decoded with ``encoding``."""
    location = Location(path)
    with location.fs.open_input_stream(location.path) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")
        lines = []
        for line in text:
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
                if len(lines) >= limit:
                    break
    return lines


def _missing_columns(
    problems: Problems, file: str, columns: Sequence[Column], found: Sequence[str], where: str, hint: str
) -> None:
    """Record the ``columns`` missing from ``found``.

    A column a config key names gets its own line saying which key to set;
    the others (a file with a fixed layout) share one line with the file's hint.
    """
    missing = [c for c in columns if c.name not in found]
    for column in missing:
        if column.key:
            problems.add(file, f"column {column.label()}", f"a column named '{column.name}'{where}",
                         f"columns {', '.join(found)}", f"Set {column.key} to the name of the column that holds it.")
    fixed = [c for c in missing if not c.key]
    if len(fixed) == 1:
        problems.add(file, f"column {fixed[0].label()}", f"a column named '{fixed[0].name}'{where}",
                     f"columns {', '.join(found)}", hint)
    elif fixed:
        names = ", ".join(c.label() for c in fixed)
        problems.add(file, "header" if where else "schema", f"the columns {names}", f"columns {', '.join(found)}", hint)


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
    problems: Problems, path: str | Location, *, sep: str, fields: Sequence[Column], encoding: str, hint: str = ""
) -> list[list[str]]:
    """Check field count and field types of a headerless delimited file.

    Args:
        hint: what the file should hold and where the source is configured
            (said when the file is missing, empty or split into other fields).

    Returns:
        The sampled lines that have the expected number of fields, split.
    """
    file = require_file(problems, path, "file", hint)
    if file is None:
        return []
    lines = read_lines(file, encoding)[:SAMPLE_ROWS]
    if not lines:
        problems.add(file.display(), "content", f"lines of {len(fields)} fields", "an empty file", hint)
        return []
    split = [line.split(sep) for line in lines]
    good = [parts for parts in split if len(parts) == len(fields)]
    if not good:
        names = ", ".join(f.name for f in fields)
        problems.add(
            file.display(), "every line", f"{len(fields)} fields separated by {sep!r} ({names})",
            f"{len(split[0])} fields in line 1: {lines[0][:120]!r} (and no line of the first {len(lines)} fits)",
            hint,
        )
        return []
    for index, column in enumerate(fields):
        check_values(problems, f"{file.display()} field {index + 1}", column, [parts[index] for parts in good])
    return good


# -- what the checks of a table return ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CsvSample:
    """Header and sampled rows of a CSV file.

    Attributes:
        file: the file that was read.
        header: the column names in file order ([] for a file without a header line).
        rows: sampled rows (at most ``SAMPLE_ROWS``) as dicts column -> string value.
    """

    file: Location
    header: list[str]
    rows: list[dict[str, str]]

    @property
    def empty(self) -> bool:
        """No data row below the header."""
        return not self.rows

    def values(self, column: str) -> list[str]:
        return [row.get(column) or "" for row in self.rows]

    def id_type(self, column: str) -> str:
        """bigint or string: bigint when every sampled value of ``column`` is an integer."""
        return id_type(self.values(column))


@dataclasses.dataclass(frozen=True)
class ParquetSample:
    """Schema of a Parquet file or folder.

    Attributes:
        location: the file or folder.
        schema: its Arrow schema.
        empty: the data holds no row (only counted for optional tables; else False).
    """

    location: Location
    schema: pa.Schema
    empty: bool = False

    def id_type(self, column: str) -> str:
        """bigint or string: bigint for an integer column."""
        return "bigint" if pa.types.is_integer(self.schema.field(column).type) else "string"


# -- CSV files with a header ------------------------------------------------------------------
def check_csv(
    problems: Problems, path: str | Location, *, columns: Sequence[Column], sep: str = ",", encoding: str = "utf-8",
    hint: str = "", optional: bool = False,
) -> CsvSample | None:
    """Check that a CSV file has a header with ``columns`` whose values parse as their kinds.

    Args:
        hint: what the file should hold and where the source is configured
            (said when the file is missing or a column without a config key is).
        optional: the source can go without this table, so a file with no
            rows below its header (or no header) is fine: its sample is
            ``empty`` and no value is checked. Otherwise such a file is a problem.
    """
    file = require_file(problems, path, "file", hint)
    if file is None:
        return None
    lines = read_lines(file, encoding)
    if not lines:
        if optional:
            return CsvSample(file=file, header=[], rows=[])
        problems.add(file.display(), "header", "a header line naming the columns", "an empty file", hint)
        return None
    reader = csv.reader(lines, delimiter=sep)
    header = [h.strip() for h in next(reader)]
    sample = CsvSample(file=file, header=header, rows=[dict(zip(header, row)) for row in reader])
    if sample.empty and not optional:
        problems.add(file.display(), "content", "rows below the header", "only the header line", hint)
        return None
    _missing_columns(problems, file.display(), columns, header, " in the header", hint)
    for column in columns:
        if column.name in header and not sample.empty:
            check_values(problems, file.display(), column, sample.values(column.name))
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


def check_parquet(
    problems: Problems, path: str | Location, *, columns: Sequence[Column], hint: str = "", optional: bool = False
) -> ParquetSample | None:
    """Check that a Parquet file or folder has ``columns`` of the right types (schema only).

    Args:
        hint, optional: as for ``check_csv`` (only an optional table's rows are
            counted, from the files' metadata).
    """
    location = Location(path)
    if require_file(problems, location, "Parquet data", hint) is None:
        return None
    try:
        data = pads.dataset(location.path, format="parquet", filesystem=location.fs)
        schema = data.schema
    except (pa.ArrowInvalid, OSError) as exc:
        problems.add(location.display(), "content", "Parquet data", f"a file pyarrow cannot read ({exc})", hint)
        return None
    sample = ParquetSample(location, schema, empty=optional and data.count_rows() == 0)
    _missing_columns(problems, location.display(), columns, schema.names, "", hint)
    for column in columns:
        if column.name not in schema.names:
            continue
        if not _parquet_type_ok(column.kind, schema.field(column.name).type):
            problems.add(location.display(), f"column {column.label()}", _EXPECTED[column.kind],
                         f"type {schema.field(column.name).type}")
        elif column.kind == "iso8601" and pa.types.is_string(schema.field(column.name).type) and not sample.empty:
            head = data.head(SAMPLE_ROWS, columns=[column.name])
            check_values(problems, location.display(), column, [v or "" for v in head.column(0).to_pylist()])
    return sample
