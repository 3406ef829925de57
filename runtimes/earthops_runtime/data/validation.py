"""Feature validation of an EODataset (``spec.validation``) on its statistics: ``validation.json``.

:func:`validate` reads the merged statistics (:meth:`earthops_runtime.data.stats.DatasetStats.to_dict`)
and runs one check per rule and subject, each ``pass``, ``warn`` or ``fail`` with a message for people:

============== ====================================== ===========================================
check          subject                                fails when
============== ====================================== ===========================================
``band-range`` each ``spec.validation.bandRanges``    the exact min or max lies outside [min, max]
               band (or derived feature)              (the fraction outside is exact when the
                                                      statistics counted against the range, else
                                                      estimated from the histogram)
``nan``        each feature                           its NaN/nodata fraction over all splits is
                                                      above ``maxNanFraction``
``class-balance`` the labels (if ``minClassFraction``) the rarest class's share is below it
``label-set``  the labels (if ``allowedLabels`` or    a label outside ``allowedLabels``, or an
               ``classes``)                           index with no class name
``empty-split`` each expected split                   it has no chips
============== ====================================== ===========================================

``policy: fail`` lets a failed check fail the report (``report.passed`` is false, the dataset fails);
``policy: warn`` records failed checks as warnings (keeping ``severity: fail``) and passes.
:meth:`ValidationReport.summary` is the EODataset's ``status.validation``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from earthops.api.dataset import Validation
from earthops_runtime.errors import SpecError

Status = Literal["pass", "warn", "fail"]
SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class Check:
    """The outcome of one rule on one subject."""

    check: str
    status: Status
    message: str
    subject: str | None = None
    #: The spec field the rule comes from.
    rule: str | None = None
    #: What the rule says by itself, before the policy (a ``fail`` stays ``fail`` here under ``warn``).
    severity: Status | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "status": self.status,
                               "severity": self.severity or self.status, "message": self.message}
        if self.subject is not None:
            out["subject"] = self.subject
        if self.rule is not None:
            out["rule"] = self.rule
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class ValidationReport:
    """All checks of one dataset run, after the policy."""

    policy: Literal["fail", "warn"]
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def summary(self) -> dict[str, Any]:
        """``{"passed", "failedChecks", "warnings"}``: the EODataset's ``status.validation``."""
        return {"passed": self.passed, "failedChecks": len(self.failed), "warnings": len(self.warnings)}

    def to_dict(self) -> dict[str, Any]:
        """The whole report (``validation.json``)."""
        return {**self.summary(), "policy": self.policy, "checks": [c.to_dict() for c in self.checks]}

    def message(self, limit: int = 3) -> str:
        """One line for the resource's status: the first failures (or warnings), or that all passed."""
        bad = self.failed or self.warnings
        if not bad:
            return f"validation passed ({len(self.checks)} checks)"
        head = "validation failed" if self.failed else "validation passed with warnings"
        more = f" (+{len(bad) - limit} more)" if len(bad) > limit else ""
        return f"{head}: " + "; ".join(c.message for c in bad[:limit]) + more


# --------------------------------------------------------------------------------------------------


def _rules(rules: Validation | Mapping[str, Any] | None) -> Validation:
    if rules is None:
        return Validation()
    if isinstance(rules, Validation):
        return rules
    return Validation.model_validate(dict(rules))


def check_spec(rules: Validation | Mapping[str, Any] | None, feature_names: Iterable[str]) -> None:
    """Fail fast, before any data is read: every ``bandRanges`` band must be a feature of the dataset
    (a band of ``spec.bands`` or a derived feature). Raises :class:`SpecError`."""
    v = _rules(rules)
    names = list(feature_names)
    unknown = [r.band for r in v.band_ranges if r.band not in names]
    if unknown:
        raise SpecError("spec.validation.bandRanges",
                        f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not among the "
                        f"dataset's features ({', '.join(names)})")


def validate(stats: Mapping[str, Any], label_counts: Mapping[str, Any] | None = None,
             rules: Validation | Mapping[str, Any] | None = None, classes: Sequence[str] | None = None, *,
             splits: Mapping[str, float] | None = None) -> ValidationReport:
    """Run ``rules`` (``spec.validation``: a :class:`Validation` or its JSON) on ``stats`` (the dict of
    :meth:`DatasetStats.to_dict`).

    ``label_counts``: split -> label counts (default: the ones inside ``stats``); ``classes``:
    ``spec.labels.classes`` (class names in index order); ``splits``: split -> fraction from
    ``spec.split`` — the splits with a fraction above 0 must not be empty (default: train and every
    split found in the statistics)."""
    v = _rules(rules)
    split_stats: Mapping[str, Any] = stats.get("splits", {})
    if label_counts is None:
        label_counts = {s: e["labels"] for s, e in split_stats.items() if e.get("labels")}
    classes = list(classes or [])
    checks: list[Check] = []
    checks += _empty_splits(split_stats, splits)
    features = _features(split_stats)
    checks += [_band_range(r.band, r.min, r.max, features) for r in v.band_ranges]
    checks += [_nan(name, per_split, v.max_nan_fraction) for name, per_split in features.items()]
    if v.min_class_fraction > 0:
        checks.append(_class_balance(label_counts, classes, v.min_class_fraction))
    if v.allowed_labels or (classes and label_counts):
        checks.append(_label_set(label_counts, classes, list(v.allowed_labels)))
    if v.policy == "warn":
        for c in checks:
            if c.status == "fail":
                c.severity, c.status = "fail", "warn"
                c.message += " (policy warn: recorded, not failing the dataset)"
    return ValidationReport(policy=v.policy, checks=checks)


def _features(split_stats: Mapping[str, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """feature -> split -> its statistics, features in first-seen order."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for split in _ordered(split_stats):
        for name, f in split_stats[split].get("features", {}).items():
            out.setdefault(name, {})[split] = f
    return out


def _ordered(names: Iterable[str]) -> list[str]:
    names = list(names)
    return [s for s in SPLIT_ORDER if s in names] + [s for s in names if s not in SPLIT_ORDER]


def _pct(x: float) -> str:
    if x == 0:
        return "0%"
    if x < 0.0001:
        return f"{x * 100:.2g}%"
    return f"{x * 100:.2f}".rstrip("0").rstrip(".") + "%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


# --------------------------------------------------------------------------------------------------
# Checks


def _empty_splits(split_stats: Mapping[str, Any], expected: Mapping[str, float] | None) -> list[Check]:
    if expected is None:
        wanted = {s: None for s in _ordered({"train", *split_stats})}
    else:
        wanted = {s: f for s, f in expected.items() if f > 0}
    out = []
    for split in _ordered(wanted):
        chips = int(split_stats.get(split, {}).get("chips", 0))
        frac = wanted[split]
        if chips:
            out.append(Check("empty-split", "pass", f"split {split!r} has {chips:,} chips", split,
                             details={"chips": chips}))
            continue
        why = f" although spec.split.{split} is {frac:g}" if frac is not None else ""
        out.append(Check(
            "empty-split", "fail",
            f"split {split!r} has no chips{why}: too few chips or spatial blocks to share out; add scenes, "
            "lower spec.split.blockSize, or use spec.split.method random",
            split, rule=f"spec.split.{split}", details={"chips": 0}))
    return out


def _band_range(band: str, lo: float, hi: float,
                features: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Check:
    rule = f"spec.validation.bandRanges[{band}]"
    if band not in features:
        return Check("band-range", "fail",
                     f"{band}: not a feature of the dataset, so its range [{_num(lo)}, {_num(hi)}] cannot be "
                     f"checked (features: {', '.join(features)})", band, rule)
    per_split = features[band]
    count = sum(int(f.get("count", 0)) for f in per_split.values())
    mins = [f["min"] for f in per_split.values() if f.get("min") is not None]
    maxs = [f["max"] for f in per_split.values() if f.get("max") is not None]
    if not count or not mins:
        return Check("band-range", "warn",
                     f"{band}: no valid values to check against [{_num(lo)}, {_num(hi)}]", band, rule,
                     details={"count": 0})
    vmin, vmax = min(mins), max(maxs)
    details: dict[str, Any] = {"min": vmin, "max": vmax, "acceptedMin": lo, "acceptedMax": hi, "count": count}
    if vmin >= lo and vmax <= hi:
        return Check("band-range", "pass",
                     f"{band}: observed range [{_num(vmin)}, {_num(vmax)}] is within "
                     f"[{_num(lo)}, {_num(hi)}]",
                     band, rule, details={**details, "below": 0, "above": 0, "exact": True})
    below = above = 0.0
    exact = True
    bound = {"below": False, "above": False}  # an estimate from a histogram tail is an upper bound
    for f in per_split.values():
        r = f.get("range")
        if r is not None and float(r["min"]) == lo and float(r["max"]) == hi:
            below += r["below"]
            above += r["above"]
            continue
        exact = False
        (nb, bb), (na, ba) = _estimate_outside(f, lo, hi)
        below, above = below + nb, above + na
        bound["below"] |= bb
        bound["above"] |= ba
    parts = []
    for n, side, limit, violated in ((below, "below", lo, vmin < lo), (above, "above", hi, vmax > hi)):
        if not violated:
            continue
        how = "" if exact else ("at most " if bound[side] else "about ")
        if n >= 0.5:
            parts.append(f"{how}{_pct(n / count)} of values ({round(n):,}) {side} {_num(limit)}")
        else:
            parts.append(f"a few values {side} {_num(limit)} (fewer than the histogram resolves)")
    details.update({"below": round(below), "above": round(above), "exact": exact,
                    "fractionOutside": (below + above) / count})
    return Check("band-range", "fail",
                 f"{band}: observed range [{_num(vmin)}, {_num(vmax)}] is outside the accepted "
                 f"[{_num(lo)}, {_num(hi)}]: " + " and ".join(parts), band, rule, details=details)


def _estimate_outside(f: Mapping[str, Any], lo: float,
                      hi: float) -> tuple[tuple[float, bool], tuple[float, bool]]:
    """``((below lo, is_bound), (above hi, is_bound))`` estimated from a feature's histogram: uniform
    within a bin; a limit in a tail beyond the histogram's edges gives the tail's count, an upper bound.
    (Exact counts need the statistics to be counted against the range: ``DatasetStats(ranges=...)``.)"""
    h = f.get("histogram")
    vmin, vmax = f.get("min"), f.get("max")
    if not h or vmin is None:
        return (0.0, False), (0.0, False)
    edges, counts = h["edges"], h["counts"]

    def within(x: float) -> float:
        """Estimated count of values between the first edge and x (first edge <= x <= last edge)."""
        total = 0.0
        for i, c in enumerate(counts):
            a, b = edges[i], edges[i + 1]
            if x >= b:
                total += c
            else:
                return total + c * (x - a) / (b - a)
        return total

    if lo <= vmin:
        below = (0.0, False)
    elif lo <= edges[0]:
        below = (float(h["below"]), True)
    else:
        below = (h["below"] + within(min(lo, edges[-1])), lo > edges[-1])
    if hi >= vmax:
        above = (0.0, False)
    elif hi >= edges[-1]:
        above = (float(h["above"]), True)
    else:
        above = (h["above"] + sum(counts) - within(max(hi, edges[0])), hi < edges[0])
    return below, above


def _nan(name: str, per_split: Mapping[str, Mapping[str, Any]], limit: float) -> Check:
    nan = sum(int(f.get("nanCount", 0)) for f in per_split.values())
    total = nan + sum(int(f.get("count", 0)) for f in per_split.values())
    frac = nan / total if total else 0.0
    by_split = {s: float(f.get("nanFraction", 0.0)) for s, f in per_split.items()}
    details = {"nanCount": nan, "total": total, "nanFraction": frac, "bySplit": by_split, "limit": limit}
    rule = "spec.validation.maxNanFraction"
    if total == 0:
        return Check("nan", "warn", f"{name}: no values", name, rule, details=details)
    if frac <= limit:
        return Check("nan", "pass", f"{name}: {_pct(frac)} NaN/nodata (at most {_pct(limit)} accepted)",
                     name, rule, details=details)
    splits = ", ".join(f"{s} {_pct(x)}" for s, x in by_split.items()) if len(by_split) > 1 else ""
    return Check("nan", "fail",
                 f"{name}: {_pct(frac)} of values are NaN/nodata ({nan:,} of {total:,}"
                 f"{'; ' + splits if splits else ''}); at most {_pct(limit)} accepted", name, rule,
                 details=details)


def _label_name(key: str, keys: str, classes: Sequence[str]) -> str:
    if keys == "name":
        return key
    i = int(key)
    return classes[i] if 0 <= i < len(classes) else f"#{i}"


def _combined(label_counts: Mapping[str, Any], classes: Sequence[str]) -> tuple[str | None, dict[str, int]]:
    """(task, label name -> count over all splits); indices without a class name become ``#i``."""
    task = None
    counts: dict[str, int] = {}
    for split in _ordered(label_counts):
        lc = label_counts[split]
        task = task or lc.get("task")
        keys = lc.get("keys", "index")
        for k, n in lc.get("counts", {}).items():
            name = _label_name(k, keys, classes)
            counts[name] = counts.get(name, 0) + int(n)
    return task, counts


def _class_balance(label_counts: Mapping[str, Any], classes: Sequence[str], limit: float) -> Check:
    rule = "spec.validation.minClassFraction"
    task, counts = _combined(label_counts, classes)
    for c in classes:  # a known class with no sample is the rarest of all
        counts.setdefault(c, 0)
    total = sum(counts.values())
    if not total:
        return Check("class-balance", "warn", "no labels were counted: class balance not checked", rule=rule)
    unit = {"segmentation": "pixels", "multilabel": "label assignments"}.get(task or "", "chips")
    shares = {k: n / total for k, n in counts.items()}
    rarest = min(shares, key=lambda k: (shares[k], k))
    details = {"task": task, "unit": unit, "shares": shares, "rarest": rarest, "limit": limit}
    if shares[rarest] >= limit:
        return Check("class-balance", "pass",
                     f"rarest class {rarest!r} has {_pct(shares[rarest])} of the {unit} "
                     f"(at least {_pct(limit)} required)", rarest, rule, details=details)
    low = sorted((k for k in shares if shares[k] < limit), key=lambda k: shares[k])
    listed = ", ".join(f"{k!r} {_pct(shares[k])} ({counts[k]:,})" for k in low[:5])
    more = f" and {len(low) - 5} more" if len(low) > 5 else ""
    return Check("class-balance", "fail",
                 f"{len(low)} class{'es' if len(low) > 1 else ''} below {_pct(limit)} of the {unit}: "
                 f"{listed}{more}",
                 rarest, rule, details=details)


def _label_set(label_counts: Mapping[str, Any], classes: Sequence[str], allowed: Sequence[str]) -> Check:
    rule = "spec.validation.allowedLabels" if allowed else "spec.labels.classes"
    if not label_counts:
        return Check("label-set", "warn", "no labels were counted: label set not checked", rule=rule)
    problems: list[str] = []
    details: dict[str, Any] = {}
    task, counts = _combined(label_counts, classes)
    widths = {lc.get("width") for lc in label_counts.values() if lc.get("width") is not None}
    if classes and widths and widths != {len(classes)}:
        problems.append(f"multilabel vectors have {', '.join(map(str, sorted(widths)))} entries but "
                        f"spec.labels.classes names {len(classes)} classes")
    nameless = sorted((k for k in counts if k.startswith("#") and counts[k]), key=lambda k: int(k[1:]))
    if nameless and classes:
        problems.append(f"class indices {', '.join(k[1:] for k in nameless)} have no name in "
                        f"spec.labels.classes ({len(classes)} classes)")
        details["nameless"] = {k: counts[k] for k in nameless}
    if allowed:
        if nameless and not classes:
            # class indices without names: compare the indices themselves
            unknown = [k for k in counts if counts[k] and k.startswith("#") and k[1:] not in allowed]
        else:
            unknown = [k for k in counts if counts[k] and not k.startswith("#") and k not in allowed]
        if unknown:
            listed = ", ".join(f"{k!r} ({counts[k]:,})" for k in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            problems.append(f"labels outside the allowed set: {listed}{more}")
            details["unknown"] = {k: counts[k] for k in unknown}
    details["labels"] = sorted(k for k in counts if counts[k])
    if problems:
        return Check("label-set", "fail", "; ".join(problems), rule=rule, details=details)
    found = len(details["labels"])
    return Check("label-set", "pass", f"all {found} label{'s' if found != 1 else ''} found are "
                 + ("allowed" if allowed else "named by spec.labels.classes"), rule=rule, details=details)
