"""Scenes from a real STAC API (stac-fastapi-pgstac on PostgreSQL + PostGIS) whose assets are COGs in
a real S3 server (SeaweedFS), and from the same items as a static catalog in that bucket.

The items are the generated ones of the unit tests (three collections, ranged datetimes, missing
properties, tied datetimes), here with one small COG per band asset, georeferenced on the item's bbox
and filled with the item's number, so a read proves which file came back.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from earthops.api.dataset import Source
from earthops_runtime.data.sources import (
    RASTER_KEY,
    band_assets,
    parse_interval,
    resolve_scenes,
)
from earthops_runtime.errors import SpecError
from tests.infra.proc import free_port
from tests.infra.s3 import SeaweedS3
from tests.infra.stacapi import StacApiServer, minimal_collection
from tests.unit.test_sources import (
    COLLECTIONS,
    EPOCH,
    FILTERS,
    brute_force,
    catalog_files,
    iso,
    make_items,
)

pytestmark = pytest.mark.integration

BAND_FILES = {"B04", "B08", "vv", "vh"}


@dataclass
class World:
    bucket: str
    collections: list[str]
    items: list[dict[str, Any]]
    number: dict[str, int]  # item id -> the value its COGs are filled with
    api_url: str
    catalog_href: str


def cog_bytes(bbox: list[float], value: int, dtype: str, description: str) -> bytes:
    """A 32x32 Cloud-Optimized GeoTIFF in EPSG:4326 covering ``bbox``, every pixel ``value``."""
    data = np.full((1, 32, 32), value, dtype=dtype)
    w, s, e, n = bbox
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 1, "dtype": dtype, "crs": "EPSG:4326",
               "transform": Affine((e - w) / 32, 0.0, w, 0.0, -(n - s) / 32, n), "tiled": True, "blockxsize": 16, "blockysize": 16}
    with MemoryFile() as gtiff:
        with gtiff.open(**profile) as ds:
            ds.write(data)
            ds.set_band_description(1, description)
        with gtiff.open() as src, MemoryFile() as cog:
            rasterio.shutil.copy(src, cog.name, driver="COG", BLOCKSIZE=16)
            return cog.read()


@pytest.fixture(scope="module")
def world(stac_api: StacApiServer, s3_server: SeaweedS3) -> Iterator[World]:
    token = secrets.token_hex(3)
    bucket = s3_server.create_bucket(f"t-sources-stacapi-{token}")
    collections = [f"src-{token}-{c}" for c in COLLECTIONS]
    try:
        rename = dict(zip(COLLECTIONS, collections, strict=True))
        items = make_items(60, seed=11, asset_prefix=lambda item_id: f"s3://{bucket}/cogs/{item_id}/{item_id}_")
        number = {}
        uploads: dict[str, bytes] = {}
        for i, item in enumerate(items):
            item["collection"] = rename[item["collection"]]
            number[item["id"]] = i + 1
            for key, asset in item["assets"].items():
                if key in BAND_FILES:
                    dtype = "float32" if key in ("vv", "vh") else "uint16"
                    uploads[asset["href"].removeprefix("s3://")] = cog_bytes(item["bbox"], i + 1, dtype, key.upper())
        fs = s3_server.filesystem()
        fs.pipe(uploads)
        for rel, doc in catalog_files(items, collections).items():
            fs.pipe(f"{bucket}/catalog/{rel}", json.dumps(doc).encode())
        stac_api.load(collections=[minimal_collection(c, [it for it in items if it["collection"] == c])
                                   for c in collections], items=items)
        yield World(bucket, collections, items, number, stac_api.url, f"s3://{bucket}/catalog/catalog.json")
    finally:
        try:
            stac_api.delete_collection(*collections)
        except Exception:  # noqa: BLE001 - cleanup must not hide the test's outcome
            pass
        s3_server.delete_bucket(bucket)


def api_source(world: World, **search: Any) -> Source:
    search.setdefault("collections", world.collections)  # the database is shared by the session
    return Source.model_validate({"stacApi": {"url": world.api_url, **search}})


def catalog_source(world: World, **search: Any) -> Source:
    search.setdefault("collections", world.collections)
    return Source.model_validate({"catalog": {"href": world.catalog_href, **search}})


def expected(world: World, **search: Any) -> list[str]:
    start, end = parse_interval(search.get("datetime"))
    predicate = None
    if "filter" in search:
        predicate = next(p for f, p in FILTERS if f == search["filter"])
    return brute_force(world.items, collections=search.get("collections", world.collections),
                       bbox=search.get("bbox"), start=start, end=end, predicate=predicate,
                       max_items=search.get("maxItems", 100))


CASES = [
    {"bbox": [-4.0, 42.0, 3.0, 48.0], "datetime": "2020-03-01T00:00:00Z/2022-03-01T00:00:00Z",
     "filter": FILTERS[0][0]},
    {"bbox": [-10.0, 40.0, 2.0, 52.0], "datetime": "2021-01-01/..", "filter": FILTERS[2][0], "maxItems": 5},
    {"datetime": "../2021-06-01T12:00:00Z", "maxItems": 4},  # tied datetimes: collection, then id decide
    {"bbox": [-6.0, 41.0, 9.0, 51.0], "filter": FILTERS[3][0]},
    {"datetime": "2020-01-01T00:00:00Z/2021-12-31T23:59:59Z", "filter": FILTERS[4][0]},
    {"filter": FILTERS[6][0], "maxItems": 1000},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(sorted(c)))
def test_api_search_matches_brute_force(world, s3_env, case):
    want = expected(world, **case)
    assert want, f"{case} selects nothing: make it select something"
    scenes = resolve_scenes(api_source(world, **case), ["B04"])
    assert [s.id for s in scenes] == want
    by_id = {it["id"]: it for it in world.items}
    for scene in scenes:
        item = by_id[scene.id]
        assert scene.collection == item["collection"]
        assert scene.stac_href == f"{world.api_url}/collections/{item['collection']}/items/{scene.id}"
        assert scene.properties["labels"] == item["properties"]["labels"]


def test_random_api_searches_match_brute_force_and_the_catalog(world, s3_env):
    """30 random searches on the API against brute force; the first 8 on the catalog in the bucket
    too (a walk reads all 65 documents from S3: ~0.5 s each)."""
    rng = random.Random(99)
    nonempty = 0
    for n in range(30):
        case: dict[str, Any] = {"maxItems": rng.choice([2, 10, 100])}
        if rng.random() < 0.4:
            case["collections"] = rng.sample(world.collections, k=rng.randint(1, 2))
        if rng.random() < 0.7:
            w, s = rng.uniform(-12, 6), rng.uniform(39, 49)
            case["bbox"] = [round(w, 3), round(s, 3), round(w + rng.uniform(1, 8), 3), round(s + rng.uniform(1, 5), 3)]
        if rng.random() < 0.7:
            a = EPOCH + timedelta(days=rng.randrange(1000))
            b = a + timedelta(days=rng.randrange(1, 500))
            case["datetime"] = f"{rng.choice([iso(a), '..', a.date().isoformat()])}/" \
                               f"{rng.choice([iso(b), '..', b.date().isoformat()])}"
        if rng.random() < 0.6:
            case["filter"] = rng.choice(FILTERS)[0]
        want = expected(world, **case)
        results = []
        sources = [api_source(world, **case)] + ([catalog_source(world, **case)] if n < 8 else [])
        for source in sources:
            try:
                results.append([s.id for s in resolve_scenes(source, [])])
            except SpecError as exc:
                assert exc.reason == "EmptySource", (case, exc)
                results.append([])
        assert results[0] == want, case
        assert results[1:] in ([], [want]), case
        nonempty += bool(want)
    assert nonempty >= 10


def test_assets_resolve_and_rasterio_reads_them_from_s3(world, s3_env):
    case = CASES[0]
    scenes = resolve_scenes(api_source(world, **case), ["red", "B08"])
    assert scenes
    by_id = {it["id"]: it for it in world.items}
    for scene in scenes[:6]:
        hrefs = band_assets(scene, ["red", "B08"])
        assert hrefs == {"red": f"s3://{world.bucket}/cogs/{scene.id}/{scene.id}_B04.tif",
                         "B08": f"s3://{world.bucket}/cogs/{scene.id}/{scene.id}_B08.tif"}
        assert scene.properties[RASTER_KEY]["red"] == {"asset": "B04", "index": 1, "scale": 0.0001,
                                                       "offset": -0.1, "nodata": 0, "unit": None}
        for band, href in hrefs.items():
            with rasterio.open(href) as ds:  # GDAL /vsis3/ with the s3_env credentials
                assert ds.driver == "GTiff" and ds.profile.get("tiled")
                assert np.all(ds.read(1) == world.number[scene.id]), (band, href)
                assert tuple(ds.bounds) == pytest.approx(by_id[scene.id]["bbox"])


def test_sar_scenes_from_the_api(world, s3_env):
    [s1] = [c for c in world.collections if c.endswith("s1-archive")]
    scenes = resolve_scenes(api_source(world, collections=[s1], maxItems=3), ["VV", "VH"])
    assert len(scenes) == 3
    for scene in scenes:
        hrefs = band_assets(scene, ["VV", "VH"])
        with rasterio.open(hrefs["VH"]) as ds:
            assert ds.dtypes[0] == "float32" and ds.read(1)[0, 0] == world.number[scene.id]
        assert scene.properties[RASTER_KEY]["VV"]["nodata"] == "nan"


def test_empty_search_is_a_spec_error(world):
    source = api_source(world, bbox=[100.0, -10.0, 101.0, -9.0], datetime="2021-01-01T00:00:00Z/..")
    with pytest.raises(SpecError) as err:
        resolve_scenes(source, ["B04"])
    assert err.value.reason == "EmptySource"
    assert err.value.field == "spec.source"
    assert str(err.value) == (
        f"spec.source: the search matched no scenes (collections={world.collections}, "
        "bbox=[100.0, -10.0, 101.0, -9.0], datetime=2021-01-01T00:00:00Z/..)")


def test_unknown_band_against_the_api(world):
    with pytest.raises(SpecError) as err:
        resolve_scenes(api_source(world, maxItems=20), ["B04", "B13"])
    assert err.value.field == "spec.bands"
    assert str(err.value).startswith("spec.bands: band 'B13' is not in the source; available: B04, B08, ")


def test_unreachable_api_is_a_spec_error():
    url = f"http://127.0.0.1:{free_port()}"
    source = Source.model_validate({"stacApi": {"url": url, "collections": ["x"]}})
    with pytest.raises(SpecError) as err:
        resolve_scenes(source, ["B04"])
    assert err.value.reason == "SourceUnavailable"
    assert err.value.field == "spec.source.stacApi.url"
    assert str(err.value) == f"spec.source.stacApi.url: cannot reach {url}: Connection refused"


def test_the_api_counts_matches(world):
    """pgstac's context is on: numberMatched is there (pystac-client's matched())."""
    from pystac_client import Client

    search = Client.open(world.api_url).search(collections=world.collections[:1], max_items=1)
    assert search.matched() == sum(it["collection"] == world.collections[0] for it in world.items)


def test_static_catalog_in_the_bucket_gives_the_same_scenes(world, s3_env):
    for case in CASES:
        from_api = resolve_scenes(api_source(world, **case), ["B04", "nir"])
        from_catalog = resolve_scenes(catalog_source(world, **case), ["B04", "nir"])
        assert [s.id for s in from_catalog] == [s.id for s in from_api], case
        for a, c in zip(from_api, from_catalog, strict=True):
            assert c.stac_href == f"{world.catalog_href.rsplit('/', 1)[0]}/" \
                                  f"{'archive/' if a.collection.endswith('s1-archive') else ''}" \
                                  f"{a.collection}/{a.id}/{a.id}.json"
            assert (c.assets, c.datetime, c.bbox, c.collection) == (a.assets, a.datetime, a.bbox, a.collection)
            assert c.properties == a.properties


def test_files_source_on_s3_globs(world, s3_env):
    s2 = [it for it in world.items if not it["collection"].endswith("s1-archive")]
    source = Source.model_validate({"files": {"uris": [f"s3://{world.bucket}/cogs/*/*_B0[48].tif"]}})
    scenes = resolve_scenes(source, ["B04", "nir"])
    assert sorted(s.id for s in scenes) == sorted(it["id"] for it in s2)
    by_id = {it["id"]: it for it in s2}
    for scene in scenes[:5]:
        hrefs = band_assets(scene, ["B04", "nir"])
        assert hrefs["nir"] == f"s3://{world.bucket}/cogs/{scene.id}/{scene.id}_B08.tif"
        assert scene.bbox == pytest.approx(by_id[scene.id]["bbox"], abs=1e-9)
        assert scene.properties[RASTER_KEY]["B04"] == {"asset": "B04", "index": 1, "scale": None,
                                                       "offset": None, "nodata": None, "unit": None}


CHILD = """
import os, sys, time
from tests.infra.stacapi import StacApiServer
server = StacApiServer().start()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.root))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def test_a_killed_test_process_leaves_no_stac_api_behind(stac_api, tmp_path):
    """SIGKILL the process that started a server (no cleanup runs): PostgreSQL (running as another
    user through setpriv) with its backends, and uvicorn, must die with it; the next start sweeps
    its folder."""
    from tests.infra.proc import spawn, stop, wait_for
    from tests.infra.stacapi import REPO_ROOT, sweep_stale_workdirs

    marker = tmp_path / "root"
    child = spawn([sys.executable, "-c", CHILD, str(marker)], log_path=tmp_path / "child.log",
                  env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    try:
        wait_for(marker.exists, timeout=120, what="the child's STAC API", proc=child,
                 log_path=tmp_path / "child.log")
        root = marker.read_text()
        servers = descendants(child.pid)
        commands = " ".join(servers.values())
        assert "postgres -D" in commands and "uvicorn" in commands, servers
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        wait_for(lambda: not (set(servers) & set(live_processes())), timeout=20,
                 what="the orphaned servers to die")
        assert Path(root) in sweep_stale_workdirs()
        assert not Path(root).exists()
    finally:
        stop(child)


def live_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process that is not a zombie."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            out[int(proc.name)] = (int(ppid), cmdline)
    return out


def descendants(pid: int) -> dict[int, str]:
    procs = live_processes()
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for p, (ppid, cmd) in procs.items():
            if ppid == parent and p not in found:
                found[p] = cmd
                todo.append(p)
    return found
