# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 document of C{/api/v1}, served at C{/api/v1/openapi.json}.

The interception's schema is made from L{bridgeproxy.types.Interception}
itself, so that a field added to the record is described without anybody
remembering to; the rest is written out here, beside the views in
L{bridgeproxy.api}.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import Any

from bridgeproxy import __version__
from bridgeproxy.store.dashboard import RANGES, SEARCH_WINDOW, STATUSES
from bridgeproxy.store.schema import ROLLUP_SUMS, SESSION_SUMS
from bridgeproxy.types import Interception

MAX_PAGE = 500

_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_DESCRIPTIONS = {
    "id": "the interception's id (a UUID)",
    "started_at": "when the request arrived (POSIX seconds)",
    "ended_at": "when it ended (POSIX seconds)",
    "duration_ms": "how long it took",
    "intercepted": "false for a passthrough request (forwarded as it came, not parsed)",
    "initiator_id": "the user the request was made for",
    "credential_user_id": "whose key it carried (differs from initiator_id when delegated)",
    "credential_kind": "whose provider key was used: central (the gateway's) or the client's own",
    "credential_hint": "a masked hint of the provider key used, never the key",
    "upstream_status": "what the provider answered, if it was reached",
    "http_status": "the status the client got",
    "prompt": "the last user prompt, cut to [recording] max_prompt_chars",
    "status": "how it ended: " + ", ".join(STATUSES),
    "cost_micros": "what it cost, in micro-units of the price table's currency; null when nothing was priced",
    "attempts": "how many times it was sent upstream",
    "ttfb_ms": "milliseconds from the request's arrival to the first byte of the answer's body relayed",
}


def _field_schema(name: str, annotation: Any) -> dict[str, Any]:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if name == "tool_calls":
        schema: dict[str, Any] = {"type": "array", "items": {"$ref": "#/components/schemas/ToolCall"}}
    else:
        optional = text.startswith("Optional[")
        base = text[len("Optional["):-1] if optional else text
        kind = _TYPES[base]
        schema = {"type": [kind, "null"] if optional else kind}
    if name in _DESCRIPTIONS:
        schema["description"] = _DESCRIPTIONS[name]
    return schema


def _interception() -> dict[str, Any]:
    properties = {f.name: _field_schema(f.name, f.type) for f in fields(Interception)}
    properties["duration_ms"] = {"type": "integer", "description": _DESCRIPTIONS["duration_ms"]}
    return {"type": "object", "properties": properties, "required": sorted(properties),
            "additionalProperties": False}


def _sums(names: tuple[str, ...]) -> dict[str, Any]:
    return {name: {"type": "integer"} for name in names}


def _query(name: str, description: str, schema: Any = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_ERROR = {"description": "refused: the body says why",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {"400": _ERROR, "401": _ERROR, "403": _ERROR}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
_CURSOR = _query("cursor", "where the page starts: the next_cursor of the page before")
_SINCE = _query("since", "the earliest start, an ISO 8601 date or time (UTC when no zone is given)")
_UNTIL = _query("until", "the latest start (excluded), an ISO 8601 date or time")


def _get(summary: str, description: str, parameters: list, responses: dict, admin: bool = False) -> dict:
    return {"get": {"summary": summary, "description": description + (
        " Administrators only." if admin else ""), "parameters": parameters, "responses": responses}}


@functools.lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI document, as data (made once)."""
    interception_filters = [
        _query("initiator", "a user's id or name (ignored for a user who is not an administrator: their own rows)"),
        _query("client", "the client's recorded name (Claude Code, Codex, ...)"),
        _query("model", "the model"),
        _query("provider", "the provider's name (its URL prefix)"),
        _query("status", "how it ended", {"type": "string", "enum": list(STATUSES)}),
        _query("session", "the client's session id"),
        _SINCE, _UNTIL,
        _query("q", f"text to look for in the prompts, case-insensitive; a page looks at {SEARCH_WINDOW} rows at "
                    "most and next_cursor continues the search"),
        _query("limit", "rows per page (default 100)", _LIMIT),
        _query("offset", "rows to skip (not with cursor or q)", {"type": "integer", "minimum": 0}),
        _CURSOR,
    ]
    paths = {
        "/interceptions": _get(
            "Recorded interceptions, newest first",
            "Filtered, and paged by offset or, faster on large stores, by cursor.",
            interception_filters, {"200": _ok("InterceptionPage", "a page of interceptions"), **_ERRORS}),
        "/interceptions/{id}": _get(
            "One interception", "A user who is not an administrator sees only their own.",
            [_path("id", "the interception's id")],
            {"200": _ok("Interception", "the interception"), "404": _ERROR, **_ERRORS}),
        "/usage": _get(
            "Requests, tokens and cost, grouped", "Summed per initiator, client, model or UTC day.",
            [_query("by", "initiator, client, model or day, or several comma-separated (initiator,day)"),
             _query("initiator", "a user's id or name"), _query("client", "the client's name"), _SINCE],
            {"200": _ok("Usage", "the sums"), **_ERRORS}),
        "/overview": _get(
            "The dashboard's overview",
            "Requests, tokens, cost, errors and refusals per hour or UTC day, their totals, and the top users, "
            "models and clients, over a range ending now.",
            [_query("range", "how far back", {"type": "string", "enum": list(RANGES), "default": "24h"}),
             _query("bucket", "hour (up to 30d) or day; by default hour for 24h, day otherwise",
                    {"type": "string", "enum": ["hour", "day"]})],
            {"200": _ok("Overview", "the overview"), **_ERRORS}, admin=True),
        "/sessions": _get(
            "Client sessions, most recently active first",
            "Requests grouped by the session id their client sends (Claude Code, Codex, Coder Agents).",
            [_query("since", "active since (their last request), an ISO 8601 date or time"),
             _query("until", "started before, an ISO 8601 date or time"),
             _query("user", "the user's name (or id, for users without a name)"),
             _query("client", "the client's name"), _query("limit", "sessions per page (default 50)", _LIMIT),
             _CURSOR],
            {"200": _ok("SessionPage", "a page of sessions"), **_ERRORS}, admin=True),
        "/sessions/{id}": _get(
            "One client session and its interceptions", "Its first 1000 requests, oldest first.",
            [_path("id", "the client's session id")],
            {"200": _ok("SessionDetail", "the session"), "404": _ERROR, **_ERRORS}, admin=True),
        "/users": _get(
            "Users, their keys (hints only) and usage", "Usage over the last 30 days unless since says otherwise.",
            [_SINCE], {"200": _ok("Users", "the users"), **_ERRORS}, admin=True),
        "/budgets": _get(
            "Where users stand against their budgets",
            "Each user's budget (their own, or the configuration's default) in its current period: spent, held by "
            "requests in flight, left. Administrators see every user with a budget of their own and those of the "
            "default who spent something this period (or one, with initiator); other users their own.",
            [_query("initiator", "a user's id or name")],
            {"200": _ok("Budgets", "the budgets"), "404": _ERROR, **_ERRORS}),
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {
            "200": {"description": "the OpenAPI document", "content": {"application/json": {
                "schema": {"type": "object"}}}}}}},
    }
    session = {"type": "object", "properties": {
        "session_id": {"type": "string"}, "client": {"type": "string"},
        "initiator": {"type": "string", "description": "the user's name, else id; empty when none"},
        "first_at": {"type": "number"}, "last_at": {"type": "number", "description": "the last request's start"},
        "ended_at": {"type": "number"}, **_sums(SESSION_SUMS)},
        "required": ["session_id", "client", "initiator", "first_at", "last_at", "ended_at", *SESSION_SUMS]}
    sums = {"type": "object", "properties": _sums(ROLLUP_SUMS), "required": list(ROLLUP_SUMS)}
    schemas = {
        "Interception": _interception(),
        "ToolCall": {"type": "object", "properties": {
            "name": {"type": "string"}, "arguments": {"type": "string", "description": "as the model wrote them "
                                                                                    "(JSON text, usually)"},
            "id": {"type": ["string", "null"]}}, "required": ["name", "arguments", "id"]},
        "InterceptionPage": {"type": "object", "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Interception"}},
            "next_offset": {"type": ["integer", "null"], "description": "the offset of the next page (offset "
                                                                       "paging), null on the last"},
            "next_cursor": {"type": ["string", "null"], "description": "the cursor of the next page, null on the "
                                                                      "last"},
            "scanned": {"type": ["integer", "null"], "description": "with q: how many rows this page looked at"}},
            "required": ["data", "next_offset", "next_cursor", "scanned"]},
        "Usage": {"type": "object", "properties": {
            "by": {"type": "string"}, "data": {"type": "array", "items": {"type": "object"}}},
            "required": ["by", "data"]},
        "Sums": sums,
        "Labelled": {"allOf": [{"$ref": "#/components/schemas/Sums"}, {"type": "object", "properties": {
            "label": {"type": "string"}}, "required": ["label"]}]},
        "Overview": {"type": "object", "properties": {
            "since": {"type": "number"}, "until": {"type": "number"},
            "bucket": {"type": "integer", "description": "seconds: 3600 or 86400"},
            "series": {"type": "array", "items": {"allOf": [{"$ref": "#/components/schemas/Sums"}, {
                "type": "object", "properties": {"start": {"type": "number"}}, "required": ["start"]}]}},
            "totals": {"$ref": "#/components/schemas/Sums"},
            "top": {"type": "object", "properties": {
                name: {"type": "array", "items": {"$ref": "#/components/schemas/Labelled"}}
                for name in ("initiator", "model", "client")}, "required": ["initiator", "model", "client"]}},
            "required": ["since", "until", "bucket", "series", "totals", "top"]},
        "Session": session,
        "SessionPage": {"type": "object", "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
            "next_cursor": {"type": ["string", "null"]}}, "required": ["data", "next_cursor"]},
        "SessionDetail": {"allOf": [{"$ref": "#/components/schemas/Session"}, {"type": "object", "properties": {
            "interceptions": {"type": "array", "items": {"$ref": "#/components/schemas/Interception"}}},
            "required": ["interceptions"]}]},
        "Key": {"type": "object", "properties": {
            "key_id": {"type": "string"}, "hint": {"type": "string", "description": "a masked hint, never the key"},
            "created_at": {"type": "number"}, "expires_at": {"type": ["number", "null"]},
            "revoked_at": {"type": ["number", "null"]}},
            "required": ["key_id", "hint", "created_at", "expires_at", "revoked_at"]},
        "Users": {"type": "object", "properties": {"data": {"type": "array", "items": {
            "type": "object", "properties": {
                "user_id": {"type": "string"}, "username": {"type": "string"}, "disabled": {"type": "boolean"},
                "admin": {"type": "boolean"}, "created_at": {"type": "number"},
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
                "usage": {"$ref": "#/components/schemas/Sums"}},
            "required": ["user_id", "username", "disabled", "admin", "created_at", "keys", "usage"]}}},
            "required": ["data"]},
        "Budgets": {"type": "object", "properties": {"data": {"type": "array", "items": {
            "type": "object", "properties": {
                "user_id": {"type": "string"}, "username": {"type": ["string", "null"]},
                "source": {"enum": ["own", "default", None], "description": "whose budget applies; null: none"},
                "amount_micros": {"type": ["integer", "null"]},
                "period": {"enum": ["day", "week", "month", None]},
                "period_start": {"type": ["string", "null"], "description": "ISO 8601, UTC"},
                "period_end": {"type": ["string", "null"], "description": "ISO 8601, UTC: when it renews"},
                "spent_micros": {"type": ["integer", "null"]}, "held_micros": {"type": ["integer", "null"]},
                "left_micros": {"type": ["integer", "null"]}},
            "required": ["user_id", "username", "source", "amount_micros", "period", "period_start", "period_end",
                         "spent_micros", "held_micros", "left_micros"]}}}, "required": ["data"]},
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]}}, "required": ["message", "type"]}}, "required": ["error"]},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "bridgeproxy", "version": __version__,
                 "description": "Reading back what the gateway recorded: interceptions, usage, budgets, the "
                                "dashboard's overview, client sessions, users and keys. Authenticate with a bridge key; "
                                "administrators see every row, other users their own."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <bridge key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": schemas},
    }


__all__ = ["document"]
