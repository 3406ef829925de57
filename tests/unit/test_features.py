"""Derived feature channels (earthops_runtime.data.features): spectral indices from the spyndex
catalogue, SAR features, and the spec errors that fail a run before any pixel is read."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import spyndex

from earthops_runtime.data.features import (
    FeaturePlan,
    band_symbol,
    catalogue_bands,
    plan_features,
    resolve_index_name,
)
from earthops_runtime.errors import SpecError

pytestmark = pytest.mark.unit

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def chips_of(values: dict[str, float], bands: list[str], shape=(2, 3, 3)) -> np.ndarray:
    """Chips (N, C, H, W) where every pixel of band b is values[b]."""
    n, h, w = shape
    return np.stack([np.full((n, h, w), values[b], np.float32) for b in bands], axis=1)


# --------------------------------------------------------------------------------------------------
# Band names -> catalogue symbols


def test_band_symbols_follow_the_catalogue_sentinel2_table():
    expected = {"B01": "A", "B02": "B", "B03": "G", "B04": "R", "B05": "RE1", "B06": "RE2", "B07": "RE3",
                "B08": "N", "B8A": "N2", "B09": "WV", "B11": "S1", "B12": "S2",
                "VV": "VV", "VH": "VH", "HH": "HH", "HV": "HV"}
    assert {b: band_symbol(b) for b in expected} == expected
    assert band_symbol("B10") is None  # cirrus: no catalogue symbol
    # spellings: unpadded, lower case, STAC common names
    assert band_symbol("B8") == "N" and band_symbol("b8a") == "N2" and band_symbol("b4") == "R"
    assert band_symbol("nir") == "N" and band_symbol("swir16") == "S1" and band_symbol("rededge1") == "RE1"
    assert band_symbol("vh") == "VH"


def test_band_symbols_agree_with_the_earthops_stac_band_table():
    from earthops_runtime.stac.conventions import S2_BANDS

    for band in S2_BANDS:
        sym = band_symbol(band.name)
        if band.name == "B10":
            assert sym is None
            continue
        cb = catalogue_bands()[sym]
        # the STAC common names (v1.1: "rededge" for all three) prefix the catalogue's
        assert cb.common_name.startswith(band.common_name), (band.name, cb.common_name, band.common_name)
        assert abs(cb.wavelength_nm / 1000 - band.center_wavelength) < 0.02, band.name


# --------------------------------------------------------------------------------------------------
# Spectral indices


def test_ndvi_ndwi_nbr_against_hand_computation():
    refl = {"B03": 0.08, "B04": 0.05, "B08": 0.40, "B12": 0.10}
    bands = ["B03", "B04", "B08", "B12"]
    plan = plan_features(bands, ["NDVI", "NDWI", "NBR"])
    assert plan.names == ("B03", "B04", "B08", "B12", "NDVI", "NDWI", "NBR")
    out = plan.apply(chips_of(refl, bands))
    assert out.dtype == np.float32 and out.shape == (2, 7, 3, 3)
    np.testing.assert_array_equal(out[:, :4], chips_of(refl, bands))  # bands pass through unchanged
    g, r, n, s2 = 0.08, 0.05, 0.40, 0.10
    np.testing.assert_allclose(out[:, 4], (n - r) / (n + r), rtol=1e-6)  # 0.7778
    np.testing.assert_allclose(out[:, 5], (g - n) / (g + n), rtol=1e-6)  # -0.6667 (McFeeters)
    np.testing.assert_allclose(out[:, 6], (n - s2) / (n + s2), rtol=1e-6)  # 0.6
    assert out[0, 4, 0, 0] == pytest.approx(0.7777778, rel=1e-6)


def test_constants_take_their_catalogue_defaults():
    bands = ["B02", "B04", "B08"]
    out = plan_features(bands, ["EVI"]).apply(chips_of({"B02": 0.03, "B04": 0.05, "B08": 0.4}, bands))
    b, r, n = 0.03, 0.05, 0.4
    np.testing.assert_allclose(out[:, 3], 2.5 * (n - r) / (n + 6 * r - 7.5 * b + 1.0), rtol=1e-6)


def test_every_computable_sentinel2_index_matches_spyndex_compute_index():
    plan_bands = list(S2)
    names = []
    for name in spyndex.indices:
        idx = spyndex.indices[name]
        if idx.application_domain in ("radar", "kernel"):
            continue
        try:
            plan_features(plan_bands, [name])
        except SpecError:
            continue
        names.append(name)
    assert len(names) > 180, len(names)  # most of the catalogue runs on Sentinel-2
    plan = plan_features(plan_bands, names)
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.02, 0.6, size=(4, len(S2), 5, 5)).astype(np.float32)
    out = plan.apply(refl)
    params: dict = {c: spyndex.constants[c].default for c in spyndex.constants}
    for sym, cb in catalogue_bands().items():
        if cb.wavelength_nm is not None:
            params[f"lambda{sym}"] = cb.wavelength_nm
    for i, b in enumerate(S2):
        params[band_symbol(b)] = refl[:, i].astype(np.float64)
    with np.errstate(all="ignore"):
        expected = spyndex.computeIndex(names, params)  # one call: spyndex reads its JSON on every call
    for j, name in enumerate(names):
        want = np.asarray(expected[j], np.float64)
        want = np.where(np.isfinite(want), want, np.nan)
        got = out[:, len(S2) + j].astype(np.float64)
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=2e-3, atol=1e-5, equal_nan=True,
                                   err_msg=name)


def test_index_names_are_case_insensitive_and_outputs_use_the_catalogue_spelling():
    plan = plan_features(["B03", "B04", "B08"], ["ndvi", "Ndwi"])
    assert plan.derived == ("NDVI", "NDWI")
    assert resolve_index_name("ndvi") == "NDVI"
    assert resolve_index_name("kndvi") == "kNDVI"
    assert resolve_index_name("BaI") == "BaI" and resolve_index_name("BAI") == "BAI"


def test_unknown_index_suggests_close_names():
    with pytest.raises(SpecError) as e:
        plan_features(["B04", "B08"], ["NDVII"])
    assert e.value.field == "spec.features.indices"
    assert "unknown spectral index 'NDVII'" in str(e.value) and "did you mean NDVI" in str(e.value)


def test_case_insensitive_collisions_are_reported_as_ambiguous():
    with pytest.raises(SpecError, match=r"'bai' is ambiguous: BAI \(Burned Area Index\) or BaI \(Bareness Index\)"):
        plan_features(["B04", "B08", "B11"], ["bai"])


def test_missing_band_names_the_index_the_symbols_and_the_spec_bands_to_add():
    with pytest.raises(SpecError) as e:
        plan_features(["B03", "B04"], ["NDWI"])
    assert str(e.value) == "spec.features.indices: NDWI needs G and N (B03, B08); missing N: add B08 to spec.bands"
    with pytest.raises(SpecError, match=r"NBR needs N and S2 \(B08, B12\); missing N and S2: add B08 and B12"):
        plan_features(["B04"], ["NBR"])
    with pytest.raises(SpecError, match=r"VVVHR needs VV and VH \(VV, VH\); missing VH: add VH to spec.bands"):
        plan_features(["VV"], ["VVVHR"])


def test_symbols_no_sentinel_band_provides_are_said_so():
    thermal = next(n for n in spyndex.indices if "T" in spyndex.indices[n].bands)
    with pytest.raises(SpecError, match=r"no Sentinel-2 or Sentinel-1 band provides T \(lwir\)"):
        plan_features(S2, [thermal])


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as e:
        plan_features(["B04"], ["NDVI", "nope", "NDVI"])
    msg = str(e.value)
    assert "NDVI needs N and R" in msg and "unknown spectral index 'nope'" in msg and "listed twice" in msg


def test_radar_indices_get_linear_power_from_db_bands():
    bands = ["VV", "VH", "HH", "HV"]
    db = {"VV": -10.0, "VH": -20.0, "HH": -8.0, "HV": -18.0}
    plan = plan_features(bands, ["VVVHR", "RFDI", "VVVHD"])
    out = plan.apply(chips_of(db, bands))
    vv, vh, hh, hv = (10 ** (db[b] / 10) for b in bands)
    np.testing.assert_allclose(out[:, 4], vv / vh, rtol=1e-5)  # 10: a linear ratio, not -10/-20
    np.testing.assert_allclose(out[:, 5], (hh - hv) / (hh + hv), rtol=1e-5)
    np.testing.assert_allclose(out[:, 6], vv - vh, rtol=1e-5)
    # inputs already linear: used as they are
    lin = {b: 10 ** (v / 10) for b, v in db.items()}
    out_lin = plan_features(bands, ["VVVHR"], sar_unit="linear").apply(chips_of(lin, bands))
    np.testing.assert_allclose(out_lin[:, 4], vv / vh, rtol=1e-5)


def test_kernel_ndvi_is_tanh_of_ndvi_squared():
    bands = ["B04", "B08"]
    rng = np.random.default_rng(1)
    x = rng.uniform(0.02, 0.6, (3, 2, 4, 4)).astype(np.float32)
    out = plan_features(bands, ["kNDVI", "NDVI"]).apply(x)
    np.testing.assert_allclose(out[:, 2], np.tanh(out[:, 3].astype(np.float64) ** 2), rtol=1e-4, atol=1e-6)


def test_nan_propagates_and_divisions_by_zero_become_nan():
    bands = ["B04", "B08"]
    x = np.array([[[[0.1, np.nan, 0.0]], [[0.3, 0.3, 0.0]]]], np.float32)  # (1, 2, 1, 3)
    out = plan_features(bands, ["NDVI", "SR"]).apply(x)
    assert out[0, 2, 0, 0] == pytest.approx(0.5)
    assert np.isnan(out[0, 2, 0, 1]) and np.isnan(out[0, 2, 0, 2])  # nodata; 0/0
    assert np.isnan(out[0, 3, 0, 2])  # 0/0 in SR (N/R), not inf
    assert np.isfinite(out[0, 3, 0, 0])


# --------------------------------------------------------------------------------------------------
# SAR features


def test_sar_band_avg_ratio_difference_linear_on_hh_hv():
    bands = ["HH", "HV"]
    x = chips_of({"HH": -12.0, "HV": -24.0}, bands)
    x[0, :, 0, 0] = [-6.0, -30.0]
    plan = plan_features(bands, sar=["band_avg", "ratio", "difference", "linear", "db"])
    assert plan.names == ("HH", "HV", "band_avg", "HH_HV_ratio", "HH_HV_difference", "HH_linear", "HV_linear")
    assert any("already are in dB" in n for n in plan.notes)
    out = plan.apply(x)
    hh, hv = x[:, 0].astype(np.float64), x[:, 1].astype(np.float64)
    np.testing.assert_allclose(out[:, 2], (hh + hv) / 2)  # the iceberg kernel's band_3
    np.testing.assert_allclose(out[:, 3], hh - hv)  # co/cross power ratio in dB
    np.testing.assert_allclose(out[:, 4], 10 ** (hh / 10) - 10 ** (hv / 10), rtol=1e-5)
    np.testing.assert_allclose(out[:, 5], 10 ** (hh / 10), rtol=1e-5)
    np.testing.assert_allclose(out[:, 6], 10 ** (hv / 10), rtol=1e-5)
    assert out[0, 2, 0, 0] == -18.0 and out[0, 3, 0, 0] == 24.0


def test_sar_features_on_vv_vh_and_on_both_pairs():
    assert plan_features(["VV", "VH"], sar=["ratio", "band_avg"]).derived == ("VV_VH_ratio", "band_avg")
    quad = plan_features(["HH", "HV", "VV", "VH"], sar=["band_avg"])
    assert quad.derived == ("HH_HV_band_avg", "VV_VH_band_avg")
    # a lone polarisation beside a complete pair is left out, with a note
    tri = plan_features(["HH", "HV", "VV"], sar=["ratio"])
    assert tri.derived == ("HH_HV_ratio",) and any("VV has no partner" in n for n in tri.notes)


def test_sar_linear_inputs_get_db_channels():
    plan = plan_features(["VV", "VH"], sar=["db", "band_avg"], sar_unit="linear")
    assert plan.derived == ("VV_db", "VH_db", "band_avg")
    out = plan.apply(chips_of({"VV": 0.1, "VH": 0.01}, ["VV", "VH"]))
    np.testing.assert_allclose(out[:, 2], -10.0, rtol=1e-6)
    np.testing.assert_allclose(out[:, 4], -15.0, rtol=1e-6)


def test_incomplete_sar_pair_and_missing_sar_bands_are_spec_errors():
    with pytest.raises(SpecError) as e:
        plan_features(["HH"], sar=["band_avg"])
    assert e.value.field == "spec.features.sar"
    assert "band_avg needs a co- and cross-polarised pair (HH and HV, or VV and VH); spec.bands has only HH: " \
           "add HV to spec.bands" in str(e.value)
    with pytest.raises(SpecError, match="ratio needs SAR bands and spec.bands has none"):
        plan_features(["B04", "B08"], sar=["ratio"])
    with pytest.raises(SpecError, match="unknown SAR feature 'bandavg'; did you mean band_avg"):
        plan_features(["HH", "HV"], sar=["bandavg"])


# --------------------------------------------------------------------------------------------------
# The plan


def test_plan_shapes_pickling_and_single_chips():
    plan = plan_features(["B04", "B08", "HH", "HV"], ["NDVI"], ["band_avg"])
    assert isinstance(plan, FeaturePlan) and plan.names == ("B04", "B08", "HH", "HV", "NDVI", "band_avg")
    again = pickle.loads(pickle.dumps(plan))
    x = np.random.default_rng(0).uniform(0.05, 0.5, (4, 6, 6)).astype(np.float32)
    one = again.apply(x)
    assert one.shape == (6, 6, 6)
    np.testing.assert_array_equal(one, plan.apply(x[None])[0])
    with pytest.raises(ValueError, match=r"expected \(N, 4, H, W\)"):
        plan.apply(np.zeros((2, 3, 4, 4), np.float32))
    assert [d["name"] for d in plan.describe()] == ["NDVI", "band_avg"]
    assert plan.describe()[0]["formula"] == "(N-R)/(N+R)"


def test_a_derived_name_may_not_shadow_a_band():
    with pytest.raises(SpecError, match="same name"):
        plan_features(["B04", "B08", "NDVI"], ["NDVI"])


def test_float64_and_integer_reflectances_come_out_float32():
    bands = ["B04", "B08"]
    out = plan_features(bands, ["NDVI"]).apply(chips_of({"B04": 0.1, "B08": 0.3}, bands).astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 2], 0.5, rtol=1e-6)


def test_fill_writes_the_derived_channels_beside_the_bands_in_place():
    """The pipeline's path (cut_chips with extra_channels, then fill) gives what apply gives."""
    bands = ["B03", "B04", "B08", "B12"]
    plan = plan_features(bands, ["NDVI", "NBR"])
    chips = np.random.default_rng(3).uniform(0.01, 0.6, (5, 4, 8, 8)).astype(np.float32)
    chips[0, 1, 0, 0] = np.nan
    room = np.empty((5, len(plan.names), 8, 8), np.float32)
    room[:, :4] = chips
    out = plan.fill(room)
    assert out is room
    np.testing.assert_array_equal(out, plan.apply(chips))
    with pytest.raises(ValueError, match="expected float32"):
        plan.fill(chips)


@pytest.mark.parametrize("chunk", [1, 128, 192, 320, 10**9])  # 8x8 chips: 1, 2, 3, 5 or all 7 at a time
def test_fill_a_few_chips_at_a_time_gives_the_whole_batch_result(monkeypatch, chunk: int):
    """fill evaluates a few chips at a time (temporaries in cache): any chunk gives the result of one
    pass over the whole batch, NaN and division by zero included, for indices and SAR features."""
    from earthops_runtime.data import features as features_module

    rng = np.random.default_rng(5)
    optical = plan_features(["B03", "B04", "B08", "B12"], ["NDVI", "NBR", "kNDVI"])
    sar = plan_features(["HH", "HV"], [], ["band_avg", "ratio", "difference"])
    for plan, chips in ((optical, rng.uniform(0.0, 0.6, (7, 4, 8, 8))), (sar, rng.normal(-15, 4, (7, 2, 8, 8)))):
        chips = chips.astype(np.float32)
        chips[2, 0, 1, :] = np.nan
        chips[4, :, 3, 3] = 0.0
        monkeypatch.setattr(features_module, "_FILL_CHUNK_ELEMENTS", 10**12)
        whole = plan.apply(chips)
        monkeypatch.setattr(features_module, "_FILL_CHUNK_ELEMENTS", chunk)
        np.testing.assert_array_equal(plan.apply(chips), whole)
        assert np.isnan(whole[:, len(plan.bands):]).any()
