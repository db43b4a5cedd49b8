"""The OpenAPI document of the local API: valid OpenAPI 3.1, every v1 route, the error table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peerdistd import errors

REPO = Path(__file__).resolve().parents[2]
SERVED = REPO / "peerdistd" / "api" / "openapi.json"
DOCS = REPO / "docs" / "openapi.json"

ROUTES = {
    ("get", "/v1/status"),
    ("get", "/v1/events"),
    ("post", "/v1/publications"),
    ("get", "/v1/publications"),
    ("get", "/v1/publications/{id}"),
    ("delete", "/v1/publications/{id}"),
    ("get", "/v1/publications/{id}/content-information"),
    ("post", "/v1/contents"),
    ("delete", "/v1/contents/{h}"),
    ("post", "/v1/contents/{h}/content-information"),
    ("post", "/v1/contents/{h}/content-information/complete"),
    ("post", "/v1/contents/{h}/stream-read"),
    ("post", "/v1/contents/{h}/block-read"),
    ("put", "/v1/contents/{h}/data"),
    ("post", "/v1/contents/{h}/flush"),
    ("get", "/v1/cache"),
    ("delete", "/v1/cache"),
    ("post", "/v1/cache/verify"),
    ("get", "/v1/peers"),
    ("get", "/v1/openapi.json"),
}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SERVED.read_text())
    return loaded


def resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref``s (all of ours are absolute: ``#/components/...``)."""
    while "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_docs_copy_is_identical() -> None:
    assert DOCS.read_bytes() == SERVED.read_bytes()


def test_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    # Needs openapi-spec-validator (a test dependency to add to pyproject.toml).
    validator = pytest.importorskip("openapi_spec_validator")
    assert doc["openapi"].startswith("3.1.")
    validator.validate(doc)


def test_has_every_route_and_no_other(doc: dict[str, Any]) -> None:
    found = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    assert found == ROUTES


def test_every_route_but_status_can_be_disabled_by_policy(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                assert {"403", "503"} <= set(op["responses"])
                always = path in ("/v1/status", "/v1/openapi.json")
                assert ("501" in op["responses"]) is not always, path


def test_error_names_and_statuses_match_errors_module(doc: dict[str, Any]) -> None:
    enum = doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert sorted(enum) == sorted(errors.API_ERRORS)
    for name, cls in errors.API_ERRORS.items():
        camel = "".join(part.capitalize() for part in name.split("_"))
        response = doc["components"]["responses"][camel]
        example = response["content"]["application/json"]["example"]
        assert example["error"] == name
        # Every route that lists this response lists it under the status errors.py gives it.
        for item in doc["paths"].values():
            for method, op in item.items():
                if method not in METHODS:
                    continue
                for status, resp in op["responses"].items():
                    if resp.get("$ref") == f"#/components/responses/{camel}":
                        assert status == str(cls.status), (method, name)


def test_range_errors_require_offset_and_length(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["RangeError"]["allOf"][1]["required"] == ["offset", "length"]
    for camel in ("MissingData", "Timeout"):
        media = doc["components"]["responses"][camel]["content"]["application/json"]
        assert media["schema"] == {"$ref": "#/components/schemas/RangeError"}
        assert {"offset", "length"} <= set(media["example"])


def test_reads_document_their_headers_and_errors(doc: dict[str, Any]) -> None:
    for path in ("/v1/contents/{h}/stream-read", "/v1/contents/{h}/block-read"):
        op = doc["paths"][path]["post"]
        ok = resolve(doc, op["responses"]["200"])
        assert {"PeerDist-Offset", "PeerDist-Read-Id"} <= set(ok["headers"])
        assert {"416", "424", "429", "410", "504"} <= set(op["responses"])
        params = {resolve(doc, p)["name"]: resolve(doc, p) for p in op["parameters"]}
        assert ("PeerDist-Available" in ok["headers"]) == path.endswith("stream-read")
        assert params["max"]["schema"]["minimum"] == (0 if path.endswith("stream-read") else 1)
        assert params["max"]["schema"]["default"] == 1 << 20
        assert params["max"]["schema"]["maximum"] == 16 << 20
        assert params["timeout_ms"]["schema"]["default"] == 5000
    block = doc["paths"]["/v1/contents/{h}/block-read"]["post"]["parameters"][0]
    assert block["name"] == "offset"
    assert block["required"] is True


def test_content_information_is_octet_stream(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    get_ci = paths["/v1/publications/{id}/content-information"]["get"]["responses"]["200"]
    assert list(get_ci["content"]) == ["application/octet-stream"]
    for path in ("/v1/contents", "/v1/contents/{h}/content-information", "/v1/publications"):
        assert list(paths[path]["post"]["requestBody"]["content"]) == ["application/octet-stream"]


def test_status_schema_names_every_counter(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["Status"]["required"]) == {
        "status",
        "unavailable_reason",
        "version",
        "node_id",
        "uptime",
        "cache",
        "counters",
        "hit_ratio",
        "peers",
        "listen",
        "store_notes",
    }
    counters = set(schemas["Counters"]["properties"])
    assert {"bytes_from_cache", "bytes_from_peers", "bytes_from_origin", "peers_known"} <= counters
    assert {"scrub_blocks", "scrub_bad_blocks", "store_heals"} <= counters
    assert "bytes_kept_off_wan" in counters
    assert len(counters) == 23
    assert all(c["type"] == "integer" for c in schemas["Counters"]["properties"].values())
