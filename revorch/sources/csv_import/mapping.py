"""The mapping file: how the columns of a CRM export become Revorch change events.

A mapping (YAML, docs/sources/csv_import.md) names, per kind of file, the object type, the
id column, where ``occurred_at`` comes from, and for each Revorch field or custom property
the column it is read from, with its format, time zone and value map. It is validated when
loaded, against the state store's own columns, so a misspelt field or a reference to an
entry that does not exist is one clear line before anything is read or landed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from revorch.config_file import CONFIG_DIR, load_yaml_model
from revorch.ingestion.change_log import property_columns
from revorch.landing import check_source_name
from revorch.state.migrate import migrate

FieldType = Literal["string", "integer", "number", "boolean", "date", "timestamp"]
ObjectType = Literal["owner", "company", "contact", "deal", "activity", "ticket", "subscription"]
FIELD_TYPES = get_args(FieldType)
Scalar = str | int | float | bool

# The state store's column types, as the mapping calls them.
_TYPE_OF_COLUMN = {
    "VARCHAR": "string",
    "BIGINT": "integer",
    "DOUBLE": "number",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "TIMESTAMP WITH TIME ZONE": "timestamp",
}

# Which object type a reference field names, so `ref:` can be checked.
_REFERENCE_FIELDS = {
    "company_id": "company",
    "contact_id": "contact",
    "owner_id": "owner",
    "deal_id": "deal",
    "renewal_of": "subscription",
}


def fold(value: str) -> str:
    """A value as value maps and conditions compare it: no case, spaces or punctuation."""
    return re.sub(r"[\W_]+", "", value.lower())


class MappingError(ValueError):
    """A mapping file that cannot be used, or a file it cannot read: one line, exit code 2."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdRule(_Strict):
    """How a record's id is built from a column: ``prefix`` + the value (trimmed), or a slug
    of it (lower case, runs of other characters as '-') when the column holds a name."""

    column: str
    prefix: str = ""
    slug: bool = False


class TimestampColumn(_Strict):
    """``occurred_at`` read from a column of each row."""

    column: str
    format: str | None = None
    timezone: str | None = None


class Condition(_Strict):
    """Rows whose ``column`` holds one of ``values`` (any case)."""

    column: str
    values: list[str]


class FieldRule(_Strict):
    """Where one field's value comes from: a ``column`` (or a constant ``value``), then the
    value map, then the type. Written as a plain string, it is the column's name."""

    column: str | None = None
    value: Scalar | None = None
    type: FieldType | None = None
    format: str | None = None
    timezone: str | None = None
    values: dict[str, Scalar | None] = Field(default_factory=dict)
    unmapped: Literal["keep", "quarantine"] = "keep"
    scale: float | None = None
    split: str | None = None
    ref: str | None = None
    when: Condition | None = None
    required: bool = False
    optional: bool = False

    @model_validator(mode="before")
    @classmethod
    def _column_name(cls, data: object) -> object:
        return {"column": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> FieldRule:
        if (self.column is None) == (self.value is None):
            raise ValueError("give either column or value (a constant), not both or neither")
        folded: dict[str, object] = {}
        for key, value in self.values.items():
            same = folded.setdefault(fold(key), value)
            if same != value:
                raise ValueError(
                    f"values: {key!r} and another key differ only in case, spaces or "
                    "punctuation (which are ignored) but map to different values"
                )
        if self.unmapped == "quarantine" and not self.values:
            raise ValueError("unmapped: quarantine needs a values map")
        if self.timezone:
            _check_timezone(self.timezone)
        return self


class FileMapping(_Strict):
    """One kind of export file: which files it takes, and how their rows become events."""

    match: str = Field(description="glob on the file's name, e.g. '*contacts*.csv'")
    object_type: ObjectType
    id: IdRule
    occurred_at: Literal["import_time"] | TimestampColumn
    deleted: Condition | None = Field(
        default=None, description="rows that become deletes of the record"
    )
    fields: dict[str, FieldRule] = Field(default_factory=dict)
    custom: dict[str, FieldRule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _custom_types(self) -> FileMapping:
        untyped = sorted(name for name, rule in self.custom.items() if rule.type is None)
        if untyped:
            raise ValueError(f"custom properties need a type ({', '.join(FIELD_TYPES)}): {untyped}")
        if isinstance(self.occurred_at, TimestampColumn) and self.occurred_at.timezone:
            _check_timezone(self.occurred_at.timezone)
        return self

    def columns(self) -> dict[str, bool]:
        """Every column this entry reads, and whether the file must have it."""
        needed = {self.id.column: True}
        if isinstance(self.occurred_at, TimestampColumn):
            needed[self.occurred_at.column] = True
        if self.deleted:
            needed[self.deleted.column] = True
        for rule in [*self.fields.values(), *self.custom.values()]:
            if rule.column is not None:
                needed[rule.column] = needed.get(rule.column, False) or not rule.optional
            if rule.when is not None:
                needed[rule.when.column] = needed.get(rule.when.column, False) or not rule.optional
        return needed


class Mapping(_Strict):
    """A whole mapping file: the source name events carry, defaults, and the file entries."""

    source: str
    timezone: str = "UTC"
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    encoding: Literal["utf-8", "utf-16", "latin-1"] = "utf-8"  # what DuckDB's reader decodes
    files: dict[str, FileMapping]

    @model_validator(mode="after")
    def _consistent(self) -> Mapping:
        check_source_name(self.source)
        _check_timezone(self.timezone)
        if not self.files:
            raise ValueError("files: name at least one kind of file")
        for name, entry in self.files.items():
            for field, rule in {**entry.fields, **entry.custom}.items():
                if rule.ref is None:
                    continue
                if rule.ref not in self.files:
                    raise ValueError(
                        f"files.{name}: {field} refers to {rule.ref!r}, which is not an entry "
                        f"of files ({', '.join(self.files)})"
                    )
                wanted = _REFERENCE_FIELDS.get(field)
                if wanted and self.files[rule.ref].object_type != wanted:
                    raise ValueError(
                        f"files.{name}: {field} needs the id of a {wanted}, but {rule.ref!r} "
                        f"holds {self.files[rule.ref].object_type} records"
                    )
        return self

    def custom_properties(self) -> dict[str, dict[str, str]]:
        """The custom properties this mapping lands, with their declared types, per object
        type (``{"contact": {"page_views": "integer"}}``): what a model may read from them."""
        declared: dict[str, dict[str, str]] = {}
        for entry in self.files.values():
            for name, rule in entry.custom.items():
                declared.setdefault(entry.object_type, {})[name] = rule.type or "string"
        return declared

    def entry_for(self, file: Path) -> str | None:
        """The entry whose ``match`` takes this file's name (MappingError if several do)."""
        names = [name for name, entry in self.files.items() if file.match(entry.match)]
        if len(names) > 1:
            raise MappingError(f"{file.name} matches several entries of the mapping: {names}")
        return names[0] if names else None


@functools.cache
def state_field_types() -> dict[str, dict[str, str]]:
    """The typed fields of each object type, read from the state store's schema itself."""
    with duckdb.connect() as conn:
        migrate(conn)
        return {
            object_type: {name: _TYPE_OF_COLUMN[data_type] for name, data_type in cols.items()}
            for object_type, cols in property_columns(conn).items()
        }


SHIPPED = CONFIG_DIR / "mappings"


def shipped_mapping(name_or_path: str) -> Path:
    """A path as given, or the shipped mapping of that name (``hubspot_export``)."""
    path = Path(name_or_path)
    shipped = SHIPPED / f"{name_or_path}.yaml"
    if not path.exists() and path.suffix == "" and shipped.exists():
        return shipped
    return path


def load_mapping(path: str | Path) -> Mapping:
    """The mapping file validated, its fields checked against the state store's columns;
    MappingError (one line naming the file and the key) if it cannot be used."""
    mapping = load_yaml_model(path, Mapping, MappingError, "mapping")
    known = state_field_types()
    for name, entry in mapping.files.items():
        fields = known[entry.object_type]
        for field, rule in entry.fields.items():
            where = f"{path} is not a valid mapping: key files.{name}.fields.{field}"
            if field not in fields:
                raise MappingError(
                    f"{where}: not a {entry.object_type} field (known: {', '.join(fields)}); "
                    "put your own fields under custom:"
                )
            if rule.type is not None and rule.type != fields[field]:
                raise MappingError(f"{where}: the field is a {fields[field]}, not a {rule.type}")
        for field in entry.custom:
            if field in fields:
                raise MappingError(
                    f"{path} is not a valid mapping: key files.{name}.custom.{field}: "
                    f"{field} is a {entry.object_type} field; map it under fields:"
                )
    return mapping


def _check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as unknown:
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')"
        ) from unknown
