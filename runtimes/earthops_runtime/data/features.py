"""Derived feature channels of an EODataset: spectral indices and SAR features (``spec.features``).

Chips arrive as float32 ``(N, C, H, W)`` (or ``(C, H, W)``) in the order of ``spec.bands``: optical
bands in surface reflectance (scale and offset applied), SAR backscatter in dB, NaN for nodata.
:func:`plan_features` checks the whole ``spec.features`` against ``spec.bands`` before any pixel is
read (a bad spec fails fast, with every problem in one message); :meth:`FeaturePlan.apply` then adds
the derived channels. NaN propagates; a non-finite result (a division by zero) becomes NaN too.

**Spectral indices** come from the Awesome Spectral Indices catalogue (``spyndex``): its formula, its
band symbols and its constants with their catalogue defaults. Band names map to catalogue symbols
through the catalogue's own Sentinel-2A band table (``spyndex.bands[symbol].sentinel2a.band``), so
the mapping is the catalogue's, not a second hand-written table:

    B01 -> A   (coastal)     B05 -> RE1 (rededge071)   B09 -> WV (nir09)
    B02 -> B   (blue)        B06 -> RE2 (rededge075)   B11 -> S1 (swir16)
    B03 -> G   (green)       B07 -> RE3 (rededge078)   B12 -> S2 (swir22)
    B04 -> R   (red)         B08 -> N   (nir)          B10 (cirrus): no symbol
    VV, VH, HH, HV -> the same symbols                 B8A -> N2 (nir08)

The catalogue's STAC common names (``nir``, ``rededge071``, ``swir16``...) are accepted as band names
too. Catalogue constants ``lambdaG``, ``lambdaN``... (no default there) are the Sentinel-2A centre
wavelengths, in nm, of the band behind the symbol. Kernel indices (``kNDVI``...) use the RBF kernel
with the per-pixel length scale ``sigma = (a + b) / 2`` recommended by the kNDVI paper (Camps-Valls
et al. 2021), so that ``kNDVI = tanh(NDVI**2)``.

The catalogue's radar indices (``VVVHR``, ``RFDI``, ``DpRVIVV``...) are defined on **linear power**:
SAR bands in dB are converted (``10 ** (dB / 10)``) before they enter such a formula.

**SAR features** (``spec.features.sar``) work on each complete co/cross-polarised pair of
``spec.bands`` (``HH``/``HV``, ``VV``/``VH``); a lone polarisation beside a complete pair is left out
(with a note), and a spec with no complete pair is a :class:`SpecError`. Outputs are in dB unless
said otherwise:

* ``linear`` -> ``<P>_linear`` for every SAR band: linear power ``10 ** (dB / 10)``.
* ``db`` -> ``<P>_db`` for every SAR band, only when the chips carry linear power
  (``sar_unit="linear"``); with dB chips (the default, every earthops source) the bands already are
  the dB features and ``db`` adds no channel.
* ``ratio`` -> ``<co>_<cross>_ratio``: the co/cross power ratio in dB, ``co_dB - cross_dB``.
* ``difference`` -> ``<co>_<cross>_difference``: the linear power difference ``co_lin - cross_lin``.
* ``band_avg`` -> ``band_avg``: the mean of the pair in dB, ``(co_dB + cross_dB) / 2`` (the third
  channel of the Statoil/C-CORE iceberg kernels, ``(HH + HV) / 2``); ``<co>_<cross>_band_avg`` when
  the spec has both pairs.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from earthops_runtime.data.scene import SAR_BANDS
from earthops_runtime.errors import SpecError

INDICES_FIELD = "spec.features.indices"
SAR_FIELD = "spec.features.sar"

#: Co-polarised band -> its cross-polarised partner (the pairs a dual-pol product carries).
SAR_PAIRS: tuple[tuple[str, str], ...] = (("HH", "HV"), ("VV", "VH"))
#: The polarisations (``scene.SAR_BANDS``) in pair order.
SAR_POLARISATIONS = tuple(p for pair in SAR_PAIRS for p in pair)
SAR_FEATURES = ("db", "linear", "ratio", "difference", "band_avg")
#: Extra band-name spellings accepted besides the catalogue's common names (Earth Search asset keys).
_EXTRA_ALIASES = {"REDEDGE1": "B05", "REDEDGE2": "B06", "REDEDGE3": "B07"}


# --------------------------------------------------------------------------------------------------
# The catalogue and the band-symbol mapping


@functools.cache
def _spyndex():
    import spyndex  # imported on first use: it pulls in requests, ~0.3 s

    return spyndex


def _s2_name(band: str) -> str:
    """``B1`` / ``b01`` / ``B8a`` -> ``B01`` / ``B01`` / ``B8A``; other names upper-cased."""
    up = band.upper()
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", up)
    if not m:
        return up
    return f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"


@dataclass(frozen=True)
class CatalogueBand:
    """A catalogue band symbol and the Sentinel band that provides it."""

    symbol: str
    band: str  # Sentinel-2 band name (B08) or SAR polarisation (VV)
    common_name: str | None
    wavelength_nm: float | None


@functools.cache
def catalogue_bands() -> Mapping[str, CatalogueBand]:
    """Catalogue symbol -> :class:`CatalogueBand`, from the catalogue's Sentinel-2A table plus the four
    SAR polarisations. Symbols no Sentinel band provides (``T``, ``Y``, ``G1``) are left out."""
    spx = _spyndex()
    out: dict[str, CatalogueBand] = {}
    for symbol in spx.bands:
        b = spx.bands[symbol]
        s2 = getattr(b, "sentinel2a", None)
        if s2 is not None:
            out[symbol] = CatalogueBand(symbol, _s2_name(s2.band), b.common_name, float(s2.wavelength))
    for pol in SAR_POLARISATIONS:
        out[pol] = CatalogueBand(pol, pol, None, None)
    return MappingProxyType(out)


@functools.cache
def _symbol_by_band_name() -> Mapping[str, str]:
    """Upper-cased band name or alias -> catalogue symbol."""
    out: dict[str, str] = {}
    for cb in catalogue_bands().values():
        out[cb.band] = cb.symbol
        if cb.common_name:
            out[cb.common_name.upper()] = cb.symbol
    for alias, band in _EXTRA_ALIASES.items():
        out[alias] = out[band]
    return MappingProxyType(out)


def band_symbol(band: str) -> str | None:
    """The catalogue symbol a spec band name provides (``B08`` -> ``N``, ``VH`` -> ``VH``), or None."""
    return _symbol_by_band_name().get(_s2_name(band))


def _symbol_description(symbol: str) -> str:
    spx = _spyndex()
    if symbol in spx.bands:
        b = spx.bands[symbol]
        return f"{symbol} ({b.common_name})"
    return symbol


@functools.cache
def _index_names_upper() -> Mapping[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for name in _spyndex().indices:
        out.setdefault(name.upper(), []).append(name)
    return MappingProxyType({k: tuple(v) for k, v in out.items()})


def resolve_index_name(name: str) -> str:
    """The catalogue's spelling of an index name given in any case; :class:`SpecError` otherwise."""
    indices = _spyndex().indices
    if name in indices:
        return name
    found = _index_names_upper().get(name.upper(), ())
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        options = " or ".join(f"{n} ({indices[n].long_name})" for n in found)
        raise SpecError(INDICES_FIELD,
                        f"index {name!r} is ambiguous: {options}; write it in the catalogue's case")
    upper = list(_index_names_upper())
    close = difflib.get_close_matches(name.upper(), upper, n=4, cutoff=0.6)
    suggestion = ", ".join(n for c in close for n in _index_names_upper()[c])
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    raise SpecError(INDICES_FIELD,
                    f"unknown spectral index {name!r}{hint} (the Awesome Spectral Indices catalogue has "
                    f"{len(indices)} indices: https://github.com/awesome-spectral-indices)")


# --------------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class _Band:
    """A formula input read from chip channel ``channel``; ``linear``: dB -> linear power first."""

    channel: int
    linear: bool = False


@dataclass(frozen=True)
class _Const:
    value: float


@dataclass(frozen=True)
class _Kernel:
    """RBF kernel k(a, b) with per-pixel sigma (a + b) / 2; k(a, a) is 1."""

    a: _Band | _Const
    b: _Band | _Const


_Input = _Band | _Const | _Kernel


@dataclass(frozen=True)
class IndexFeature:
    """A spectral index channel: a catalogue formula and where each of its symbols comes from."""

    name: str
    formula: str
    inputs: tuple[tuple[str, _Input], ...]
    long_name: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "index", "longName": self.long_name, "formula": self.formula}


@dataclass(frozen=True)
class SarFeature:
    """A SAR channel: ``op`` on channel ``a`` (and ``b`` for pair features)."""

    name: str
    op: Literal["linear", "db", "ratio", "difference", "band_avg"]
    a: int
    b: int | None = None
    definition: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "sar", "op": self.op, "definition": self.definition}


@dataclass(frozen=True)
class FeaturePlan:
    """The checked ``spec.features`` for given ``spec.bands``: what each output channel is."""

    bands: tuple[str, ...]
    features: tuple[IndexFeature | SarFeature, ...] = ()
    sar_unit: Literal["db", "linear"] = "db"
    #: Things worth knowing that are not errors (a lone polarisation, a no-op conversion).
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Output channel names: the bands, then the derived features in spec order."""
        return self.bands + self.derived

    @property
    def derived(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def describe(self) -> list[dict[str, Any]]:
        """One entry per derived channel (for the dataset's catalog and docs)."""
        return [f.describe() for f in self.features]

    def apply(self, chips: np.ndarray) -> np.ndarray:
        """``chips`` ``(N, C, H, W)`` or ``(C, H, W)`` with ``C == len(bands)`` -> float32 chips with
        ``len(names)`` channels: the input bands unchanged, then the derived ones."""
        x = np.asarray(chips)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            c = len(self.bands)
            raise ValueError(f"chips of shape {np.shape(chips)} do not match the plan's {c} bands "
                             f"{list(self.bands)}: expected (N, {c}, H, W) or ({c}, H, W)")
        n, c, h, w = x.shape
        out = np.empty((n, c + len(self.features), h, w), dtype=np.float32)
        out[:, :c] = x
        self.fill(out)
        return out[0] if single else out

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Compute the derived channels in place: ``out`` is float32 ``(N, len(names), H, W)`` whose
        first ``len(bands)`` channels hold the bands (:func:`~earthops_runtime.data.chips.cut_chips`
        with ``extra_channels`` makes such batches). Returns ``out``."""
        if out.ndim != 4 or out.shape[1] != len(self.names) or out.dtype != np.float32:
            raise ValueError(f"chips of shape {out.shape} ({out.dtype}) do not match the plan: expected float32 "
                             f"(N, {len(self.names)}, H, W), the bands {list(self.bands)} then room for "
                             f"{list(self.derived)}")
        if not self.features:
            return out
        # a few chips at a time: the formulas' temporaries stay in the CPU cache instead of being
        # batch-sized arrays (the same element-wise results)
        step = max(1, _FILL_CHUNK_ELEMENTS // max(1, out.shape[2] * out.shape[3]))
        for i in range(0, len(out), step):
            self._fill(out[i:i + step])
        return out

    def _fill(self, out: np.ndarray) -> None:
        c = len(self.bands)
        linear_cache: dict[int, np.ndarray] = {}
        db_cache: dict[int, np.ndarray] = {}

        def linear(ch: int) -> np.ndarray:
            if ch not in linear_cache:
                v = out[:, ch]
                ten = np.float32(10)
                linear_cache[ch] = np.power(ten, v / ten) if self.sar_unit == "db" else v
            return linear_cache[ch]

        def db(ch: int) -> np.ndarray:
            if ch not in db_cache:
                v = out[:, ch]
                db_cache[ch] = v if self.sar_unit == "db" else np.float32(10.0) * np.log10(v)
            return db_cache[ch]

        with np.errstate(all="ignore"):
            for j, f in enumerate(self.features, start=c):
                if isinstance(f, IndexFeature):
                    params = {sym: _value(src, out, linear) for sym, src in f.inputs}
                    # the catalogue's formulas are arithmetic expressions, evaluated as spyndex does
                    res = eval(_compiled(f.formula), {"__builtins__": {}}, params)  # noqa: S307
                else:
                    res = _sar(f, linear, db)
                dst = out[:, j]
                dst[...] = res
                bad = ~np.isfinite(dst)
                if bad.any():
                    dst[bad] = np.nan


#: Pixels per chunk of :meth:`FeaturePlan.fill` (a float32 temporary of 1 MiB).
_FILL_CHUNK_ELEMENTS = 1 << 18


@functools.lru_cache(maxsize=512)
def _compiled(formula: str):
    return compile(formula, "<spectral index>", "eval")


def _value(src: _Input, chips: np.ndarray, linear) -> np.ndarray | float:
    if isinstance(src, _Const):
        return src.value
    if isinstance(src, _Band):
        return linear(src.channel) if src.linear else chips[:, src.channel]
    a, b = _value(src.a, chips, linear), _value(src.b, chips, linear)
    if src.a == src.b:
        return np.float32(1.0)
    sigma = (a + b) / np.float32(2.0)
    return np.exp(-((a - b) ** 2) / (np.float32(2.0) * sigma * sigma))


def _sar(f: SarFeature, linear, db) -> np.ndarray:
    if f.op == "linear":
        return linear(f.a)
    if f.op == "db":
        return db(f.a)
    assert f.b is not None
    if f.op == "ratio":
        return db(f.a) - db(f.b)
    if f.op == "difference":
        return linear(f.a) - linear(f.b)
    return (db(f.a) + db(f.b)) / np.float32(2.0)  # band_avg


def plan_features(bands: Sequence[str], indices: Iterable[str] = (), sar: Iterable[str] = (), *,
                  sar_unit: Literal["db", "linear"] = "db") -> FeaturePlan:
    """Check ``spec.features`` against ``spec.bands`` and plan the derived channels.

    ``sar_unit`` is the unit of the SAR bands in the chips (dB for every earthops source).
    Raises :class:`SpecError` (field ``spec.features.indices`` or ``spec.features.sar``) naming every
    problem: an unknown index (with close names), an index whose bands the spec lacks (with the spec
    bands that would provide them), an incomplete SAR pair."""
    bands = tuple(bands)
    if sar_unit not in ("db", "linear"):
        raise ValueError(f"sar_unit must be 'db' or 'linear', not {sar_unit!r}")
    indices, sar = list(indices), list(sar)
    features: list[IndexFeature | SarFeature] = []
    notes: list[str] = []
    if indices:
        features += _plan_indices(bands, indices, sar_unit)
    if sar:
        sar_features, sar_notes = _plan_sar(bands, sar, sar_unit)
        features += sar_features
        notes += sar_notes
    seen = set(bands)
    for f in features:
        if f.name in seen:
            fld = INDICES_FIELD if isinstance(f, IndexFeature) else SAR_FIELD
            raise SpecError(fld, f"feature {f.name!r} would have the same name as a band or another feature")
        seen.add(f.name)
    return FeaturePlan(bands=bands, features=tuple(features), sar_unit=sar_unit, notes=tuple(notes))


def _plan_indices(bands: tuple[str, ...], names: list[str], sar_unit: str) -> list[IndexFeature]:
    spx = _spyndex()
    cat = catalogue_bands()
    # catalogue symbol -> channel of the first spec band providing it
    provided: dict[str, int] = {}
    for i, b in enumerate(bands):
        sym = band_symbol(b)
        if sym is not None:
            provided.setdefault(sym, i)

    problems: list[str] = []
    out: list[IndexFeature] = []
    seen: dict[str, str] = {}
    for raw in names:
        try:
            name = resolve_index_name(raw)
        except SpecError as e:
            problems.append(str(e).removeprefix(f"{INDICES_FIELD}: "))
            continue
        if name in seen:
            problems.append(f"index {name} is listed twice ({seen[name]!r} and {raw!r})")
            continue
        seen[name] = raw
        idx = spx.indices[name]
        needed_bands: list[str] = []  # catalogue band symbols, in formula order, no repeats
        inputs: list[tuple[str, _Input]] = []
        unsupported: list[str] = []

        def band_input(sym: str) -> _Band | None:
            if sym not in needed_bands:  # noqa: B023 - called within this iteration
                needed_bands.append(sym)  # noqa: B023
            if sym not in provided:
                return None
            linear = sym in SAR_BANDS and sar_unit == "db"
            return _Band(provided[sym], linear=linear)

        def const_input(sym: str) -> _Const | None:
            if sym.startswith("lambda") and sym[6:] in cat and cat[sym[6:]].wavelength_nm is not None:
                return _Const(cat[sym[6:]].wavelength_nm)
            c = spx.constants[sym]
            if c.default is None:
                unsupported.append(f"constant {sym} ({c.description}) has no default in the catalogue")  # noqa: B023
                return None
            return _Const(float(c.default))

        for sym in idx.bands:
            if sym in spx.bands or sym in SAR_BANDS:
                src = band_input(sym)
            elif sym in spx.constants:
                src = const_input(sym)
            elif (pair := _kernel_pair(sym)) is not None:
                ab = [band_input(s) if s in spx.bands else const_input(s) for s in pair]
                src = _Kernel(ab[0], ab[1]) if None not in ab else None
            else:
                unsupported.append(f"input {sym} is neither a band nor a catalogue constant")
                src = None
            if src is not None:
                inputs.append((sym, src))

        missing = [s for s in needed_bands if s not in provided]
        if missing:
            problems.append(_missing_message(name, needed_bands, missing))
        if unsupported:
            problems.append(f"{name} cannot be computed: " + "; ".join(unsupported))
        if not missing and not unsupported:
            out.append(IndexFeature(name=name, formula=idx.formula, inputs=tuple(inputs),
                                    long_name=idx.long_name))
    if problems:
        raise SpecError(INDICES_FIELD, "; ".join(problems))
    return out


def _kernel_pair(sym: str) -> tuple[str, str] | None:
    """``kNR`` -> ``("N", "R")``: the catalogue writes kernel inputs as ``k`` + two symbols."""
    spx = _spyndex()
    if not sym.startswith("k") or len(sym) < 3:
        return None
    rest = sym[1:]
    for cut in range(1, len(rest)):
        a, b = rest[:cut], rest[cut:]
        if all(s in spx.bands or s in spx.constants for s in (a, b)):
            return a, b
    return None


def _missing_message(name: str, needed: list[str], missing: list[str]) -> str:
    cat = catalogue_bands()

    def spec_band(sym: str) -> str | None:
        return cat[sym].band if sym in cat else None

    def listing(syms: list[str]) -> str:
        return syms[0] if len(syms) == 1 else ", ".join(syms[:-1]) + " and " + syms[-1]

    providers = [spec_band(s) or "no Sentinel band" for s in needed]
    msg = f"{name} needs {listing(needed)} ({', '.join(providers)}); missing {listing(missing)}"
    addable = [spec_band(s) for s in missing if spec_band(s)]
    unavailable = [_symbol_description(s) for s in missing if not spec_band(s)]
    if addable:
        msg += f": add {listing(addable)} to spec.bands"
    if unavailable:
        msg += "; " if addable else ": "
        msg += f"no Sentinel-2 or Sentinel-1 band provides {listing(unavailable)}"
    return msg


def _plan_sar(bands: tuple[str, ...], sar: list[str], sar_unit: str) -> tuple[list[SarFeature], list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    channel = {}
    for i, b in enumerate(bands):
        if b.upper() in SAR_BANDS:
            channel.setdefault(b.upper(), i)
    present = [p for p in SAR_POLARISATIONS if p in channel]
    pairs = [(co, cross) for co, cross in SAR_PAIRS if co in channel and cross in channel]
    lone = [p for p in present if not any(p in pair for pair in pairs)]
    out: list[SarFeature] = []
    seen: set[str] = set()
    for op in sar:
        if op not in SAR_FEATURES:
            close = difflib.get_close_matches(op, SAR_FEATURES, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(f"unknown SAR feature {op!r}{hint} (accepted: {', '.join(SAR_FEATURES)})")
            continue
        if op in seen:
            problems.append(f"SAR feature {op} is listed twice")
            continue
        seen.add(op)
        if not present:
            problems.append(f"{op} needs SAR bands and spec.bands has none: add HH and HV, or VV and VH")
            continue
        if op in ("db", "linear"):
            if op == sar_unit:
                notes.append(f"{op}: the SAR bands already are in {'dB' if op == 'db' else 'linear power'}; "
                             "no channel added")
                continue
            unit = "linear power" if op == "linear" else "dB"
            out += [SarFeature(f"{bands[channel[p]]}_{op}", op, channel[p], definition=f"{p} in {unit}")
                    for p in present]
            continue
        if not pairs:
            have = " and ".join(present)
            wanted = {co: cross for co, cross in SAR_PAIRS} | {cross: co for co, cross in SAR_PAIRS}
            add = " or ".join(wanted[p] for p in present)
            problems.append(f"{op} needs a co- and cross-polarised pair (HH and HV, or VV and VH); "
                            f"spec.bands has only {have}: add {add} to spec.bands")
            continue
        for co, cross in pairs:
            a, b = bands[channel[co]], bands[channel[cross]]
            if op == "ratio":
                out.append(SarFeature(f"{a}_{b}_ratio", op, channel[co], channel[cross],
                                      f"{co}/{cross} power ratio in dB: {co}_dB - {cross}_dB"))
            elif op == "difference":
                out.append(SarFeature(f"{a}_{b}_difference", op, channel[co], channel[cross],
                                      f"linear power difference: {co}_linear - {cross}_linear"))
            else:
                name = "band_avg" if len(pairs) == 1 else f"{a}_{b}_band_avg"
                out.append(SarFeature(name, op, channel[co], channel[cross],
                                      f"mean of the pair in dB: ({co}_dB + {cross}_dB) / 2"))
        if lone:
            notes.append(f"{op}: {', '.join(lone)} has no partner polarisation in spec.bands and is left out")
    if problems:
        raise SpecError(SAR_FIELD, "; ".join(problems))
    return out, sorted(set(notes), key=notes.index)


# --------------------------------------------------------------------------------------------------
# From feature names back to the plan (serving: a model's features from raw bands)

_SAR_SUFFIX = re.compile(r"^(?P<a>[A-Za-z]{2})(?:_(?P<b>[A-Za-z]{2}))?_(?P<op>linear|db|ratio|difference|band_avg)$")


def sar_feature_op(name: str) -> str | None:
    """The SAR feature op a channel name was made by (``band_avg``, ``HH_HV_ratio``, ``VV_linear``...),
    or None when the name is not a SAR feature's."""
    if name == "band_avg":
        return "band_avg"
    m = _SAR_SUFFIX.match(name)
    if not m or m.group("a").upper() not in SAR_BANDS or (m.group("b") and m.group("b").upper() not in SAR_BANDS):
        return None
    paired = m.group("op") in ("ratio", "difference") or (m.group("op") == "band_avg")
    return m.group("op") if bool(m.group("b")) == paired else None


def plan_for_features(features: Sequence[str], bands: Sequence[str]) -> tuple[FeaturePlan, list[int]]:
    """The plan that derives a model's ``features`` (channel names as the dataset made them: bands,
    catalogue indices, SAR features) from raw ``bands`` (in the dataset's units: reflectance, dB),
    and where each feature is among ``plan.names`` — the dataset's own code, so serving computes
    exactly what training saw. :class:`SpecError` (field ``bands``) naming the features that the
    given bands cannot provide and the bands they need."""
    given = tuple(bands)
    indices: list[str] = []
    sar: list[str] = []
    missing: list[str] = []
    for name in features:
        if name in given:
            continue
        op = sar_feature_op(name)
        if op is not None:
            if op not in sar:
                sar.append(op)
            continue
        try:
            resolve_index_name(name)
        except SpecError:
            missing.append(name)
            continue
        indices.append(name)
    if missing:
        raise SpecError("bands", f"band{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing; "
                                 f"given: {', '.join(given) or '(none)'}")
    try:
        plan = plan_features(given, indices, sar)
    except SpecError as exc:
        raise SpecError("bands", f"the features {', '.join(f for f in features if f not in given)} cannot be "
                                 f"derived from the bands {', '.join(given)}: {exc.detail}") from None
    where = {n: i for i, n in enumerate(plan.names)}
    lost = [f for f in features if f not in where]
    if lost:
        raise SpecError("bands", f"the features {', '.join(lost)} cannot be derived from the bands {', '.join(given)} "
                                 f"(they give {', '.join(plan.names)})")
    return plan, [where[f] for f in features]
