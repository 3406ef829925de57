"""The STAC API over an S3 store (a real S3 server, SeaweedFS on loopback): collections and items read
through the index cache, asset hrefs without credentials, and with ``presign_seconds`` a presigned
HTTPS link per asset of the store that a client without S3 credentials can download."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from earthops.core.store import Store
from earthops_runtime.catalog import index
from earthops_runtime.stacapi.app import create_app
from tests.unit.test_free_text import make_items
from tests.unit.test_stacapi_app import collection

pytestmark = pytest.mark.integration


def call(app: Any, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get(url, **kwargs)

    return asyncio.run(go())


def test_presigned_links_download_without_credentials(s3_env, s3_bucket, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EARTHOPS_CACHE", str(tmp_path / "cache"))
    store = Store.from_uri(f"s3://{s3_bucket}/earthops")
    items = make_items(random.Random(2), 12, "s3col")
    payload = b"GeoTIFF bytes of the first scene"
    for item in items:
        item["assets"] = {"data": {"href": f"./data/{item['id']}.tif", "type": "image/tiff"}}
    with store.publish("datasets/ns/s3/g1-run") as run:
        index.write_index(run, index.INDEX_NAME, items)
        run.write_json("stac/collection.json", collection("s3col"))
        for item in items:
            run.write_bytes(f"data/{item['id']}.tif", payload + item["id"].encode())

    plain = call(create_app(store, refresh_seconds=0.0), "/collections/s3col/items", params={"limit": 50}).json()
    assert len(plain["features"]) == 12
    href = plain["features"][0]["assets"]["data"]["href"]
    assert href.startswith(f"s3://{s3_bucket}/earthops/datasets/ns/s3/g1-run/data/") and "alternate" not in \
        plain["features"][0]["assets"]["data"]
    assert "@" not in href and "?" not in href

    signed = call(create_app(store, presign_seconds=600, refresh_seconds=0.0), "/search",
                  params={"q": "iceberg OR snow OR ship OR sea", "limit": 3}).json()["features"]
    assert signed
    for feature in signed:
        asset = feature["assets"]["data"]
        link = asset["alternate"]["https"]["href"]
        assert link.startswith("http") and "Signature=" in link  # SigV2 or SigV4, as s3fs signs
        response = httpx.get(link, timeout=10)  # no credentials: the signature is the permission
        assert response.status_code == 200 and response.content == payload + feature["id"].encode()
