"""CRM exports (CSV) into the landing zone, through a mapping file.

Every row of every file is either turned into one change event or quarantined with a reason;
the report says so per file (``rows = loaded + quarantined``) and is written beside the
quarantined rows under ``$REVORCH_HOME/imports/``. The events of one import land as one
batch (all or nothing), so ingestion stays the one path into the state store.

Event ids are deterministic: a digest of the record, its properties and either the row's
own timestamp or, when the file has none, the file's content. Importing the same file again
lands events ingestion already has, so it has no second effect.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
from tqdm import tqdm

from revorch.landing import LandingZone, durable_file
from revorch.sources.csv_import.mapping import (
    Condition,
    FieldRule,
    FileMapping,
    IdRule,
    Mapping,
    MappingError,
    TimestampColumn,
    fold,
    state_field_types,
)

TRUE = ("true", "yes", "y", "t", "1")
FALSE = ("false", "no", "n", "f", "0")
_SEP = "\x1f"  # between a reason and its detail inside one column, until they are split


@dataclass
class FileReport:
    file: str
    entry: str
    object_type: str
    sha256: str
    rows: int = 0
    loaded: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class ImportReport:
    mapping: str
    source: str
    imported_at: str
    batch: str | None = None
    files: list[FileReport] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    report_path: str | None = None
    quarantine_path: str | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def loaded(self) -> int:
        return sum(f.loaded for f in self.files)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)

    def lines(self) -> list[str]:
        """The report as a person reads it in a terminal."""
        width = max([len("total"), *(len(f.file) for f in self.files)])
        out = [f"{'file':<{width}}  {'object':<12} {'rows':>8} {'loaded':>8} {'quarantined':>11}"]
        for f in self.files:
            out.append(
                f"{f.file:<{width}}  {f.object_type:<12} {f.rows:>8,} {f.loaded:>8,} "
                f"{f.quarantined:>11,}"
            )
            out += [f"  {count:>8,} {reason}" for reason, count in sorted(f.reasons.items())]
        out.append(
            f"{'total':<{width}}  {'':<12} {self.rows:>8,} {self.loaded:>8,} "
            f"{self.quarantined:>11,}"
        )
        if self.ignored:
            out.append(f"not in the mapping, not read: {', '.join(self.ignored)}")
        return out


def import_files(
    paths: list[Path],
    mapping: Mapping,
    zone: LandingZone,
    report_dir: Path,
    *,
    mapping_name: str = "",
    progress: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Land the rows of ``paths`` (files, or folders of them) as one batch of change events;
    write the report and the quarantined rows under ``report_dir``; MappingError before
    anything lands if a file matches no entry or lacks a column the mapping needs."""
    imported_at = (now or datetime.now(UTC)).astimezone(UTC)
    report = ImportReport(mapping_name, mapping.source, _iso(imported_at))
    chosen = _choose(paths, mapping, report)
    headers = {path: _header(path, mapping) for path, _ in chosen}
    for path, name in chosen:
        _check_columns(path, headers[path], mapping.files[name], name)

    batch_id = zone.new_batch_id(mapping.source)
    quarantined: list[dict] = []
    total = 0
    try:
        with zone.open_batch(mapping.source, batch_id) as tmp, open(tmp, "w") as out:
            with tqdm(unit=" rows", disable=not progress, desc="import") as bar:
                for path, name in chosen:
                    file_report, bad = _import_file(
                        path, name, mapping, headers[path], report.imported_at, out, bar
                    )
                    report.files.append(file_report)
                    quarantined += bad
                    total += file_report.loaded
            if total == 0:
                raise _NothingToLand
    except _NothingToLand:
        pass  # every row was quarantined: no empty batch is published
    report.batch = batch_id if total else None
    _write_report(report, quarantined, report_dir / batch_id)
    return report


class _NothingToLand(Exception):
    """Every row was quarantined: the batch being written is dropped, not published."""


def _choose(paths: list[Path], mapping: Mapping, report: ImportReport) -> list[tuple[Path, str]]:
    """Each file to read with its entry; files of a folder that no entry takes are listed as
    ignored, a file named on its own that no entry takes is a mistake."""
    chosen = []
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.iterdir() if p.is_file()):
                name = mapping.entry_for(child)
                if name is None:
                    report.ignored.append(child.name)
                else:
                    chosen.append((child, name))
        elif path.is_file():
            name = mapping.entry_for(path)
            if name is None:
                patterns = ", ".join(f"{n}: {e.match}" for n, e in mapping.files.items())
                raise MappingError(
                    f"{path.name} matches no entry of the mapping ({patterns}); rename the "
                    "file or add an entry whose match takes it"
                )
            chosen.append((path, name))
        else:
            raise MappingError(f"no such file: {path}")
    if not chosen:
        raise MappingError(f"none of {', '.join(map(str, paths))} matches an entry of the mapping")
    return chosen


def _header(path: Path, mapping: Mapping) -> list[str]:
    # Python reads a UTF-8 byte-order mark as part of the first name unless told it may be there.
    encoding = "utf-8-sig" if mapping.encoding == "utf-8" else mapping.encoding
    with open(path, newline="", encoding=encoding) as handle:
        header = next(csv.reader(handle, delimiter=mapping.delimiter), None)
    if not header:
        raise MappingError(f"{path} is empty; an export starts with a header line")
    names = [name.strip() for name in header]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise MappingError(f"{path.name} has the column(s) {twice} more than once in its header")
    return names


def _check_columns(path: Path, header: list[str], entry: FileMapping, name: str) -> None:
    missing = [
        column for column, needed in entry.columns().items() if needed and column not in header
    ]
    if missing:
        raise MappingError(
            f"{path.name} (entry {name}) has no column {', '.join(map(repr, missing))}; "
            f"its columns: {', '.join(header)}"
        )


def _read(path: Path, mapping: Mapping, header: list[str]) -> tuple[pl.DataFrame, list[dict]]:
    """Every row as text (blank cells null), and the lines DuckDB's reader could not split
    into the header's columns (a stray quote, too many or too few fields)."""
    columns = {f"c{i}": "VARCHAR" for i in range(len(header))}
    with duckdb.connect() as conn:
        conn.execute(
            "CREATE TABLE rows AS SELECT row_number() OVER () AS _row, * FROM read_csv($path, "
            "header = true, auto_detect = false, columns = $columns, delim = $delim, "
            "quote = '\"', escape = '\"', encoding = $encoding, store_rejects = true)",
            {
                "path": str(path),
                "columns": columns,
                "delim": mapping.delimiter,
                "encoding": mapping.encoding,
            },
        )
        frame = conn.execute("SELECT * FROM rows ORDER BY _row").pl()
        rejects = conn.execute(
            "SELECT line, error_type, error_message, csv_line FROM reject_errors ORDER BY line"
        ).fetchall()
    frame = frame.rename({f"c{i}": name for i, name in enumerate(header)})
    bad = [
        {
            "row": None,
            "line": line,
            "reason": "malformed_csv_line",
            "detail": str(error_type).lower().replace(" ", "_"),
            "raw": csv_line,
        }
        for line, error_type, _message, csv_line in rejects
    ]
    return frame, bad


def _import_file(
    path: Path,
    name: str,
    mapping: Mapping,
    header: list[str],
    imported_at: str,
    out,
    bar: tqdm,
) -> tuple[FileReport, list[dict]]:
    entry = mapping.files[name]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    report = FileReport(path.name, name, entry.object_type, digest)
    frame, bad = _read(path, mapping, header)
    report.rows = frame.height + len(bad)  # the lines the reader could not split are rows too
    bar.total = (bar.total or 0) + frame.height  # known once the file is read
    bar.refresh()
    for row in bad:
        row["file"] = path.name
    shaped = frame.select(pl.col("_row"), *_event_columns(entry, mapping, frame, imported_at))
    # A record twice in one export (at the same time): its first good row stands.
    fine = pl.col("problem").is_null()
    first_good = pl.when(fine).then(pl.col("_row")).min().over("object_id", "occurred_at")
    shaped = shaped.with_columns(
        pl.when(fine & (first_good != pl.col("_row")))
        .then(pl.format("duplicate_id{}same id as row {}", pl.lit(_SEP), first_good))
        .otherwise(pl.col("problem"))
        .alias("problem")
    )
    # The refused rows as they came, then only what the events need: a file's copies are
    # let go as soon as they are used, as a large export holds several.
    refused = shaped.filter(pl.col("problem").is_not_null()).select("_row", "problem")
    raw = frame.filter(pl.col("_row").is_in(refused["_row"].implode())).select(
        "_row", pl.struct(pl.exclude("_row")).struct.json_encode().alias("raw")
    )
    for row_number, problem, raw_row in refused.join(raw, on="_row").sort("_row").iter_rows():
        reason, _, detail = problem.partition(_SEP)
        bad.append(
            {
                "file": path.name,
                "row": row_number,
                "line": None,
                "reason": reason,
                "detail": detail,
                "raw": raw_row,
            }
        )
    good = shaped.filter(pl.col("problem").is_null()).select(
        "object_id", "occurred_at", "op", "properties"
    )
    del frame, shaped
    occurred_key = None if isinstance(entry.occurred_at, TimestampColumn) else digest
    for i, (object_id, occurred_at, op, properties) in enumerate(good.iter_rows()):
        identity = _SEP.join(
            (entry.object_type, object_id, op, occurred_key or occurred_at, properties or "")
        )
        event_id = f"{mapping.source}:{hashlib.sha256(identity.encode()).hexdigest()[:32]}"
        body = "" if op == "delete" else f',"properties":{properties}'
        out.write(
            f'{{"event_id":"{event_id}","object_type":"{entry.object_type}",'
            f'"object_id":{json.dumps(object_id)},"occurred_at":"{occurred_at}",'
            f'"op":"{op}"{body}}}\n'
        )
        if i % 10_000 == 9_999:
            bar.update(10_000)
    bar.update(good.height % 10_000)
    report.loaded = good.height
    report.quarantined = len(bad)
    report.reasons = dict(Counter(row["reason"] for row in bad))
    return report, bad


def _event_columns(
    entry: FileMapping, mapping: Mapping, frame: pl.DataFrame, imported_at: str
) -> list[pl.Expr]:
    """object_id, occurred_at, op, properties (JSON text) and the first problem of each row
    (``reason<SEP>detail``, null when the row is fine). Value maps, conditions and date
    formats look at the file's distinct values first, so each row costs a lookup."""
    problems: list[pl.Expr] = []
    object_id = _id(entry.id, _cell(entry.id.column))
    problems.append(
        _problem(object_id.is_null(), "missing_id", f"column {entry.id.column!r} is blank")
    )

    if isinstance(entry.occurred_at, TimestampColumn):
        rule = entry.occurred_at
        cell = _cell(rule.column)
        occurred_at = _timestamp(frame, cell, rule.format, rule.timezone or mapping.timezone)
        problems.append(
            _problem(
                occurred_at.is_null(),
                "invalid_occurred_at",
                pl.format("column '{}' holds {}", pl.lit(rule.column), _shown(cell)),
            )
        )
    else:
        occurred_at = pl.lit(imported_at)

    op = pl.lit("upsert")
    if entry.deleted:
        op = pl.when(_holds(frame, entry.deleted)).then(pl.lit("delete")).otherwise(op)

    known = state_field_types()[entry.object_type]
    header = set(frame.columns)
    values = []
    for name, rule in {**entry.fields, **entry.custom}.items():
        if {rule.column, rule.when and rule.when.column} - {None} - header:
            continue  # an optional column this export does not have
        data_type = rule.type or known[name]
        value, checks = _field(frame, name, rule, data_type, mapping)
        values.append(value.alias(name))
        # A delete carries no properties, so its fields cannot be wrong.
        problems += [pl.when(op == "upsert").then(check) for check in checks]
    properties = pl.struct(values).struct.json_encode() if values else pl.lit("{}")
    return [
        object_id.alias("object_id"),
        occurred_at.alias("occurred_at"),
        op.alias("op"),
        properties.alias("properties"),
        pl.coalesce(problems).alias("problem"),
    ]


def _field(
    frame: pl.DataFrame, name: str, rule: FieldRule, data_type: str, mapping: Mapping
) -> tuple[pl.Expr, list[pl.Expr]]:
    """The typed value of one field, and the checks that quarantine a row for it."""
    checks: list[pl.Expr] = []
    where = f"column {rule.column!r}" if rule.column else f"{name} (constant)"
    raw = _cell(rule.column) if rule.column is not None else pl.lit(_text(rule.value))
    if rule.split:
        raw = _blank_to_null(raw.str.split(rule.split).list.first().str.strip_chars())
    text = raw
    if rule.values:
        by_key = {fold(key): _text(value) for key, value in rule.values.items()}
        found = {
            value: by_key[fold(value)] for value in _distinct(frame, raw) if fold(value) in by_key
        }
        known = raw.is_in(list(found)) if found else pl.lit(False)
        mapped = raw.replace_strict(found, default=None, return_dtype=pl.String)
        text = (
            pl.when(known)
            .then(mapped if found else pl.lit(None, pl.String))
            .otherwise(raw if rule.unmapped == "keep" else pl.lit(None, pl.String))
        )
        if rule.unmapped == "quarantine":
            checks.append(
                _problem(
                    raw.is_not_null() & ~known,
                    "unmapped_value",
                    pl.format("{} holds {} (not in its values map)", pl.lit(where), _shown(raw)),
                )
            )
    if rule.when is not None:
        text = pl.when(_holds(frame, rule.when)).then(text)
    if rule.ref is not None:
        return _id(mapping.files[rule.ref].id, text), checks + _required(rule, text, where)
    value = _typed(frame, text, data_type, rule, mapping)
    checks.append(
        _problem(
            text.is_not_null() & value.is_null(),
            "wrong_type",
            pl.format("{} holds {}, not a {}", pl.lit(where), _shown(text), pl.lit(data_type)),
        )
    )
    return value, checks + _required(rule, text, where)


def _holds(frame: pl.DataFrame, condition: Condition) -> pl.Expr:
    """Rows whose column holds one of the condition's values (ignoring case, spaces and
    punctuation, as value maps do)."""
    wanted = {fold(value) for value in condition.values}
    cell = _cell(condition.column)
    found = [value for value in _distinct(frame, cell) if fold(value) in wanted]
    return cell.is_in(found).fill_null(False) if found else pl.lit(False)


def _distinct(frame: pl.DataFrame, text: pl.Expr) -> list[str]:
    return frame.select(text.drop_nulls().unique()).to_series().to_list()


def _required(rule: FieldRule, text: pl.Expr, where: str) -> list[pl.Expr]:
    return [_problem(text.is_null(), "missing_value", f"{where} is blank")] if rule.required else []


def _typed(
    frame: pl.DataFrame, text: pl.Expr, data_type: str, rule: FieldRule, mapping: Mapping
) -> pl.Expr:
    if rule.scale is not None and data_type in ("integer", "number"):
        scaled = text.cast(pl.Float64, strict=False) * rule.scale
        return (
            pl.when(scaled.is_finite())
            .then(scaled)
            .cast(pl.Float64 if data_type == "number" else pl.Int64, strict=False)
        )
    if data_type == "integer":
        as_float = text.cast(pl.Float64, strict=False)
        whole = as_float.is_finite() & (as_float == as_float.floor())
        return pl.coalesce(
            text.cast(pl.Int64, strict=False),
            pl.when(whole).then(as_float).cast(pl.Int64, strict=False),
        )
    if data_type == "number":
        as_float = text.cast(pl.Float64, strict=False)
        return pl.when(as_float.is_finite()).then(as_float)
    if data_type == "boolean":
        lower = text.str.to_lowercase()
        return pl.when(lower.is_in(TRUE)).then(True).when(lower.is_in(FALSE)).then(False)
    if data_type == "date":
        if rule.format:
            return text.str.to_date(rule.format, strict=False).dt.strftime("%Y-%m-%d")
        # A date, or the date of a timestamp written without an offset (as CRMs export).
        naive = [each for each in ISO_FORMATS if "z" not in each]
        parsed = [
            text.str.to_datetime(each, strict=False) for each in _formats_in(frame, text, naive)
        ]
        return pl.coalesce(parsed).dt.strftime("%Y-%m-%d")
    if data_type == "timestamp":
        return _timestamp(frame, text, rule.format, rule.timezone or mapping.timezone)
    return text


def _timestamp(frame: pl.DataFrame, text: pl.Expr, fmt: str | None, timezone: str) -> pl.Expr:
    """ISO 8601 in UTC; a value without an offset is read in ``timezone``. Without a format,
    ISO 8601 with or without an offset, a space for the T, or a date alone."""
    formats = [fmt] if fmt else _formats_in(frame, text, ISO_FORMATS)
    return (
        pl.coalesce([_parse_timestamp(text, each, timezone) for each in formats])
        .dt.convert_time_zone("UTC")
        .dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    )


ISO_FORMATS = [
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
]


def _formats_in(frame: pl.DataFrame, text: pl.Expr, formats: list[str]) -> list[str]:
    """The formats that read some of the column's distinct values (a sample of 1,000): each
    row is then parsed with those only. None read any: the first, so the rows are refused."""
    sample = frame.select(text.drop_nulls().unique().head(1_000).alias("v"))
    found = [
        each
        for each in formats
        if sample.select(pl.col("v").str.to_datetime(each, strict=False).is_not_null().any()).item()
    ]
    return found or formats[:1]


def _parse_timestamp(text: pl.Expr, fmt: str, timezone: str) -> pl.Expr:
    if any(offset in fmt for offset in ("%z", "%#z", "%:z")):
        return text.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
    # A local time that does not exist (skipped by a DST change) is refused, not guessed.
    return (
        text.str.to_datetime(fmt, strict=False, time_unit="us")
        .dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
    )


def _id(rule: IdRule, value: pl.Expr) -> pl.Expr:
    if rule.slug:
        value = _blank_to_null(
            value.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", "-").str.strip_chars("-")
        )
    return pl.lit(rule.prefix) + value if rule.prefix else value


def _cell(column: str) -> pl.Expr:
    return _blank_to_null(pl.col(column).str.strip_chars())


def _blank_to_null(text: pl.Expr) -> pl.Expr:
    return pl.when(text != "").then(text)


def _problem(when: pl.Expr, reason: str, detail: str | pl.Expr) -> pl.Expr:
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return pl.when(when).then(pl.lit(reason + _SEP) + detail_expr)


def _shown(text: pl.Expr) -> pl.Expr:
    return (
        pl.when(text.is_null()).then(pl.lit("nothing")).otherwise(pl.lit("'") + text + pl.lit("'"))
    )


def _text(value: object) -> str | None:
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_report(report: ImportReport, quarantined: list[dict], folder: Path) -> None:
    """The quarantined rows, then the report, each flushed to disk before it is named."""
    folder.mkdir(parents=True, exist_ok=True)
    if quarantined:
        quarantine = folder / "quarantined.csv"
        with durable_file(quarantine) as handle:
            writer = csv.DictWriter(handle, ["file", "row", "line", "reason", "detail", "raw"])
            writer.writeheader()
            writer.writerows(quarantined)
        report.quarantine_path = str(quarantine)
    report.report_path = str(folder / "report.json")
    payload = asdict(report) | {
        "rows": report.rows,
        "loaded": report.loaded,
        "quarantined": report.quarantined,
    }
    with durable_file(Path(report.report_path)) as handle:
        handle.write(json.dumps(payload, indent=2) + "\n")


__all__ = ["FileReport", "ImportReport", "import_files"]
