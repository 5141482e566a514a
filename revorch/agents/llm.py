"""The LLM tier's client: typed, rate-limited, retried calls to an OpenAI-compatible server.

Every call asks for a structured output (a strict JSON schema made from a pydantic model) and
returns an :class:`LlmResult` holding either the validated output or the reason there is none,
with token usage, attempts, latency and the server's request id for the decision record.

    client = LlmClient(LlmSettings(base_url=None, api_key=os.environ["OPENAI_API_KEY"],
                                   model="gpt-4o-mini"))
    results = client.complete_many([LlmRequest("lead-1", messages, LeadQualification,
                                                "lead_qualification")])

``base_url`` points it at any OpenAI-compatible server (vLLM, Ollama, the test server in
``tests/fake_openai.py``). Nothing here reaches anything but that server.
"""

from __future__ import annotations

import copy
import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from revorch.stopping import stopping

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)

ERROR_KINDS = (
    "invalid_output",
    "refusal",
    "timeout",
    "rate_limited",
    "server_error",
    "connection",
    "bad_request",
    "circuit_open",
    "stopped",
)
# Failures that say the endpoint, not the item, is wrong: consecutive ones open the breaker.
ENDPOINT_FAILURES = frozenset({"timeout", "rate_limited", "server_error", "connection"})

# Backoff between attempts when the server gives no retry-after: 0.5 s, 1 s, 2 s, ... up to 8 s,
# each shortened by up to a quarter at random so that parallel workers do not retry in step.
_INITIAL_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 8.0
# A retry-after longer than this is not waited for in-line; the normal backoff applies instead.
_MAX_RETRY_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class LlmSettings:
    """Where and how to call the model.

    ``base_url`` None means OpenAI's default endpoint; for vLLM or Ollama give e.g.
    ``"http://127.0.0.1:8000/v1"``. ``api_key`` comes from the caller's environment; it is
    kept out of ``repr`` and never logged. ``max_retries`` counts retries after the first
    attempt, for timeouts, 408/409/429, 5xx and connection errors. Requests are spaced evenly
    at ``requests_per_minute`` and charged against ``tokens_per_minute`` (estimated before the
    call, corrected with the reported usage); at most ``max_concurrency`` are in flight.
    """

    base_url: str | None
    api_key: str = field(repr=False)
    model: str
    timeout_seconds: float = 30.0
    max_retries: int = 3
    requests_per_minute: int = 60
    tokens_per_minute: int = 100_000
    max_concurrency: int = 8
    temperature: float = 0.0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlmSettings.{name} must be at least 1")
        if self.timeout_seconds <= 0 or self.max_retries < 0:
            raise ValueError("LlmSettings needs timeout_seconds > 0 and max_retries >= 0")


@dataclass(frozen=True)
class LlmRequest:
    """One item to decide: ``messages`` (already redacted) and the pydantic model to answer in."""

    key: str
    messages: list[dict]
    output_model: type[pydantic.BaseModel]
    schema_name: str
    max_tokens: int = 400


@dataclass(frozen=True)
class LlmResult:
    """The outcome of one request.

    ``output`` is set only when the answer validated against ``output_model``; otherwise
    ``error_kind`` is one of :data:`ERROR_KINDS` and ``error`` says what happened. Token counts
    are those the server reported for the last attempt (0 when it reported none);
    ``cached_tokens`` is the part of ``prompt_tokens`` served from the prompt cache.
    ``latency_seconds`` runs from the first attempt to the final answer, retries and backoff
    included, but not the wait for the rate limit before the first attempt. ``model`` is the
    model the server named in its answer (the requested one when there was no answer).
    """

    key: str
    output: pydantic.BaseModel | None
    error_kind: str | None
    error: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    latency_seconds: float
    attempts: int
    request_id: str | None
    model: str
    raw_text: str | None


class TokenBucket:
    """A thread-safe token bucket that hands out reservations.

    ``reserve(amount)`` takes ``amount`` at once (the level may go negative, which makes later
    callers wait longer) and returns how long the caller must sleep before using it, so waiting
    callers are served in arrival order and nobody polls. An amount larger than ``capacity``
    waits for a full bucket and then goes into debt, so no request is ever refused. ``clock``
    (seconds, monotonic) is injectable so that a test can check the schedule exactly.
    """

    def __init__(
        self,
        rate_per_second: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate_per_second
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now

    def reserve(self, amount: float) -> float:
        """Take ``amount`` and return the seconds to wait before it may be used."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            needed = min(amount, self.capacity)
            wait = max(0.0, (needed - self._level) / self.rate)
            self._level -= amount
            return wait

    def give_back(self, amount: float) -> None:
        """Return ``amount`` (negative to charge more) once the true cost is known."""
        with self._lock:
            self._refill(self._clock())
            self._level = min(self.capacity, self._level + amount)


def strict_json_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the form strict structured outputs accept.

    Every object gets ``additionalProperties: false`` and lists all its properties as
    required; a ``$ref`` with sibling keywords is inlined (strict mode refuses siblings); a
    ``null`` default is dropped. Mirrors what the openai SDK's ``parse()`` helper sends, without
    depending on its private module.
    """
    schema = model.model_json_schema()
    return _make_strict(schema, root=copy.deepcopy(schema))


def _make_strict(node: Any, root: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_make_strict(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _make_strict(merged, root)
    out = {key: _make_strict(value, root) for key, value in node.items()}
    if "default" in out and out["default"] is None:
        del out["default"]
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
        out["required"] = list(out.get("properties", {}))
    return out


def estimate_tokens(request: LlmRequest, schema: dict[str, Any]) -> int:
    """Tokens a request may cost before it is sent: text/4 for messages and schema, plus
    ``max_tokens`` for the answer."""
    chars = len(json.dumps(schema))
    for message in request.messages:
        content = message.get("content")
        chars += len(content) if isinstance(content, str) else len(json.dumps(content))
    return math.ceil(chars / 4) + request.max_tokens


# Chat templates wrap each message in a few special tokens (OpenAI: 3 or 4 a message, and 3
# to start the answer); counted generously.
_TOKENS_PER_MESSAGE = 8
_TOKENS_PER_REQUEST = 16


def worst_case_prompt_tokens(messages: list[dict], schema: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens a request can be billed for, whatever its text:
    the UTF-8 bytes of its messages and of the output schema (which structured outputs add
    to the prompt), as JSON, since a byte-level tokenizer never makes more tokens than bytes;
    plus the chat template's tokens around each message."""
    text = json.dumps({"messages": messages, "schema": schema}, ensure_ascii=False)
    return len(text.encode("utf-8")) + _TOKENS_PER_MESSAGE * len(messages) + _TOKENS_PER_REQUEST


def _retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait from ``retry-after-ms`` or ``retry-after`` (seconds or an
    HTTP date), or None when absent, unparseable or unreasonably long."""
    if headers is None:
        return None
    seconds: float | None = None
    raw_ms = headers.get("retry-after-ms")
    raw = headers.get("retry-after")
    try:
        if raw_ms is not None:
            seconds = float(raw_ms) / 1000
        elif raw is not None:
            seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is not None:
            seconds = parsed.timestamp() - time.time()
    if seconds is None or seconds < 0 or seconds > _MAX_RETRY_AFTER_SECONDS:
        return None
    return seconds


def _backoff_seconds(retry_number: int) -> float:
    delay = min(_MAX_BACKOFF_SECONDS, _INITIAL_BACKOFF_SECONDS * 2 ** (retry_number - 1))
    return delay * (1 - 0.25 * random.random())


@dataclass
class _Attempt:
    """What one HTTP attempt produced; ``retryable`` failures may be tried again."""

    output: pydantic.BaseModel | None = None
    error_kind: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = None
    model: str = ""
    raw_text: str | None = None
    usage_reported: bool = False


class CircuitBreaker:
    """Opens after ``threshold`` consecutive endpoint failures (each counted after its
    retries) among every call of a run: the rest of the run goes offline at once instead of
    spending every call's timeout and retries. Any answer from the model closes the count.
    Shared by every client of a run (one per agent), across their threads."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._failures = 0
        self._lock = threading.Lock()
        self.opened_by: str | None = None  # the last error when it opened

    @property
    def open(self) -> bool:
        return self.opened_by is not None

    def record(self, error_kind: str | None, error: str | None) -> None:
        with self._lock:
            if error_kind not in ENDPOINT_FAILURES:
                self._failures = 0
                return
            self._failures += 1
            if self._failures >= self.threshold and self.opened_by is None:
                self.opened_by = f"{error_kind}: {error}"[:200]
                log.warning(
                    "LLM tier off for the rest of this run after %d consecutive failures "
                    "(last: %s); the agents decide offline",
                    self._failures,
                    self.opened_by,
                )


class LlmClient:
    """Calls one model with structured outputs, within rate and concurrency limits.

    One client shares its limits across all threads and calls, so create one per model and
    reuse it. ``complete_many`` never raises for one item's failure: it is reported in that
    item's :class:`LlmResult`. ``clock`` and ``sleep`` default to real time; a test passes its
    own to check the limiter's schedule and the backoff without waiting.
    """

    def __init__(
        self,
        settings: LlmSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        import openai  # about a second to import: only when the LLM tier is used

        self.settings = settings
        self.breaker = breaker
        self._clock, self._sleep = clock, sleep
        # Retries are ours (max_retries=0 in the SDK) so that each result can report how many
        # attempts it took, and so that every retry also waits for the rate limiter.
        self._client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout_seconds,
            max_retries=0,
        )
        # Providers enforce per-minute limits over shorter windows, so requests are spaced
        # evenly (a bucket of one) rather than sent in a burst at the start of each minute.
        self._requests = TokenBucket(settings.requests_per_minute / 60, capacity=1, clock=clock)
        self._tokens = TokenBucket(
            settings.tokens_per_minute / 60,
            capacity=max(1.0, settings.tokens_per_minute / 60),
            clock=clock,
        )
        self._in_flight = threading.BoundedSemaphore(settings.max_concurrency)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> LlmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete_many(self, requests: list[LlmRequest]) -> list[LlmResult]:
        """Run the requests concurrently (at most ``max_concurrency`` at once, within the
        rate limits) and return one result per request, in the order given."""
        if not requests:
            return []
        workers = min(self.settings.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
            return list(pool.map(self.complete, requests))

    def complete(self, request: LlmRequest) -> LlmResult:
        """Run one request, retrying transient failures, and return its result."""
        schema = strict_json_schema(request.output_model)
        estimate = estimate_tokens(request, schema)
        started: float | None = None
        attempts = 0
        while True:
            if stopping():  # Ctrl-C or SIGTERM: no new call, so the step ends at once
                attempt = _Attempt(error_kind="stopped", error="the run is stopping")
                break
            if self.breaker is not None and self.breaker.open:
                attempt = _Attempt(
                    error_kind="circuit_open",
                    error=f"the LLM tier is off for this run ({self.breaker.opened_by})",
                )
                break
            self._sleep(max(self._requests.reserve(1), self._tokens.reserve(estimate)))
            if started is None:
                started = self._clock()
            attempts += 1
            with self._in_flight:
                attempt = self._attempt(request, schema)
            if attempt.usage_reported:
                self._tokens.give_back(estimate - attempt.prompt_tokens - attempt.completion_tokens)
            elif attempt.error_kind in ("rate_limited", "server_error", "bad_request"):
                # The server answered with an error, so it spent no tokens. After a timeout or a
                # lost connection it may have, so the estimate stays charged.
                self._tokens.give_back(estimate)
            if not attempt.retryable or attempts > self.settings.max_retries:
                break
            delay = attempt.retry_after
            if delay is None:
                delay = _backoff_seconds(attempts)
            log.info(
                "LLM request %s failed (%s, attempt %d); retrying in %.2f s",
                request.key,
                attempt.error_kind,
                attempts,
                delay,
            )
            self._sleep(delay)
        unsent = attempt.error_kind in ("circuit_open", "stopped")
        if self.breaker is not None and not unsent:
            self.breaker.record(attempt.error_kind, attempt.error)
        if attempt.error_kind is not None and not unsent:
            log.warning(
                "LLM request %s failed after %d attempt(s): %s: %s",
                request.key,
                attempts,
                attempt.error_kind,
                attempt.error,
            )
        return LlmResult(
            key=request.key,
            output=attempt.output,
            error_kind=attempt.error_kind,
            error=attempt.error,
            prompt_tokens=attempt.prompt_tokens,
            cached_tokens=attempt.cached_tokens,
            completion_tokens=attempt.completion_tokens,
            latency_seconds=0.0 if started is None else self._clock() - started,
            attempts=attempts,
            request_id=attempt.request_id,
            model=attempt.model or self.settings.model,
            raw_text=attempt.raw_text,
        )

    def _attempt(self, request: LlmRequest, schema: dict[str, Any]) -> _Attempt:
        import openai
        from openai.types.chat import ChatCompletion

        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.settings.model,
                messages=request.messages,  # type: ignore[arg-type]
                temperature=self.settings.temperature,
                # OpenAI's newer models refuse the older max_tokens; vLLM and recent Ollama
                # accept this name too.
                max_completion_tokens=request.max_tokens,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": request.schema_name, "schema": schema, "strict": True},
                },
            )
            completion = raw.parse()
        except openai.APITimeoutError as exc:
            return _Attempt(error_kind="timeout", error=str(exc), retryable=True)
        except openai.APIConnectionError as exc:
            return _Attempt(error_kind="connection", error=str(exc), retryable=True)
        except openai.APIStatusError as exc:
            return _status_failure(exc)
        except ValueError as exc:
            # A 200 whose body is not JSON: a proxy or server fault, likely transient.
            return _Attempt(
                error_kind="server_error", error=f"unreadable answer: {exc}", retryable=True
            )
        request_id = raw.headers.get("x-request-id")
        if not isinstance(completion, ChatCompletion):
            return _Attempt(
                error_kind="server_error",
                error=f"the answer is not a chat completion: {str(completion)[:200]!r}",
                retryable=True,
                request_id=request_id,
            )
        return _read_completion(request, completion, request_id)


def _status_failure(exc: openai.APIStatusError) -> _Attempt:
    status = exc.status_code
    failure = _Attempt(
        error=f"HTTP {status}: {exc.message}",
        request_id=exc.request_id,
        retry_after=_retry_after_seconds(exc.response.headers),
    )
    if status == 429:
        failure.error_kind = "rate_limited"
        # An exhausted quota or billing limit does not pass by waiting.
        failure.retryable = exc.code != "insufficient_quota"
    elif status == 408:
        failure.error_kind, failure.retryable = "timeout", True
    elif status == 409 or status >= 500:
        failure.error_kind, failure.retryable = "server_error", True
    else:
        failure.error_kind = "bad_request"
    return failure


def _read_completion(
    request: LlmRequest, completion: ChatCompletion, request_id: str | None
) -> _Attempt:
    """Turn a 200 answer into a validated output or an ``invalid_output``/``refusal``."""
    result = _Attempt(request_id=request_id, model=completion.model or "")
    usage = completion.usage
    if usage is not None:
        result.usage_reported = True
        result.prompt_tokens = usage.prompt_tokens or 0
        result.completion_tokens = usage.completion_tokens or 0
        details = usage.prompt_tokens_details
        result.cached_tokens = (details.cached_tokens or 0) if details is not None else 0
    if not completion.choices:
        result.error_kind, result.error = "invalid_output", "the answer has no choices"
        return result
    choice = completion.choices[0]
    message = choice.message
    result.raw_text = message.content
    if message.refusal:
        result.error_kind, result.error = "refusal", message.refusal
        return result
    if choice.finish_reason == "content_filter":
        result.error_kind, result.error = "refusal", "stopped by the provider's content filter"
        return result
    if choice.finish_reason == "length":
        result.error_kind = "invalid_output"
        result.error = f"the answer was cut off at max_tokens={request.max_tokens}"
        return result
    if message.content is None:
        result.error_kind, result.error = "invalid_output", "the answer has no content"
        return result
    try:
        result.output = request.output_model.model_validate_json(message.content)
    except pydantic.ValidationError as exc:
        result.error_kind = "invalid_output"
        result.error = (
            f"{exc.error_count()} error(s) validating {request.schema_name}: "
            + "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
        )
    return result
