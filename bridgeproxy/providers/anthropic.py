# -*- test-case-name: tests.test_providers,tests.test_providers_anthropic -*-
"""
Anthropic: messages are intercepted; the rest of C{/v1/*} (count_tokens,
models, ...) is passed through.
"""

from __future__ import annotations

import json
from typing import Any, Optional, TypeGuard

from twisted.plugin import IPlugin
from zope.interface import implementer

from bridgeproxy.interfaces import IProvider
from bridgeproxy.providers.base import UsageParser, as_int, dumps, get, route_of, text_of

_ERRORS = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "budget": "rate_limit_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
    "api_error": "api_error",
}


def anthropic_error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": _ERRORS.get(kind, "api_error"), "message": message}}


def _is_tool_use(block: Any) -> TypeGuard[dict]:
    """A content block in which the model calls a tool: C{tool_use}, C{server_tool_use}, C{mcp_tool_use}."""
    return isinstance(block, dict) and isinstance(block.get("type"), str) and block["type"].endswith("tool_use")


class MessagesParser(UsageParser):
    """Reads C{/v1/messages} answers, blocking or streamed."""

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # message_delta carries cumulative counts; take the latest non-zero.
        for field, attr in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                            ("cache_read_input_tokens", "cache_read_tokens"),
                            ("cache_creation_input_tokens", "cache_write_tokens")):
            value = as_int(usage.get(field))
            if value:
                setattr(self, attr, value)

    def uninteresting(self, event: Optional[str], payload: str) -> bool:
        return event == "content_block_delta" and "input_json_delta" not in payload

    def on_json(self, obj: dict) -> None:
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        self._usage(obj.get("usage"))
        if obj.get("stop_reason"):
            self.stop_reason = str(obj["stop_reason"])
        for i, block in enumerate(obj.get("content") or ()):
            if _is_tool_use(block):
                arguments = json.dumps(block.get("input", {}), separators=(",", ":"))
                self.tool(i, block.get("id"), block.get("name"), arguments)

    def on_event(self, event: Optional[str], obj: dict) -> None:
        kind = obj.get("type") or event
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self.model = message["model"]
                self._usage(message.get("usage"))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if _is_tool_use(block):
                self.tool(obj.get("index"), block.get("id"), block.get("name"))
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "input_json_delta" and obj.get("index") in self.tools:
                self.tool(obj.get("index"), arguments=delta.get("partial_json"))
        elif kind == "message_delta":
            self._usage(obj.get("usage"))
            stop = get(obj, "delta", "stop_reason")
            if stop:
                self.stop_reason = str(stop)
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            self.error = str(get(obj, "error", "message") or "stream error")


def messages_prompt(body: dict) -> Optional[str]:
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            text = text_of(message.get("content"), ("text",))
            if text:
                return text
    return None


@implementer(IPlugin, IProvider)
class AnthropicProvider:
    """The Anthropic Messages API."""

    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    key_required = True
    routes = {b"/v1/messages": "messages"}
    #: Passed through with the gateway's key; anything else is refused.
    passthrough = (
        "GET /v1/models",
        "GET /v1/models/*",
        "POST /v1/messages/count_tokens",
        # Claude Code's telemetry, sent to its base URL.
        "POST /api/event_logging/batch",
    )

    def route(self, subpath: bytes) -> Optional[str]:
        return route_of(self.routes, subpath)

    def upstream_url(self, base_url: str, subpath: bytes, query: bytes) -> bytes:
        url = base_url.encode("ascii") + subpath
        return url + b"?" + query if query else url

    def set_central_key(self, headers: Any, key: str) -> None:
        headers.setRawHeaders(b"X-Api-Key", [key.encode("latin-1")])

    def set_client_key(self, headers: Any, authorization: Optional[str], api_key: Optional[str]) -> str:
        if api_key:
            headers.setRawHeaders(b"X-Api-Key", [api_key.encode("latin-1")])
            return api_key
        key = authorization or ""
        headers.setRawHeaders(b"Authorization", [b"Bearer " + key.encode("latin-1")])
        return key

    def error_body(self, error_kind: str, message: str) -> bytes:
        return dumps(anthropic_error(error_kind, message))

    def stream_error_event(self, route: str, error_kind: str, message: str) -> bytes:
        return b"event: error\ndata: " + dumps(anthropic_error(error_kind, message)) + b"\n\n"

    def ask_stream_usage(self, route: str, body: dict) -> Optional[dict]:
        # Anthropic streams always carry their usage.
        return None

    def usage_parser(self, route: str, streamed: bool) -> UsageParser:
        return MessagesParser(streamed)

    def prompt_of(self, route: str, body: dict) -> Optional[str]:
        return messages_prompt(body)
