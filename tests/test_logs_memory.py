"""
The log formats of `twistd --logger=bridgeproxy.logs.json|text` and of
`--log-format` (workers too), as an operator's log collector reads them:
one JSON object per event, or a readable line, on standard output.
"""

import json

import pytest

from bridgeproxy import logs

EVENT = {"log_format": "Refused {method} {path}: {status}", "method": "POST", "path": "/openai/v1/x",
         "status": 401, "log_time": 1704067200.0, "log_namespace": "bridgeproxy.proxy.pipeline", "log_level": None}


def test_json_is_one_object_per_event_with_every_field(capsys):
    """The JSON format writes one object per event, with every field of it."""
    for make in (logs.json, lambda: logs.observer("json")):
        make()(dict(EVENT))
        line = capsys.readouterr().out
        assert line.count("\n") == 1
        event = json.loads(line.lstrip("\x1e"))
        assert (event["method"], event["path"], event["status"]) == ("POST", "/openai/v1/x", 401)


def test_text_is_a_readable_line(capsys):
    """The text format writes one readable line per event, its namespace first."""
    for make in (logs.text, lambda: logs.observer("text")):
        make()(dict(EVENT))
        line = capsys.readouterr().out
        assert line.endswith("[bridgeproxy.proxy.pipeline#-] Refused POST /openai/v1/x: 401\n")


def test_another_format_is_refused():
    """Any other format is refused with the two that exist."""
    with pytest.raises(ValueError) as caught:
        logs.observer("xml")
    assert str(caught.value) == "log format must be 'json' or 'text'"
