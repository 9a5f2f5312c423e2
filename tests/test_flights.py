"""
One question in flight per key (bridgeproxy.flights): what the key checks of
the identity backends rely on when a client opens many streams at once.
"""

from twisted.internet.defer import CancelledError, Deferred, fail, succeed

from bridgeproxy.flights import Flights


def results(d):
    seen = []
    d.addBoth(seen.append)
    return seen


def test_callers_of_one_key_share_one_question():
    flights, asked = Flights(), []
    answer = Deferred()

    def start():
        asked.append(1)
        return answer
    first, second = results(flights.ask("k", start)), results(flights.ask("k", start))
    assert (asked, first, second, len(flights)) == ([1], [], [], 1)
    answer.callback("alice")
    assert (first, second, len(flights)) == (["alice"], ["alice"], 0)


def test_a_key_is_asked_again_once_answered():
    flights, asked = Flights(), []

    def start():
        asked.append(1)
        return succeed(len(asked))
    assert results(flights.ask("k", start)) == [1]
    assert results(flights.ask("k", start)) == [2]
    assert len(flights) == 0


def test_other_keys_are_other_questions():
    flights = Flights()
    pending = {"a": Deferred(), "b": Deferred()}
    a = results(flights.ask("a", lambda: pending["a"]))
    b = results(flights.ask("b", lambda: pending["b"]))
    assert len(flights) == 2
    pending["b"].callback("bob")
    assert (a, b) == ([], ["bob"])


def test_a_failure_reaches_every_caller_and_plain_values_and_exceptions_are_answers():
    flights = Flights()
    answer = Deferred()
    first, second = results(flights.ask("k", lambda: answer)), results(flights.ask("k", lambda: answer))
    answer.errback(ValueError("store down"))
    assert [f.value.args for f in first + second] == [("store down",), ("store down",)]
    assert results(flights.ask("k", lambda: "plain")) == ["plain"]

    def broken():
        raise KeyError("bug")
    assert results(flights.ask("k", broken))[0].check(KeyError)
    assert results(flights.ask("k", lambda: fail(RuntimeError("x"))))[0].check(RuntimeError)


def test_a_caller_that_cancels_is_passed_over_the_others_still_get_the_answer():
    flights = Flights()
    answer = Deferred()
    gone = flights.ask("k", lambda: answer)
    stays = results(flights.ask("k", lambda: answer))
    cancelled = results(gone)
    gone.cancel()
    answer.callback("alice")
    assert cancelled[0].check(CancelledError)
    assert stays == ["alice"]
