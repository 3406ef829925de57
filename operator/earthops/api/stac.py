"""What a STAC search's bbox and datetime mean, in the contract: the one implementation of them.

The data plane's query semantics (:mod:`earthops_runtime.stac.query`: ``earthops search`` and
ingestion) parse their ``bbox`` and ``datetime`` arguments with :func:`parse_bbox` and
:func:`parse_interval` from here, and the EODataset contract checks ``spec.source.*.bbox`` and
``.datetime`` with the same functions, so a spec the contract accepts is a query the data plane runs.

* **bbox**: ``[west, south, east, north]``, or 6 numbers with heights ``[w, s, zmin, e, n, zmax]``
  (heights ignored), or a ``"W,S,E,N"`` string; WGS84 degrees, finite, longitudes in [-180, 180],
  latitudes in [-90, 90], south <= north. West > east crosses the antimeridian.
* **datetime**: an RFC 3339 instant ``A`` or an interval ``A/B``, ``..`` or empty for an open end. A
  date-time must carry its time zone (``Z`` or an offset). A date (``2020-06-01``) stands for its whole
  day, 00:00:00Z as a start, 23:59:59.999999Z as an end. A calendar date that does not exist, an
  instant outside the years 1-9999 (in UTC) and an interval whose start is after its end are refused.

A spec writes its datetime in RFC 3339's own form (:data:`SPEC_DATETIME`: uppercase ``T`` and ``Z``,
seconds, an offset with its colon, at most 6 fractional digits): the API server checks a spec with
CEL (:data:`DATETIME_RULES`, :data:`BBOX_RULES`), whose ``timestamp()`` reads only that form, and the
same rules run in-process, so both sides accept the same specs. ``earthops search`` is more lenient
in what it reads (``2020-06-01T10:00Z``, a space for ``T``) but means the same by it.

A bad argument raises :class:`SearchError`, whose ``parameter`` names it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time
from typing import Any

Box = tuple[float, float, float, float]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)([Zz]|[+-]\d{2}:?\d{2})?$")
_OPEN = ("", "..")
_EXAMPLES = "e.g. 2020-01-01T00:00:00Z, 2020-01-01, or an interval A/B with .. for an open end"


class SearchError(ValueError):
    """A search argument is invalid; ``parameter`` names it (``bbox``, ``datetime``, ``filter``, ...)."""

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        self.message = message
        super().__init__(f"{parameter}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (Ray) with both arguments
        return type(self), (self.parameter, self.message)


# --------------------------------------------------------------------------------------------------
# bbox


def parse_bbox(bbox: Any) -> Box:
    """``(west, south, east, north)`` of a bbox argument (see the module docstring)."""
    if isinstance(bbox, str):
        parts: list[Any] = [p.strip() for p in bbox.split(",")]
    else:
        try:
            parts = list(bbox)
        except TypeError:
            raise SearchError("bbox", f"{bbox!r} is not a list of numbers") from None
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise SearchError("bbox", f"{bbox!r}: expected 4 numbers west,south,east,north") from None
    if len(values) not in (4, 6):
        raise SearchError("bbox", f"{bbox!r}: expected 4 numbers west,south,east,north (or 6 with heights), "
                          f"got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise SearchError("bbox", f"{bbox!r}: numbers must be finite")
    half = len(values) // 2
    w, s, e, n = values[0], values[1], values[half], values[half + 1]
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise SearchError("bbox", f"{bbox!r}: longitudes must lie in [-180, 180]")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise SearchError("bbox", f"{bbox!r}: latitudes must lie in [-90, 90]")
    if s > n:
        raise SearchError("bbox", f"{bbox!r}: south {s} is north of north {n}")
    return w, s, e, n


# --------------------------------------------------------------------------------------------------
# datetime


def parse_instant(text: str, *, end: bool = False) -> datetime:
    """One RFC 3339 date-time (with its time zone) or date as an aware UTC datetime; a date is its
    first microsecond, or its last when ``end``."""
    text = text.strip()
    if _DATE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise SearchError("datetime", f"{text!r} is not a calendar date: {exc}") from None
        return datetime.combine(day, time.max if end else time.min, tzinfo=UTC)
    m = _DATE_TIME.match(text)
    if m is None:
        raise SearchError("datetime", f"{text!r} is not an RFC 3339 date-time ({_EXAMPLES})")
    day_part, time_part, zone = m.groups()
    if zone is None:
        raise SearchError("datetime", f"{text!r} has no time zone (RFC 3339: add Z or an offset such as +02:00)")
    try:
        moment = datetime.fromisoformat(f"{day_part}T{time_part}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError as exc:  # Python keeps at most 6 fractional digits and drops the rest itself
        raise SearchError("datetime", f"{text!r} is not a valid date-time: {exc}") from None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise SearchError("datetime", f"{text!r} lies outside the years 1-9999 in UTC") from None


def parse_interval(value: Any) -> tuple[datetime | None, datetime | None]:
    """A datetime argument (instant ``A``, interval ``A/B``, ``..`` or empty for an open end) as
    (start, end) in UTC, None for an open end; None stands for no datetime at all."""
    if value is None:
        return None, None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise SearchError("datetime", f"{value.isoformat()!r} has no time zone (give an aware datetime)")
        moment = value.astimezone(UTC)
        return moment, moment
    if not isinstance(value, str) or not value.strip():
        raise SearchError("datetime", f"{value!r}: expected an RFC 3339 date-time or interval A/B ({_EXAMPLES})")
    text = value.strip()
    if "/" not in text:
        return parse_instant(text), parse_instant(text, end=True)
    if text.count("/") != 1:
        raise SearchError("datetime", f"{value!r}: an interval has one '/' (A/B, with .. for an open end)")
    a, b = (p.strip() for p in text.split("/"))
    start = None if a in _OPEN else parse_instant(a)
    end = None if b in _OPEN else parse_instant(b, end=True)
    if start is not None and end is not None and start > end:
        raise SearchError("datetime", f"{value!r}: the start is after the end")
    return start, end


# --------------------------------------------------------------------------------------------------
# The same rules for a spec, as the API server checks them (CEL) and as the models check them

# A calendar date as a regular expression (Go's RE2, Rust's regex and Python's re read it alike; no
# backslashes, so it goes into a CEL string as it is): the days of each month, February 29 in leap
# years only (every 4th year; of the centuries, every 4th), no year 0.
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              r"|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_CALENDAR_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME_ZONE = r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:[.][0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_INSTANT = rf"{_CALENDAR_DATE}(?:{_TIME_ZONE})?"
_END = rf"(?:{_INSTANT}|[.][.])?"
#: A spec's datetime: an instant, or an interval whose ends are instants or open (``..`` or empty).
SPEC_DATETIME = rf"^(?:{_INSTANT}|{_END}/{_END})$"
#: Longest datetime a spec may hold (two date-times with 6 fractional digits and offsets, and a '/').
SPEC_DATETIME_MAX_LENGTH = 80
SPEC_DATETIME_ACCEPTED = ("an RFC 3339 instant or interval start/end: a date YYYY-MM-DD that exists, or a date-time "
                          "YYYY-MM-DDThh:mm:ss with at most 6 fractional digits and Z or an offset +hh:mm; '..' or "
                          "nothing for an open end (e.g. 2020-01-01/2020-06-30, 2021-01-01T00:00:00Z/..)")
_SPEC_DATETIME_RE = re.compile(SPEC_DATETIME)

_FIRST_INSTANT, _LAST_INSTANT = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"


def check_spec_datetime(value: str) -> str:
    """A spec's datetime, checked: the data plane's semantics (:func:`parse_interval`) and the spec's
    RFC 3339 form (:data:`SPEC_DATETIME`). Raises :class:`SearchError`."""
    parse_interval(value)
    if not _SPEC_DATETIME_RE.match(value):
        raise SearchError("datetime", f"{value!r} is not {SPEC_DATETIME_ACCEPTED}")
    return value


def check_spec_bbox(value: list[float]) -> list[float]:
    """A spec's bbox, checked with :func:`parse_bbox`. Raises :class:`SearchError`."""
    parse_bbox(value)
    return value


def _datetime_rules(field: str) -> tuple[tuple[str, str], ...]:
    """CEL (rule, message) pairs that check ``self.<field>`` as :func:`check_spec_datetime` does."""
    this = f"self.{field}"
    parts = f"{this}.split('/')"
    start, end = f"{parts}[0]", f"{parts}[size({parts}) - 1]"

    def open_end(x: str) -> str:
        return f"({x} == '' || {x} == '..')"

    def in_range(x: str) -> str:
        return (f"({open_end(x)} || size({x}) == 10 || (timestamp({x}) >= timestamp('{_FIRST_INSTANT}') && "
                f"timestamp({x}) <= timestamp('{_LAST_INSTANT}')))")

    def moment(x: str, last: bool) -> str:
        return f"timestamp(size({x}) == 10 ? {x} + '{'T23:59:59.999999Z' if last else 'T00:00:00Z'}' : {x})"

    guard = f"!has({this}) || !{this}.matches('{SPEC_DATETIME}') || "
    return (
        (f"!has({this}) || {this}.matches('{SPEC_DATETIME}')", f"{field} must be {SPEC_DATETIME_ACCEPTED}"),
        (guard + f"({in_range(start)} && {in_range(end)})",
         f"{field}: a date-time must lie between {_FIRST_INSTANT} and {_LAST_INSTANT} (in UTC)"),
        (guard + f"{open_end(start)} || {open_end(end)} || {moment(start, False)} <= {moment(end, True)}",
         f"{field}: the start of the interval is after its end"),
    )


def _bbox_rules(field: str) -> tuple[tuple[str, str], ...]:
    """CEL (rule, message) pairs that check ``self.<field>`` as :func:`parse_bbox` does."""
    b = f"self.{field}"
    h = f"(size({b}) / 2)"
    w, s, e, n = f"{b}[0]", f"{b}[1]", f"{b}[{h}]", f"{b}[{h} + 1]"
    guard = f"!has({b}) || size({b}) == 5 || "
    return (
        (f"!has({b}) || size({b}) != 5",
         f"{field} has 4 numbers [west, south, east, north] or 6 with heights [west, south, zmin, east, north, zmax]"),
        (guard + f"({w} >= -180.0 && {w} <= 180.0 && {e} >= -180.0 && {e} <= 180.0)",
         f"{field}: longitudes (west, east) must lie in [-180, 180]; west > east crosses the antimeridian"),
        (guard + f"({s} >= -90.0 && {s} <= 90.0 && {n} >= -90.0 && {n} <= 90.0)",
         f"{field}: latitudes (south, north) must lie in [-90, 90]"),
        (guard + f"{s} <= {n}", f"{field}: south must not be north of north"),
    )


#: CEL rules (and messages) of a search filter's ``datetime`` and ``bbox``, as the API server checks them.
DATETIME_RULES = _datetime_rules("datetime")
BBOX_RULES = _bbox_rules("bbox")

__all__ = ["BBOX_RULES", "DATETIME_RULES", "SPEC_DATETIME", "SPEC_DATETIME_ACCEPTED", "SPEC_DATETIME_MAX_LENGTH",
           "Box", "SearchError", "check_spec_bbox", "check_spec_datetime", "parse_bbox", "parse_instant",
           "parse_interval"]
