"""What each offline model learns from and what it predicts: the ``models:`` section of
config/agents.yaml, validated when it is loaded (docs/agents.md, "Features and outcomes").

A model (lead, deal, renewal) declares its features and its outcome. A feature is one of:

- a column its inputs already carry (``name`` alone: ``employees``, ``emails_sent``, ...);
- a CRM property (``property: contact.page_views``): a field of the state store or a custom
  property that an import mapping lands (typed by the mapping), read as the CRM had it at
  the scoring point (or the newest value, ``as_of: latest``, for exports that hold one
  snapshot per record);
- a count of activities of some types in a window (``activities: {types: [...], days: N}``),
  positive signals or negative ones (bounced, unsubscribed);
- a derived number: ``days_since_last_touch``, ``record_age_days``, ``tenure_days``.

The defaults are the fixed lists the models read before features could be declared, so a
config without a ``models:`` section decides exactly as before.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_POSITIVES = 100  # fewer positives than this and a model's figures are mostly noise

Encode = Literal["numeric", "log", "category"]
ModelKind = Literal["lead", "deal", "renewal"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The records a model's example can reach, by model: whose properties a feature may read.
PROPERTY_OBJECTS: dict[str, tuple[str, ...]] = {
    "lead": ("contact", "company"),
    "deal": ("deal", "contact", "company"),
    "renewal": ("subscription", "company"),
}

# The columns each model's inputs carry already, and how each is numeric or a category.
BUILT_IN: dict[str, dict[str, str]] = {
    "lead": {
        "employees": "number",
        "annual_revenue": "number",
        "emails_sent": "number",
        "emails_opened": "number",
        "emails_replied": "number",
        "web_visits": "number",
        "pricing_visits": "number",
        "form_fills": "number",
        "meetings": "number",
        "calls": "number",
        "lead_source": "string",
        "industry": "string",
        "tier": "string",
        "job_title": "string",
        "stage": "string",
    },
    "deal": {
        "amount": "number",
        "employees": "number",
        "intent_touches": "number",
        "touches": "number",
        "industry": "string",
        "tier": "string",
        "lead_source": "string",
        "job_title": "string",
    },
    "renewal": {
        "utilization": "number",
        "usage_change": "number",
        "angry_tickets": "number",
        "open_tickets": "number",
        "seats": "number",
        "seats_active": "number",
        "arr": "number",
        "plan": "string",
    },
}

# Derived numbers, and the models they mean something for. A lead is described at a fixed
# age (its scoring point) and a deal at its creation, so their record age carries nothing.
DERIVED: dict[str, tuple[str, ...]] = {
    "days_since_last_touch": ("lead", "deal", "renewal"),
    "record_age_days": ("renewal",),
    "tenure_days": ("renewal",),
}


@dataclass(frozen=True)
class OutcomeCounts:
    """What an outcome definition did to the examples it was given."""

    examples: int  # kept, labelled
    positives: int  # kept and labelled positive
    negatives: int  # kept and labelled negative
    dropped: int  # left out: the outcome was already reached (or settled) at the scoring point
    late_positives: int  # reached the outcome after the horizon: labelled negative
    definition: str  # the outcome in words

    @property
    def warning(self) -> str | None:
        """Why these labels are too few to trust, or None."""
        if self.positives >= MIN_POSITIVES:
            return None
        return (
            f"only {self.positives} positives ({self.definition}); below about "
            f"{MIN_POSITIVES} a model's figures are mostly noise: widen the horizon or the "
            "period, or declare another outcome"
        )

    def as_metadata(self, prefix: str) -> dict[str, object]:
        return {
            f"{prefix}/examples": self.examples,
            f"{prefix}/positives": self.positives,
            f"{prefix}/negatives": self.negatives,
            f"{prefix}/dropped": self.dropped,
            f"{prefix}/late_positives_called_negative": self.late_positives,
        }

    def to_text(self) -> str:
        """The counts in words (the definition is said apart)."""
        return (
            f"{self.positives:,} positives, {self.negatives:,} negatives "
            f"({self.late_positives:,} of them reached it too late), {self.dropped:,} left out"
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActivityWindow(_Strict):
    """Activities of these types counted per example (the contact's for leads and deals,
    the account's for renewals), recorded by the scoring point."""

    types: list[str] = Field(min_length=1)
    days: int | None = Field(default=None, description="window length; none: all history")
    # scoring_point: the ``days`` before the scoring point; created: the first ``days``
    # after the record was created.
    start: Literal["scoring_point", "created"] = "scoring_point"
    url_contains: str | None = None

    @field_validator("days")
    @classmethod
    def _positive(cls, days: int | None) -> int | None:
        if days is not None and days <= 0:
            raise ValueError(f"a window is a positive number of days, not {days}")
        return days


class Feature(_Strict):
    """One input of a model; see the module docstring for the four kinds."""

    name: str
    encode: Encode | None = None  # default: category for text, numeric otherwise, log for counts
    property: str | None = None  # "<object>.<field>"
    as_of: Literal["scoring_point", "latest"] = "scoring_point"
    activities: ActivityWindow | None = None
    derived: Literal["days_since_last_touch", "record_age_days", "tenure_days"] | None = None
    # Categories: at most this many values of their own (the most frequent in the training
    # fold); the rarer ones share one "(other)" coefficient.
    max_categories: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> Feature:
        if not _NAME.match(self.name):
            raise ValueError(f"feature name {self.name!r}: use lower_case letters, digits and _")
        sources = [s for s in (self.property, self.activities, self.derived) if s is not None]
        if len(sources) > 1:
            raise ValueError(f"feature {self.name}: give one of property, activities, derived")
        if self.property is not None:
            parts = self.property.split(".")
            if len(parts) != 2 or not _PROPERTY.match(parts[1]):
                raise ValueError(
                    f"feature {self.name}: property {self.property!r} is not <object>.<field> "
                    "(contact.page_views)"
                )
        if self.activities is not None and self.encode == "category":
            raise ValueError(f"feature {self.name}: an activity count is a number")
        return self

    @builtins.property
    def kind(self) -> str:
        if self.property is not None:
            return "property"
        if self.activities is not None:
            return "activities"
        if self.derived is not None:
            return "derived"
        return "built_in"

    @builtins.property
    def object(self) -> str | None:
        return self.property.split(".")[0] if self.property else None

    @builtins.property
    def field(self) -> str | None:
        return self.property.split(".")[1] if self.property else None


def _defaults(kind: str, log: tuple[str, ...], numeric: tuple[str, ...] = ()) -> list[Feature]:
    numbers = [Feature(name=n, encode="numeric") for n in numeric]
    numbers += [Feature(name=n, encode="log") for n in log]
    categories = [n for n, t in BUILT_IN[kind].items() if t == "string"]
    return numbers + [Feature(name=n, encode="category") for n in categories]


DEFAULT_FEATURES = {
    "lead": _defaults(
        "lead",
        (
            "employees",
            "annual_revenue",
            "emails_sent",
            "emails_opened",
            "emails_replied",
            "web_visits",
            "pricing_visits",
            "form_fills",
            "meetings",
            "calls",
        ),
    ),
    "deal": _defaults("deal", ("amount", "employees", "intent_touches", "touches")),
    "renewal": _defaults(
        "renewal",
        ("angry_tickets", "open_tickets", "seats", "arr"),
        numeric=("utilization", "usage_change"),
    ),
}


class LeadOutcome(_Strict):
    """The lead label: reached one of ``reached`` within ``within_days`` of creation (none:
    ever, as far as known when the labels are read)."""

    reached: list[str] = Field(default=["sql", "opportunity", "customer"], min_length=1)
    within_days: int | None = Field(default=90, gt=0)


class DealOutcome(_Strict):
    """The deal label is a loss. ``won_within_days`` none: closed deals only, lost = closed
    lost; a number: every deal that old, lost = not closed won within that many days of
    its creation (a deal won later, or still open, counts as lost)."""

    won_within_days: int | None = Field(default=None, gt=0)


class RenewalOutcome(_Strict):
    """The renewal label: a subscription that ended with a status in ``churned`` (positive)
    or in ``renewed`` (negative), scored ``scored_days_before_end`` before its end date
    (none: the lifecycle's renewal window)."""

    churned: list[str] = Field(default=["churned"], min_length=1)
    renewed: list[str] = Field(default=["renewed"], min_length=1)
    scored_days_before_end: int | None = Field(default=None, gt=0)


# Keys an input row has besides its features: a declared feature may not take their name.
RESERVED = frozenset(
    {
        "id", "label", "as_of", "created_at", "stale", "stage", "stage_entered_at",
        "qualified_at", "company_id", "contact_id", "deal_id", "owner_id", "company_name",
        "recent_activity", "touches_total", "health_score", "health_band", "end_date",
        "close_date", "last_touch_at", "deal_touches", "in_renewal_window", "name",
        "deal_stage", "contact_stage", "churned", "lost",
    }
)  # fmt: skip


class _ModelDefinition(_Strict):
    kind: ClassVar[str]  # lead, deal or renewal
    features: list[Feature]

    @field_validator("features", mode="before")
    @classmethod
    def _expand(cls, features: object) -> object:
        return _with_defaults(cls.kind, features)

    def check_features(self, kind: str, scoring_days: int | None = None) -> None:
        names = [f.name for f in self.features]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"features named twice: {twice}")
        built_in = BUILT_IN[kind]
        for f in self.features:
            where = f"feature {f.name}"
            if f.kind != "built_in" and (f.name in built_in or f.name in RESERVED):
                raise ValueError(
                    f"{where}: the {kind} inputs already have a key {f.name}; name it otherwise"
                )
            if f.kind == "built_in":
                if f.name not in built_in:
                    raise ValueError(
                        f"{where}: not a column of the {kind} inputs (known: "
                        f"{', '.join(built_in)}); read a CRM field with property: "
                        f"<object>.<field>, or count activities with activities:"
                    )
                if f.encode == "log" and built_in[f.name] == "string":
                    raise ValueError(f"{where}: text cannot be log-encoded")
            elif f.kind == "property":
                if f.object not in PROPERTY_OBJECTS[kind]:
                    raise ValueError(
                        f"{where}: a {kind} model reads properties of "
                        f"{', '.join(PROPERTY_OBJECTS[kind])}, not {f.object}"
                    )
            elif f.kind == "derived":
                if kind not in DERIVED[f.derived]:
                    raise ValueError(
                        f"{where}: {f.derived} means nothing for a {kind} model (it is "
                        f"for {', '.join(DERIVED[f.derived])})"
                    )
            elif f.kind == "activities" and f.activities.start == "created":
                window = f.activities.days
                if not scoring_days:
                    raise ValueError(
                        f"{where}: a window from creation is for leads (scored a fixed time "
                        f"after creation); a {kind} model counts back from its scoring point"
                    )
                if window is None or window > scoring_days:
                    raise ValueError(
                        f"{where}: a window from creation must end by the scoring point "
                        f"({scoring_days} days after creation), or training and scoring "
                        f"would count different days"
                    )

    def spec_parts(self, types: dict[str, str]) -> tuple[tuple, tuple, tuple, tuple, dict]:
        """(numeric, log_numeric, categorical, grouped, max_categories) for ``FeatureSpec``;
        ``types`` gives the value type of every feature (``feature_types``)."""
        numeric, log, categorical, grouped, limits = [], [], [], [], {}
        for f in self.features:
            encode = f.encode or default_encoding(f, types[f.name])
            {"numeric": numeric, "log": log, "category": categorical}[encode].append(f.name)
            if encode == "category" and f.max_categories:
                grouped.append(f.name)
                limits[f.name] = f.max_categories
        return tuple(numeric), tuple(log), tuple(categorical), tuple(grouped), limits

    def key(self) -> str:
        """A short hash of the whole definition: a model trained on another one is stale."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _with_defaults(kind: str, features: object) -> object:
    """``defaults`` as an item of a feature list stands for the shipped list of that model."""
    if not isinstance(features, list):
        return features
    expanded: list = []
    for item in features:
        expanded += DEFAULT_FEATURES[kind] if item == "defaults" else [item]
    return expanded


class LeadDefinition(_ModelDefinition):
    kind: ClassVar[str] = "lead"
    features: list[Feature] = Field(default_factory=lambda: list(DEFAULT_FEATURES["lead"]))
    scoring_days: int = Field(default=14, gt=0, description="scored this long after creation")
    outcome: LeadOutcome = LeadOutcome()
    # Open leads created longer ago than this are stale: flagged (decided as stale, never
    # fast-tracked) or expired (not scored at all). None: no limit.
    stale_after_days: int | None = Field(default=365, gt=0)
    stale: Literal["flag", "expire"] = "flag"

    @model_validator(mode="after")
    def _valid(self) -> LeadDefinition:
        self.check_features("lead", self.scoring_days)
        if self.outcome.within_days is not None and self.outcome.within_days < self.scoring_days:
            raise ValueError(
                f"outcome.within_days ({self.outcome.within_days}) ends before the scoring "
                f"point ({self.scoring_days} days): nothing would be left to predict"
            )
        return self


class DealDefinition(_ModelDefinition):
    kind: ClassVar[str] = "deal"
    features: list[Feature] = Field(default_factory=lambda: list(DEFAULT_FEATURES["deal"]))
    outcome: DealOutcome = DealOutcome()

    @model_validator(mode="after")
    def _valid(self) -> DealDefinition:
        self.check_features("deal", scoring_days=0)
        return self


class RenewalDefinition(_ModelDefinition):
    kind: ClassVar[str] = "renewal"
    features: list[Feature] = Field(default_factory=lambda: list(DEFAULT_FEATURES["renewal"]))
    outcome: RenewalOutcome = RenewalOutcome()

    @model_validator(mode="after")
    def _valid(self) -> RenewalDefinition:
        self.check_features("renewal")
        both = set(self.outcome.churned) & set(self.outcome.renewed)
        if both:
            raise ValueError(f"outcome: {sorted(both)} cannot be both churned and renewed")
        return self


class ModelsConfig(_Strict):
    """The ``models:`` section: which import mappings type the custom properties, and each
    model's features and outcome."""

    mappings: Annotated[list[str], Field(description="mapping names or paths")] = []
    lead: LeadDefinition = LeadDefinition()
    deal: DealDefinition = DealDefinition()
    renewal: RenewalDefinition = RenewalDefinition()

    @model_validator(mode="after")
    def _properties_are_known(self) -> ModelsConfig:
        if self.mappings:
            _custom_properties(self.mappings)  # a mapping that cannot be read: say so now
        if not self._reads_properties():
            return self
        known = self.property_types()
        for kind in ("lead", "deal", "renewal"):
            for f in getattr(self, kind).features:
                if f.kind != "property":
                    continue
                fields = known.get(f.object, {})
                if f.field not in fields:
                    custom = sorted(_custom_properties(self.mappings).get(f.object, {}))
                    raise ValueError(
                        f"{kind}.features: {f.name} reads {f.property}, which is neither a "
                        f"{f.object} field of the state store nor a custom property of the "
                        f"mappings {self.mappings or '(none: list them under models.mappings)'}"
                        + (f" (their {f.object} properties: {', '.join(custom)})" if custom else "")
                    )
                if f.encode == "log" and fields[f.field] in ("string", "boolean"):
                    raise ValueError(
                        f"{kind}.features: {f.name}: a {fields[f.field]} cannot be log-encoded"
                    )
        return self

    def _reads_properties(self) -> bool:
        return any(
            f.kind == "property"
            for kind in ("lead", "deal", "renewal")
            for f in getattr(self, kind).features
        )

    def property_types(self) -> dict[str, dict[str, str]]:
        """Every readable property by object type: state-store fields, then the mappings'
        custom properties (the state store's type wins)."""
        from revorch.sources.csv_import.mapping import state_field_types

        merged: dict[str, dict[str, str]] = {}
        for source in (_custom_properties(self.mappings), state_field_types()):
            for object_type, fields in source.items():
                merged.setdefault(object_type, {}).update(fields)
        return merged

    def definition(self, kind: str) -> _ModelDefinition:
        return getattr(self, kind)

    def feature_types(self, kind: str) -> dict[str, str]:
        """The value type of each of ``kind``'s features (string, number, boolean, ...)."""
        properties = self.property_types() if self._reads_properties() else {}
        types = {}
        for f in self.definition(kind).features:
            if f.kind == "built_in":
                types[f.name] = BUILT_IN[kind][f.name]
            elif f.kind == "property":
                types[f.name] = properties[f.object][f.field]
            else:
                types[f.name] = "number"
        return types


def default_encoding(feature: Feature, value_type: str) -> str:
    if value_type == "string":
        return "category"
    if feature.kind == "activities":
        return "log"  # counts are heavy-tailed
    return "numeric"


def _custom_properties(mappings: list[str]) -> dict[str, dict[str, str]]:
    from revorch.sources.csv_import.mapping import load_mapping, shipped_mapping

    declared: dict[str, dict[str, str]] = {}
    for name in mappings:
        for object_type, fields in load_mapping(shipped_mapping(name)).custom_properties().items():
            declared.setdefault(object_type, {}).update(fields)
    return declared
