# -*- test-case-name: tests.test_logs_memory,tests.test_logs -*-
"""
Log observer factories for twistd's C{--logger} option:

    twistd -n --logger=bridgeproxy.logs.json bridgeproxy --config C   # one JSON object per line
    twistd -n --logger=bridgeproxy.logs.text bridgeproxy --config C   # readable text

Both write to standard output (a container's or systemd's log).  Events are
C{twisted.logger} events, so the JSON form carries every field of an event
(the interception line's C{id}, C{initiator}, C{tokens_in}, ...).
"""

import sys

from twisted.logger import jsonFileLogObserver, textFileLogObserver


def json():
    """An observer writing one JSON object per event to standard output."""
    return jsonFileLogObserver(sys.stdout)


def text():
    """An observer writing readable lines to standard output."""
    return textFileLogObserver(sys.stdout)


def observer(log_format: str):
    """The observer for C{log_format} (C{"json"} or C{"text"})."""
    if log_format == "json":
        return json()
    if log_format == "text":
        return text()
    raise ValueError("log format must be 'json' or 'text'")
