"""
Cost over loopback: requests through a running bridge are recorded with
their cost, and C{/api/v1/usage} reports it per user and day.
"""

import json
import time

import pytest_twisted

from tests import fakes, payloads
from tests.http import call


@pytest_twisted.inlineCallbacks
def test_usage_api_reports_cost_per_user_and_day(bridge, agent):
    """Two priced requests and one of an unknown model: the API sums the known costs and counts the other."""
    admin = bridge.create_key("root", admin=True)
    alice = bridge.create_key("alice")
    bridge.upstream.handler = fakes.json_answer(200, payloads.CHAT_JSON)  # gpt-4o-2024-08-06, 190 micro-USD
    for _ in range(2):
        response, _ = yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions",
                                 {"model": "gpt-4o", "messages": []}, {"Authorization": f"Bearer {alice}"})
        assert response.code == 200
    bridge.upstream.handler = fakes.json_answer(200, {**payloads.CHAT_JSON, "model": "gpt-99"})
    yield call(agent, "POST", bridge.url + "/openai/v1/chat/completions",
               {"model": "gpt-99", "messages": []}, {"Authorization": f"Bearer {alice}"})
    yield bridge.flush()
    assert sorted(r["cost_micros"] or 0 for r in bridge.rows()) == [0, 190, 190]
    assert sum(r["cost_micros"] is None for r in bridge.rows()) == 1

    days = {time.strftime("%Y-%m-%d", time.gmtime(r["started_at"])) for r in bridge.rows()}
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/usage?by=initiator,day", None,
                                {"Authorization": f"Bearer {admin}"})
    answer = json.loads(body)
    assert response.code == 200 and answer["by"] == "initiator,day"
    rows = answer["data"]
    assert {r["initiator"] for r in rows} == {"alice"} and {r["day"] for r in rows} == days  # UTC days
    assert (sum(r["requests"] for r in rows), sum(r["cost_micros"] for r in rows),
            sum(r["unpriced_requests"] for r in rows)) == (3, 380, 1)
    response, body = yield call(agent, "GET", bridge.url + "/api/v1/usage?by=model", None,
                                {"Authorization": f"Bearer {alice}"})
    costs = {r["model"]: (r["cost_micros"], r["unpriced_requests"]) for r in json.loads(body)["data"]}
    assert costs == {"gpt-4o-2024-08-06": (380, 0), "gpt-99": (0, 1)}

    response, body = yield call(agent, "GET", bridge.url + "/api/v1/usage?by=week", None,
                                {"Authorization": f"Bearer {admin}"})
    assert response.code == 400
    assert json.loads(body)["error"]["message"] == (
        "by must be initiator, client, model or day, or several of them comma-separated (initiator,day)")
