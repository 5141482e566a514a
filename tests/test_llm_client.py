"""The LLM client against a real OpenAI-compatible HTTP server on 127.0.0.1 (fake_openai.py)."""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from pydantic import BaseModel

from fake_openai import FakeOpenAI, Fault, fake_openai  # noqa: F401  (a fixture)
from revorch.agents.llm import (
    LlmClient,
    LlmRequest,
    LlmSettings,
    TokenBucket,
    estimate_tokens,
    strict_json_schema,
)
from revorch.agents.schemas import LeadQualification, OnboardingPlan

ANSWER = {
    "confidence": 0.8,
    "reasons": ["visited pricing twice", "ICP industry"],
    "fit_score": 0.9,
    "intent_score": 0.7,
    "next_action": "fast_track_to_sales",
}


def settings(server: FakeOpenAI, **overrides) -> LlmSettings:
    """Fast settings: limits far above what a test sends unless the test sets them."""
    values = {
        "base_url": server.base_url,
        "api_key": "sk-test-not-a-secret",
        "model": "gpt-4o-mini",
        "timeout_seconds": 5.0,
        "max_retries": 3,
        "requests_per_minute": 60_000,
        "tokens_per_minute": 100_000_000,
        "max_concurrency": 8,
    }
    return LlmSettings(**(values | overrides))


def lead_request(key: str = "lead-1", text: str = "Lead: ACME, 200 employees") -> LlmRequest:
    messages = [
        {"role": "system", "content": "You qualify B2B leads."},
        {"role": "user", "content": text},
    ]
    return LlmRequest(key, messages, LeadQualification, "lead_qualification")


class VirtualTime:
    """A clock and a sleep for the client, so its schedule is checked without waiting.

    Every sleep is recorded; with ``frozen`` the clock stays at 0 (every request arrives at
    once, and the waits say when each may go), otherwise a sleep moves the clock on.
    """

    def __init__(self, frozen: bool = False) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.frozen = frozen
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if not self.frozen:
                self.now += seconds


def client_on(virtual: VirtualTime, client_settings: LlmSettings) -> LlmClient:
    return LlmClient(client_settings, clock=virtual.clock, sleep=virtual.sleep)


def held_until(parties: int, answer: dict):
    """A responder that answers only when ``parties`` requests are at the server together
    (a hang guard of 300 s fails it otherwise), so overlap does not depend on speed."""
    together = threading.Barrier(parties, timeout=300)

    def responder(body: dict) -> dict:
        together.wait()
        return answer

    return responder


# -- structured output and usage ----------------------------------------------------------------


def test_structured_output_is_parsed_and_validated():
    with FakeOpenAI(lambda body: ANSWER, served_model="gpt-4o-mini-2024-07-18") as server:
        result = LlmClient(settings(server)).complete(lead_request())

    assert result.error_kind is None, result.error
    assert result.output == LeadQualification(**ANSWER)
    assert result.key == "lead-1"
    assert result.attempts == 1
    assert result.model == "gpt-4o-mini-2024-07-18"  # the server's answer, not the request
    assert result.request_id is not None and result.request_id.startswith("req_")
    assert LeadQualification.model_validate_json(result.raw_text) == result.output
    sent = server.received[0]["body"]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.0
    assert sent["response_format"]["type"] == "json_schema"
    json_schema = sent["response_format"]["json_schema"]
    assert json_schema["name"] == "lead_qualification"
    assert json_schema["strict"] is True
    assert json_schema["schema"]["additionalProperties"] is False
    assert set(json_schema["schema"]["required"]) == set(LeadQualification.model_fields)


def test_nested_schema_is_made_strict_for_the_server(fake_openai):  # noqa: F811
    class Loose(BaseModel):  # no extra="forbid", an optional field with a default
        name: str
        note: str | None = None
        steps: list[OnboardingPlan] = []

    schema = strict_json_schema(Loose)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name", "note", "steps"]
    assert "default" not in schema["properties"]["note"]
    assert schema["$defs"]["PlanStep"]["additionalProperties"] is False

    request = LlmRequest("x", [{"role": "user", "content": "plan"}], Loose, "loose")
    result = LlmClient(settings(fake_openai)).complete(request)
    assert result.error_kind is None, result.error  # the server refuses non-strict schemas
    assert isinstance(result.output, Loose)


def test_server_refuses_a_schema_strict_mode_would_refuse(fake_openai):  # noqa: F811
    # The strictness check in the fake server is what gives the test above its teeth.
    class Loose(BaseModel):
        name: str

    raw = openai.OpenAI(base_url=fake_openai.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="additionalProperties"):
        raw.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "l", "schema": Loose.model_json_schema(), "strict": True},
            },
        )


def test_usage_is_reported_including_cached_tokens():
    system = "You qualify B2B leads. " * 300  # about 1,700 tokens: enough for the prompt cache
    requests = [
        LlmRequest(
            key,
            [{"role": "system", "content": system}, {"role": "user", "content": key}],
            LeadQualification,
            "lead_qualification",
        )
        for key in ("lead-1", "lead-2")
    ]
    with FakeOpenAI(lambda body: ANSWER) as server:
        client = LlmClient(settings(server))
        first, second = client.complete(requests[0]), client.complete(requests[1])

    prompt_tokens = math.ceil((len(system) + 1 + len("lead-1")) / 4)
    assert first.prompt_tokens == second.prompt_tokens == prompt_tokens
    assert first.cached_tokens == 0
    assert 1024 <= second.cached_tokens <= second.prompt_tokens
    assert second.cached_tokens % 128 == 0
    assert first.completion_tokens == math.ceil(len(first.raw_text) / 4) > 0


# -- retries ------------------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after():
    virtual = VirtualTime()
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.status(429, retry_after=1.2))
        result = client_on(virtual, settings(server)).complete(lead_request())

    assert result.output == LeadQualification(**ANSWER)
    assert result.attempts == 2
    assert server.status_counts == {429: 1, 200: 1}
    # No rate-limit wait, the server's 1.2 s (our own first backoff is at most 0.5 s), no wait.
    assert virtual.sleeps == [0, 1.2, 0]
    assert result.latency_seconds == 1.2


def test_retry_after_ms_takes_precedence_and_can_shorten_the_wait():
    virtual = VirtualTime()
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.status(429, retry_after=30, retry_after_ms=50))
        result = client_on(virtual, settings(server)).complete(lead_request())

    assert result.attempts == 2
    assert result.error_kind is None
    assert virtual.sleeps == [0, 0.05, 0]  # not 30 s, and shorter than any backoff of ours


def test_429_until_retries_run_out_is_reported_as_rate_limited():
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(*[Fault.status(429, retry_after_ms=10)] * 3)
        result = LlmClient(settings(server, max_retries=2)).complete(lead_request())

    assert result.error_kind == "rate_limited"
    assert result.output is None
    assert result.attempts == 3
    assert server.total_requests == 3
    assert result.request_id is not None  # from the error response's x-request-id


def test_exhausted_quota_is_not_retried():
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.status(429, code="insufficient_quota"))
        result = LlmClient(settings(server)).complete(lead_request())

    assert result.error_kind == "rate_limited"
    assert result.attempts == 1
    assert server.total_requests == 1


def test_server_errors_are_retried_with_backoff():
    virtual = VirtualTime()
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.status(500), Fault.status(503))
        result = client_on(virtual, settings(server)).complete(lead_request())

    assert result.output == LeadQualification(**ANSWER)
    assert result.attempts == 3
    assert server.status_counts == {500: 1, 503: 1, 200: 1}
    # Before each attempt the rate limit's wait (none here), between them the backoff.
    limit_waits, backoffs = virtual.sleeps[0::2], virtual.sleeps[1::2]
    assert limit_waits == [0, 0, 0]
    first, second = backoffs
    assert 0.375 <= first <= 0.5  # 0.5 s less up to a quarter of jitter
    assert 0.75 <= second <= 1.0  # 1 s less up to a quarter
    assert result.latency_seconds == first + second


def test_timeouts_are_retried_then_reported():
    virtual = VirtualTime()
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(*[Fault.delay(3)] * 3)  # the client's own timeout (real, 0.3 s) is shorter
        client = client_on(virtual, settings(server, timeout_seconds=0.3, max_retries=2))
        result = client.complete(lead_request())

    assert result.error_kind == "timeout"
    assert result.output is None
    assert result.attempts == 3
    assert server.total_requests == 3
    assert result.prompt_tokens == 0  # failed before any usage
    first, second = virtual.sleeps[1::2]  # the backoffs between the three attempts
    assert 0.375 <= first <= 0.5 and 0.75 <= second <= 1.0
    assert len(virtual.sleeps) == 5  # no backoff after the last attempt


def test_bad_request_is_not_retried():
    with FakeOpenAI(lambda body: ANSWER, api_key="the-right-key") as server:
        result = LlmClient(settings(server)).complete(lead_request())  # a different key

    assert result.error_kind == "bad_request"
    assert "401" in result.error
    assert result.attempts == 1
    assert server.status_counts == {401: 1}


def test_unreachable_server_is_a_connection_error():
    with FakeOpenAI() as server:
        base_url = server.base_url
    # The server is stopped: nothing listens on that port any more.
    client = LlmClient(
        LlmSettings(base_url=base_url, api_key="k", model="m", max_retries=1, timeout_seconds=1)
    )
    result = client.complete(lead_request())

    assert result.error_kind == "connection"
    assert result.attempts == 2


# -- answers that must not be used --------------------------------------------------------------


def test_malformed_json_is_invalid_output_and_not_retried():
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.malformed_json())
        result = LlmClient(settings(server)).complete(lead_request())

    assert result.error_kind == "invalid_output"
    assert "Invalid JSON" in result.error
    assert result.output is None
    assert result.attempts == 1
    assert server.total_requests == 1
    assert result.raw_text is not None  # kept for the decision record
    assert result.prompt_tokens > 0  # the call was made and paid for


def test_schema_violation_is_invalid_output():
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.schema_violation())
        result = LlmClient(settings(server)).complete(lead_request())

    assert result.error_kind == "invalid_output"
    assert result.output is None
    assert result.attempts == 1


def test_out_of_range_values_are_invalid_output():
    # Valid JSON of the right shape, but a score outside 0..1 and an action not on the list.
    bad = ANSWER | {"fit_score": 7, "next_action": "delete_the_account"}
    with FakeOpenAI(lambda body: bad) as server:
        result = LlmClient(settings(server)).complete(lead_request())

    assert result.error_kind == "invalid_output"
    assert result.output is None
    assert "fit_score" in result.error and "next_action" in result.error


def test_refusal_is_reported_as_refusal():
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.refusal("I can't help with that."))
        result = LlmClient(settings(server)).complete(lead_request())

    assert result.error_kind == "refusal"
    assert result.error == "I can't help with that."
    assert result.output is None
    assert result.attempts == 1


# -- many requests: concurrency, limits, isolation, order --------------------------------------


def test_concurrency_never_exceeds_max_concurrency():
    # Each answer waits until three requests are at the server together: twelve requests all
    # answered means four full waves of three, and a fourth request in a wave would show.
    with FakeOpenAI(held_until(3, ANSWER)) as server:
        client = LlmClient(settings(server, max_concurrency=3, timeout_seconds=300))
        results = client.complete_many([lead_request(f"lead-{i}") for i in range(12)])

    assert all(r.error_kind is None for r in results)
    assert server.total_requests == 12
    assert server.max_in_flight == 3  # reached, and never exceeded


def test_concurrency_limit_is_shared_by_callers_of_one_client():
    # Six worker threads in all; held in waves of three, the semaphore is all that keeps the
    # other three back.
    with FakeOpenAI(held_until(3, ANSWER)) as server:
        client = LlmClient(settings(server, max_concurrency=3, timeout_seconds=300))
        batches = [[lead_request(f"{b}-{i}") for i in range(6)] for b in ("a", "b")]
        with ThreadPoolExecutor(max_workers=2) as callers:
            outcomes = list(callers.map(client.complete_many, batches))

    assert all(r.error_kind is None for results in outcomes for r in results)
    assert server.total_requests == 12
    assert server.max_in_flight == 3


def test_requests_per_minute_are_respected():
    virtual = VirtualTime(frozen=True)  # all ten arrive at t=0
    with FakeOpenAI(lambda body: ANSWER) as server:
        client = client_on(virtual, settings(server, requests_per_minute=120))
        results = client.complete_many([lead_request(f"lead-{i}") for i in range(10)])

    assert all(r.error_kind is None for r in results)
    # 120/min is one request every 0.5 s, evenly: 10 requests span 4.5 s, none in a burst.
    assert sorted(virtual.sleeps) == pytest.approx([0.5 * i for i in range(10)])


def tpm_for_one_request_every(seconds: float) -> int:
    estimate = estimate_tokens(lead_request(), strict_json_schema(LeadQualification))
    return int(estimate / seconds * 60)


def test_tokens_per_minute_are_respected():
    # One request's estimate every 0.4 s; the bucket holds one second's worth (2.5 requests).
    tpm = tpm_for_one_request_every(0.4)
    virtual = VirtualTime(frozen=True)  # all six arrive at t=0
    # Answers wait until all six are at the server, so every reservation (charged the
    # estimate) comes before any usage correction.
    with FakeOpenAI(held_until(6, ANSWER)) as server:
        client_settings = settings(server, tokens_per_minute=tpm, timeout_seconds=300)
        results = client_on(virtual, client_settings).complete_many(
            [lead_request(f"lead-{i}") for i in range(6)]
        )

    assert all(r.error_kind is None for r in results)
    # Two go at once, the third after 0.2 s, then one every 0.4 s: the last at 1.4 s. (The
    # request limit, 1,000 a second here, spaces the first two by a millisecond.)
    assert sorted(virtual.sleeps) == pytest.approx([0, 0, 0.2, 0.6, 1.0, 1.4], abs=0.01)


def test_reported_usage_corrects_the_token_estimate():
    # Same limit, one at a time, all at t=0: each answer's usage (far below max_tokens) is
    # given back before the next request, so none of them waits for tokens; without the
    # correction the waits would be those above (0, 0, 0.2, 0.6, 1.0, 1.4 s).
    tpm = tpm_for_one_request_every(0.4)
    virtual = VirtualTime(frozen=True)
    with FakeOpenAI(lambda body: ANSWER) as server:
        client_settings = settings(server, tokens_per_minute=tpm, max_concurrency=1)
        results = client_on(virtual, client_settings).complete_many(
            [lead_request(f"lead-{i}") for i in range(6)]
        )

    assert all(r.error_kind is None for r in results)
    assert len(virtual.sleeps) == 6
    assert max(virtual.sleeps) < 0.01  # only the request limit's millisecond spacing


def test_token_bucket_gives_back_what_was_not_used():
    virtual = VirtualTime(frozen=True)
    bucket = TokenBucket(rate_per_second=100, capacity=100, clock=virtual.clock)
    assert bucket.reserve(100) == 0
    assert bucket.reserve(50) == pytest.approx(0.5)  # in debt: wait for 50 more
    bucket.give_back(150)  # both turned out to cost nothing
    assert bucket.reserve(100) == 0


def test_token_bucket_refills_with_time_and_serves_waiting_callers_in_order():
    virtual = VirtualTime(frozen=True)
    bucket = TokenBucket(rate_per_second=10, capacity=20, clock=virtual.clock)
    assert bucket.reserve(20) == 0  # a full bucket: a burst up to its capacity
    assert [bucket.reserve(5) for _ in range(3)] == pytest.approx([0.5, 1.0, 1.5])
    virtual.now = 2.0  # the three waits are over, and 5 tokens are back
    assert bucket.reserve(5) == 0
    assert bucket.reserve(5) == pytest.approx(0.5)
    virtual.now = 100.0  # a long quiet spell refills only up to the capacity
    assert bucket.reserve(20) == 0
    assert bucket.reserve(50) == pytest.approx(2.0)  # more than capacity: wait for a full one


def test_one_failing_item_does_not_affect_the_others_and_order_is_kept():
    def responder(body: dict) -> dict:
        key = body["messages"][-1]["content"]
        index = int(key.split("-")[1])
        time.sleep((8 - index) * 0.03)  # later items finish first
        if key == "lead-3":
            return ANSWER | {"next_action": "not_an_action"}
        return ANSWER | {"reasons": [key]}

    requests = [lead_request(f"lead-{i}", text=f"lead-{i}") for i in range(8)]
    with FakeOpenAI(responder) as server:
        server.plan(Fault.status(500))  # one transient failure too, absorbed by a retry
        results = LlmClient(settings(server)).complete_many(requests)

    assert [r.key for r in results] == [r.key for r in requests]
    assert results[3].error_kind == "invalid_output"
    assert results[3].output is None
    for result in results[:3] + results[4:]:
        assert result.error_kind is None, (result.key, result.error)
        assert result.output.reasons == [result.key]
    assert sum(r.attempts for r in results) == 9


def test_api_key_is_never_logged(caplog):
    secret = "sk-live-THIS-MUST-NOT-LEAK"
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx's included
    with FakeOpenAI(lambda body: ANSWER) as server:
        server.plan(Fault.status(500), Fault.malformed_json())
        client_settings = settings(server, api_key=secret)
        results = LlmClient(client_settings).complete_many([lead_request("a"), lead_request("b")])

    assert {r.error_kind for r in results} == {None, "invalid_output"}
    assert "retrying" in caplog.text  # the retry was logged ...
    assert secret not in caplog.text  # ... without the key
    assert secret not in repr(client_settings)
    assert all(secret not in (r.error or "") for r in results)
