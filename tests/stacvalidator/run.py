"""Run stac-api-validator offline (inside its own venv: ``<venv>/bin/python run.py --root-url ...``).

The validator checks every object against the STAC JSON schemas, which it downloads (with ``requests``
and ``urllib.request.urlopen``) — impossible here. This wrapper answers those URLs from the copies that
ship with pystac (``pystac.validation.local_validator.get_local_schema_cache``: STAC 1.1.0 core item,
collection, catalog and their parts, GeoJSON), then calls the validator's own ``main`` with the
arguments given. Extension schemas (``https://stac-extensions.github.io/...``) exist only on the web:
they are answered with an empty schema (nothing checked), and the list of them is printed at the end
as ``not checked offline: ...`` — as earthops' own ``validate_core`` does, the extension fields are
left to the unit tests. Any other URL goes to the network as usual.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.request
import urllib.response
from email.message import Message
from typing import Any

import requests
from pystac.validation.local_validator import get_local_schema_cache

SCHEMAS = get_local_schema_cache()
EXTENSIONS = "https://stac-extensions.github.io/"
unchecked: set[str] = set()


def local_schema(url: str) -> bytes | None:
    bare = url.split("#", 1)[0]
    if bare in SCHEMAS:
        return json.dumps(SCHEMAS[bare]).encode()
    if bare.startswith(EXTENSIONS):
        unchecked.add(bare)
        return json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "$id": bare}).encode()
    return None


_get = requests.get
_session_request = requests.Session.request
_urlopen = urllib.request.urlopen


def _response(url: str, data: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response._content = data
    response.url = url
    response.headers["Content-Type"] = "application/json"
    response.encoding = "utf-8"
    return response


def fake_get(url: str, *args: Any, **kwargs: Any) -> requests.Response:
    data = local_schema(str(url))
    return _response(str(url), data) if data is not None else _get(url, *args, **kwargs)


def fake_session_request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
    data = local_schema(str(url)) if method.upper() == "GET" else None
    return _response(str(url), data) if data is not None else _session_request(self, method, url, *args, **kwargs)


def fake_urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
    url = request.full_url if isinstance(request, urllib.request.Request) else str(request)
    data = local_schema(url)
    if data is None:
        return _urlopen(request, *args, **kwargs)
    headers = Message()
    headers["Content-Type"] = "application/json"
    return urllib.response.addinfourl(io.BytesIO(data), headers, url, 200)


def _stac_io_reader(original: Any) -> Any:
    def read_text_from_href(self: Any, href: str) -> str:
        data = local_schema(str(href))
        return data.decode() if data is not None else original(self, href)

    return read_text_from_href


def patch_everywhere() -> None:
    import pystac.stac_io

    # pystac reads schemas through its StacIO (the validator installs one that retries with urllib3)
    for cls in (pystac.stac_io.DefaultStacIO, *pystac.stac_io.DefaultStacIO.__subclasses__()):
        if "read_text_from_href" in vars(cls):
            cls.read_text_from_href = _stac_io_reader(vars(cls)["read_text_from_href"])
    requests.get = fake_get
    requests.Session.request = fake_session_request
    urllib.request.urlopen = fake_urlopen
    for module in list(sys.modules.values()):  # `from urllib.request import urlopen` copies
        for name, original, fake in (("urlopen", _urlopen, fake_urlopen), ("get", _get, fake_get)):
            if getattr(module, name, None) is original and module is not requests:
                setattr(module, name, fake)


def main() -> int:
    import stac_api_validator.__main__ as validator
    import stac_api_validator.validations  # noqa: F401 - its StacIO classes exist before patching

    patch_everywhere()
    try:
        code = int(validator.main.main(args=sys.argv[1:], standalone_mode=False) or 0)
    except SystemExit as exc:
        code = int(exc.code or 0)
    print(f"not checked offline: {', '.join(sorted(unchecked)) or 'none'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
