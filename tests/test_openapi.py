"""
/api/v1/openapi.json: a valid OpenAPI 3.1 document (openapi-spec-validator)
that describes every view /api/v1 serves, and whose schemas the real
answers of those views, in memory, conform to.
"""

from __future__ import annotations

import json

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bridgeproxy.store.budgets import set_budget
from tests.dashboards import dashboard, record


@pytest.fixture
def served():
    dash = dashboard()
    admin = dash.key("root", admin=True)
    bob_id = dash.store.db.ensure_user("bob").user_id
    set_budget(dash.store.db, bob_id, 25_000_000, "month", "bob")
    dash.add(record(id="i-1", client_session_id="cc-1", tool_calls=[("bash", '{"cmd":"ls"}', "t1")]),
             record(id="i-2", initiator_username="bob", status="refused", cost_micros=None, input_tokens=0,
                    output_tokens=0, ttfb_ms=None))
    answer = dash.gateway.send("GET", "/api/v1/openapi.json")
    assert answer.status == 200 and answer.headers["content-type"] == [b"application/json"]
    return dash, admin, json.loads(answer.body)


def test_the_document_is_valid_openapi(served):
    """The document served without a key validates as OpenAPI 3.1."""
    _, _, document = served
    validate(document)
    assert document["openapi"].startswith("3.1")


def _response_schema(document, path, status="200"):
    operation = document["paths"][path]["get"]
    return operation["responses"][status]["content"]["application/json"]["schema"]


def _validator(document, schema):
    registry = Registry().with_resource("urn:bridgeproxy", Resource.from_contents(
        document, default_specification=DRAFT202012))
    rooted = json.loads(json.dumps(schema).replace('"#/components', '"urn:bridgeproxy#/components'))
    return OAS31Validator(rooted, registry=registry)


@pytest.mark.parametrize("path, url, status", [
    ("/interceptions", "/api/v1/interceptions?limit=1", "200"),
    ("/interceptions", "/api/v1/interceptions?q=hello&status=ok", "200"),
    ("/interceptions/{id}", "/api/v1/interceptions/i-1", "200"),
    ("/interceptions/{id}", "/api/v1/interceptions/nope", "404"),
    ("/usage", "/api/v1/usage?by=model,day", "200"),
    ("/overview", "/api/v1/overview?range=7d", "200"),
    ("/sessions", "/api/v1/sessions", "200"),
    ("/sessions/{id}", "/api/v1/sessions/cc-1", "200"),
    ("/users", "/api/v1/users", "200"),
    ("/budgets", "/api/v1/budgets", "200"),
    ("/budgets", "/api/v1/budgets?initiator=nobody", "200"),
    ("/interceptions", "/api/v1/interceptions?cursor=bad", "400"),
])
def test_answers_conform_to_the_document(served, path, url, status):
    """Each view's real answer (and a refusal's body) matches the schema the document gives it."""
    dash, admin, document = served
    answer = dash.gateway.send("GET", url, headers={"Authorization": f"Bearer {admin}"})
    assert str(answer.status) == status
    body = json.loads(answer.body)
    errors = list(_validator(document, _response_schema(document, path, status)).iter_errors(body))
    assert errors == [], errors[:3]


def test_the_document_describes_every_view(served):
    """The paths are the views /api/v1 serves, each with its parameters; a path it does not list is 404."""
    dash, admin, document = served
    assert set(document["paths"]) == {"/interceptions", "/interceptions/{id}", "/usage", "/overview", "/sessions",
                                      "/sessions/{id}", "/users", "/budgets", "/openapi.json"}
    for path in document["paths"]:
        concrete = path.replace("{id}", "i-1" if "interceptions" in path else "cc-1")
        answer = dash.gateway.send("GET", "/api/v1" + concrete, headers={"Authorization": f"Bearer {admin}"})
        assert answer.status == 200, path
    interception = document["components"]["schemas"]["Interception"]["properties"]
    assert {"ttfb_ms", "cost_micros", "tool_calls", "duration_ms"} <= set(interception)
    names = {p["name"] for p in document["paths"]["/interceptions"]["get"]["parameters"]}
    assert names == {"initiator", "client", "model", "provider", "status", "session", "since", "until", "q",
                     "limit", "offset", "cursor"}
    assert dash.gateway.send("GET", "/api/v1/nothing", headers={"Authorization": f"Bearer {admin}"}).status == 404


def test_administrator_views_refuse_other_users(served):
    """A user's key reads their own interceptions, but not the overview, sessions or users (403)."""
    dash, _, _ = served
    bob = dash.key("bob")
    headers = {"Authorization": f"Bearer {bob}"}
    for url in ("/api/v1/overview", "/api/v1/sessions", "/api/v1/sessions/cc-1", "/api/v1/users"):
        assert dash.gateway.send("GET", url, headers=headers).status == 403, url
    own = json.loads(dash.gateway.send("GET", "/api/v1/interceptions", headers=headers).body)["data"]
    assert own == []  # i-2 names a "bob" but another user id: a user sees only rows of their own id
    assert dash.gateway.send("GET", "/api/v1/interceptions/i-1", headers=headers).status == 404


def test_cursor_paging_over_the_api(served):
    """next_cursor walks every row once; offset and cursor do not mix."""
    dash, admin, _ = served
    dash.add(*[record(id=f"p-{i}", started_at=1_795_514_000.0 + i // 2) for i in range(7)])
    headers = {"Authorization": f"Bearer {admin}"}
    seen, url = [], "/api/v1/interceptions?limit=3"
    while url:
        page = json.loads(dash.gateway.send("GET", url, headers=headers).body)
        seen += [r["id"] for r in page["data"]]
        url = f"/api/v1/interceptions?limit=3&cursor={page['next_cursor']}" if page["next_cursor"] else None
    assert sorted(seen) == sorted(["i-1", "i-2"] + [f"p-{i}" for i in range(7)]) and len(seen) == 9
    answer = dash.gateway.send("GET", "/api/v1/interceptions?offset=3&q=x", headers=headers)
    assert answer.status == 400
