"""
The OpenAPI document of /api/v1 as clients get it, compared whole with the
one kept in C{tests/pages/openapi.json} (the package's version set aside):
every path, parameter, description and schema a client generator reads.
After changing the document on purpose, write it again and review the diff:

    BRIDGEPROXY_WRITE_PAGES=1 .venv/bin/python -m pytest -q tests/test_openapi_document.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bridgeproxy import __version__, openapi
from tests.dashboards import dashboard

KEPT = Path(__file__).parent / "pages" / "openapi.json"


def test_the_document_is_the_one_kept():
    # Made once per process: made again here, so that it is this test that reads what the document is made of.
    openapi.document.cache_clear()
    answer = dashboard().gateway.send("GET", "/api/v1/openapi.json")
    assert answer.status == 200
    document = json.loads(answer.body)
    assert document["info"]["version"] == __version__
    document["info"]["version"] = "VERSION"
    if os.environ.get("BRIDGEPROXY_WRITE_PAGES"):
        KEPT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", "utf-8")
    kept = json.loads(KEPT.read_text("utf-8"))
    assert document == kept
