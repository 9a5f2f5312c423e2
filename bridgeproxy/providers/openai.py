# -*- test-case-name: tests.test_providers,tests.test_providers_openai -*-
"""
OpenAI: chat completions and responses are intercepted; the rest of
C{/v1/*} is passed through.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.plugin import IPlugin
from zope.interface import implementer

from bridgeproxy.errors import openai_error
from bridgeproxy.interfaces import IProvider
from bridgeproxy.providers.base import UsageParser, as_int, dumps, get, route_of, text_of, tool_arguments

class ChatCompletionsParser(UsageParser):
    """Reads C{/chat/completions} answers, blocking or streamed."""

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        prompt = as_int(usage.get("prompt_tokens"))
        cached = as_int(get(usage, "prompt_tokens_details", "cached_tokens"))
        # prompt_tokens includes cached tokens; record them apart, as
        # Anthropic does, so that totals add up across providers.
        self.input_tokens = max(0, prompt - cached)
        self.cache_read_tokens = cached
        self.output_tokens = as_int(usage.get("completion_tokens"))

    def on_json(self, obj: dict) -> None:
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        self._usage(obj.get("usage"))
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.stop_reason = str(choice["finish_reason"])
            for i, call in enumerate(get(choice, "message", "tool_calls") or ()):
                if isinstance(call, dict):
                    self._call((choice.get("index", 0), i), call)

    def uninteresting(self, event: Optional[str], payload: str) -> bool:
        # A plain content delta: no usage, tool call, finish reason or error.
        return (self.model is not None and '"content"' in payload and '"usage"' not in payload
                and "tool_calls" not in payload and '"error"' not in payload
                and '"finish_reason":"' not in payload and '"finish_reason": "' not in payload)

    def on_event(self, event: Optional[str], obj: dict) -> None:
        if "error" in obj and isinstance(obj["error"], dict):
            self.error = str(obj["error"].get("message") or "stream error")
            return
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        if obj.get("usage"):
            self._usage(obj["usage"])
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.stop_reason = str(choice["finish_reason"])
            for call in get(choice, "delta", "tool_calls") or ():
                if isinstance(call, dict):
                    self._call((choice.get("index", 0), call.get("index", 0)), call)

    def _call(self, key: Any, call: dict) -> None:
        # A function tool's call has "function": {name, arguments}; a custom
        # tool's has "custom": {name, input} (free text, not JSON).
        function = call.get("function")
        if isinstance(function, dict):
            self.tool(key, call.get("id"), function.get("name"), function.get("arguments"))
            return
        custom = call.get("custom")
        if isinstance(custom, dict):
            self.tool(key, call.get("id"), custom.get("name"), custom.get("input"))
            return
        self.tool(key, call.get("id"), call.get("type"))


class ResponsesParser(UsageParser):
    """Reads C{/responses} answers, blocking or streamed."""

    def on_json(self, obj: dict) -> None:
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            cached = as_int(get(usage, "input_tokens_details", "cached_tokens"))
            self.input_tokens = max(0, as_int(usage.get("input_tokens")) - cached)
            self.cache_read_tokens = cached
            self.output_tokens = as_int(usage.get("output_tokens"))
        if isinstance(obj.get("status"), str):
            self.stop_reason = obj["status"]
        if isinstance(obj.get("error"), dict) and obj["error"].get("message"):
            self.error = str(obj["error"]["message"])
        for item in obj.get("output") or ():
            self._item(item)

    def _item(self, item: Any) -> None:
        """
        Record an output item that is a call the model made: a function or
        custom tool, or a built-in tool (web search, file search, computer,
        code interpreter, image generation, shell, MCP, ...).  Their outputs
        (C{*_call_output}) are the client's, not the model's.
        """
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        if not isinstance(kind, str) or not kind.endswith("_call"):
            return
        key = item.get("call_id") or item.get("id") or ("item", len(self.tools))
        name = item.get("name")
        if not isinstance(name, str) or not name:
            name = kind[:-len("_call")]
        self.tools.pop(key, None)
        self.tool(key, item.get("call_id") or item.get("id"), name,
                  tool_arguments(item, "arguments", "input"))

    def uninteresting(self, event: Optional[str], payload: str) -> bool:
        return event is not None and event.endswith(".delta") and event != "response.function_call_arguments.delta"

    def on_event(self, event: Optional[str], obj: dict) -> None:
        kind = obj.get("type") or event
        if kind in ("response.completed", "response.incomplete", "response.failed", "response.created"):
            response = obj.get("response")
            if isinstance(response, dict):
                self.on_json(response)
            if kind != "response.created":
                self.complete = True
        elif kind == "response.output_item.done":
            self._item(obj.get("item"))
        elif kind == "error":
            self.error = str(obj.get("message") or get(obj, "error", "message") or "stream error")


def chat_prompt(body: dict) -> Optional[str]:
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            text = text_of(message.get("content"))
            if text:
                return text
    return None


def responses_prompt(body: dict) -> Optional[str]:
    items = body.get("input")
    if isinstance(items, str):
        return items or None
    for item in reversed(items or ()):
        if isinstance(item, dict) and item.get("role") == "user":
            text = text_of(item.get("content"))
            if text:
                return text
    return None


@implementer(IPlugin, IProvider)
class OpenAIProvider:
    """The OpenAI API (and OpenAI-compatible upstreams)."""

    name = "openai"
    default_base_url: Optional[str] = "https://api.openai.com/v1"
    key_required = True
    routes = {b"/v1/chat/completions": "chat.completions", b"/v1/responses": "responses"}
    #: Passed through with the gateway's key; anything else is refused.
    #: Fine-tuning, files, batches and the organisation's admin endpoints
    #: are not here on purpose: the gateway's key may be an admin key.
    passthrough: tuple[str, ...] = (
        "GET /v1/models",
        "GET /v1/models/*",
        "* /v1/conversations",
        "* /v1/conversations/**",
        "GET,DELETE /v1/responses/*",
        "GET /v1/responses/*/input_items",
        "POST /v1/responses/*/cancel",
    )

    def route(self, subpath: bytes) -> Optional[str]:
        return route_of(self.routes, subpath)

    def upstream_url(self, base_url: str, subpath: bytes, query: bytes) -> bytes:
        # The configured base already ends in /v1.
        url = base_url.encode("ascii") + subpath[3:]
        return url + b"?" + query if query else url

    def set_central_key(self, headers: Any, key: str) -> None:
        headers.setRawHeaders(b"Authorization", [b"Bearer " + key.encode("latin-1")])

    def set_client_key(self, headers: Any, authorization: Optional[str], api_key: Optional[str]) -> str:
        key = authorization or api_key or ""
        headers.setRawHeaders(b"Authorization", [b"Bearer " + key.encode("latin-1")])
        return key

    def error_body(self, error_kind: str, message: str) -> bytes:
        return dumps(openai_error(error_kind, message))

    def stream_error_event(self, route: str, error_kind: str, message: str) -> bytes:
        error = openai_error(error_kind, message)
        if route == "responses":
            event = {"type": "error", "code": error["error"]["code"], "message": message, "param": None}
            return b"event: error\ndata: " + dumps(event) + b"\n\n"
        return b"data: " + dumps(error) + b"\n\ndata: [DONE]\n\n"

    def ask_stream_usage(self, route: str, body: dict) -> Optional[dict]:
        """
        A chat completions stream reports usage only when asked
        (C{stream_options.include_usage}); the body that asks, or L{None}
        when it already does or is not such a stream.
        """
        if route != "chat.completions" or body.get("stream") is not True:
            return None
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return None
        return {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}

    def usage_parser(self, route: str, streamed: bool) -> UsageParser:
        if route == "responses":
            return ResponsesParser(streamed)
        return ChatCompletionsParser(streamed)

    def prompt_of(self, route: str, body: dict) -> Optional[str]:
        if route == "responses":
            return responses_prompt(body)
        return chat_prompt(body)



@implementer(IPlugin, IProvider)
class OpenAICompatibleProvider(OpenAIProvider):
    """
    Any server that speaks the OpenAI API (a local vLLM, Ollama, LM Studio,
    a corporate gateway), at the C{base_url} its configuration gives, under
    the prefix of its own table::

        [providers.local]
        plugin = "openai-compatible"
        base_url = "http://127.0.0.1:8000/v1"

    Its key is optional (local servers often need none: then no credential
    is sent).  Only its model list is passed through by default.
    """

    name = "openai-compatible"
    default_base_url = None
    key_required = False
    passthrough = ("GET /v1/models", "GET /v1/models/*")
