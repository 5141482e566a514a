"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It serves ``POST /v1/chat/completions`` (structured outputs) and ``GET /v1/models`` over real
HTTP, so the real ``openai`` client (which has its own HTTP stack that mocks do not intercept)
talks to it exactly as it would to OpenAI, vLLM or Ollama. Use it from any test::

    from fake_openai import FakeOpenAI, Fault

    with FakeOpenAI(responder=lambda body: {...}) as server:
        server.plan(Fault.status(429, retry_after=0.2), Fault.malformed_json())
        client = LlmClient(LlmSettings(base_url=server.base_url, api_key="test", model="m"))
        ...
        assert server.status_counts[429] == 1

or take the ``fake_openai`` fixture (``from fake_openai import fake_openai`` in a test module).

Without a responder it answers with a minimal instance of the requested JSON schema. Answers
carry ``usage`` (prompt tokens = characters of the messages / 4; cached tokens = the prefix
shared with an earlier prompt, in 128-token steps from 1,024 tokens, as OpenAI's prompt cache
reports it), an ``x-request-id`` header and the model. With ``worst_case_usage=True`` it
reports usage as the most a byte-level tokenizer could bill: a prompt token per UTF-8 byte
of the messages' text and of the response schema, plus the chat template's tokens, and
completion tokens equal to ``max_completion_tokens``. It refuses a strict schema that strict
structured outputs would refuse (an object without ``additionalProperties: false`` or without
all its properties required), with OpenAI's error body.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Responder = Callable[[dict[str, Any]], dict[str, Any]]

# Without ``served_model`` the server answers as whichever model is asked for; its models
# listing (what the CLI's preflight reads) names the models config/agents.yaml prices.
LISTED_BY_DEFAULT = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini")

# OpenAI's prompt cache starts at 1,024 tokens and grows in 128-token steps.
_CACHE_MIN_TOKENS = 1024
_CACHE_STEP_TOKENS = 128
_REMEMBERED_PROMPTS = 256


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, applied to the next request that arrives.

    Build them with the class methods: ``status`` (an error status with OpenAI's error body and
    optional ``retry-after`` / ``retry-after-ms``), ``delay`` (answer normally after sleeping,
    e.g. longer than the client's timeout), ``malformed_json`` (content that is not JSON),
    ``schema_violation`` (JSON that does not match the schema), ``refusal``.
    """

    kind: str
    status_code: int = 200
    retry_after: float | None = None
    retry_after_ms: float | None = None
    seconds: float = 0.0
    message: str = ""
    code: str | None = None

    @classmethod
    def status(
        cls,
        status_code: int,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        code: str | None = None,
    ) -> Fault:
        return cls(
            "status",
            status_code=status_code,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            code=code,
        )

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls("malformed_json")

    @classmethod
    def schema_violation(cls) -> Fault:
        return cls("schema_violation")

    @classmethod
    def refusal(cls, message: str = "I'm sorry, but I can't help with that.") -> Fault:
        return cls("refusal", message=message)


_ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "Incorrect API key provided."),
    408: ("timeout", "Request timed out."),
    429: ("requests", "Rate limit reached for requests per minute. Please try again later."),
    500: ("server_error", "The server had an error while processing your request."),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
}


def example_from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A minimal value that satisfies a JSON schema of the kind pydantic produces."""
    root = root if root is not None else schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return example_from_schema(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for union in ("anyOf", "oneOf", "allOf"):
        if union in schema:
            return example_from_schema(schema[union][0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {
            name: example_from_schema(sub, root)
            for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [example_from_schema(schema.get("items", {}), root)] * schema.get("minItems", 0)
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        low, high = schema.get("minimum", 0.0), schema.get("maximum", 1.0)
        return (low + high) / 2
    if kind == "boolean":
        return False
    return None


def strict_schema_problem(schema: Any, path: str = "schema") -> str | None:
    """Why strict structured outputs would refuse this schema, or None if it would not."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            problem = strict_schema_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={path}, 'additionalProperties' is required to be supplied and to be false."
        missing = set(schema.get("properties", {})) - set(schema.get("required", []))
        if missing:
            return f"In context={path}, 'required' is required to include every key in properties. Missing {sorted(missing)}."
    for key, value in schema.items():
        problem = strict_schema_problem(value, f"{path}.{key}")
        if problem:
            return problem
    return None


def _shared_prefix(a: str, b: str) -> int:
    """Length of the common prefix of two strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] matches, a[:high] does not
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


def _prompt_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


class FakeOpenAI:
    """The server; a context manager that starts it on a free port and stops it.

    Settable while running: ``latency_seconds`` (added to every answer), ``responder``,
    ``served_model`` (the model named in answers; default: the one requested),
    ``api_key`` (when set, other keys get 401), ``worst_case_usage`` (see the module),
    ``failing`` (a :class:`Fault` every request gets once the planned ones are used up). Read: ``total_requests``,
    ``models_listed`` (successful ``GET /v1/models``), ``status_counts``
    (a Counter by HTTP status; a request the client gave up on is counted when answered),
    ``in_flight``, ``max_in_flight``, ``received`` (each request's body, headers and arrival
    time on ``time.monotonic()``).
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency_seconds: float = 0.0,
        served_model: str | None = None,
        api_key: str | None = None,
        worst_case_usage: bool = False,
    ) -> None:
        self.responder = responder
        self.worst_case_usage = worst_case_usage
        self.latency_seconds = latency_seconds
        self.served_model = served_model
        self.api_key = api_key
        self.failing: Fault | None = None  # when set, every unplanned request gets this fault
        self.total_requests = 0  # chat completions; a models listing is counted apart
        self.models_listed = 0
        self.status_counts: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.received: list[dict[str, Any]] = []
        self._faults: deque[Fault] = deque()
        self._prompts: deque[str] = deque(maxlen=_REMEMBERED_PROMPTS)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, for ``base_url=`` of the openai client."""
        assert self._httpd is not None, "the server is not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- control ---------------------------------------------------------------------------

    def plan(self, *faults: Fault) -> None:
        """Queue faults; each of the next requests takes one, in order, then all is normal."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def reset_counters(self) -> None:
        with self._lock:
            self.total_requests = 0
            self.status_counts.clear()
            self.max_in_flight = self.in_flight
            self.received.clear()

    # -- used by the handler ---------------------------------------------------------------

    def _arrive(self, body: dict[str, Any], headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.total_requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.received.append({"body": body, "headers": headers, "at": time.monotonic()})
            return self._faults.popleft() if self._faults else self.failing

    def _leave(self, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.status_counts[status] += 1

    def _cached_tokens(self, prompt: str) -> int:
        with self._lock:
            shared = max((_shared_prefix(prompt, p) for p in self._prompts), default=0)
            self._prompts.append(prompt)
        tokens = shared // 4
        if tokens < _CACHE_MIN_TOKENS:
            return 0
        return tokens // _CACHE_STEP_TOKENS * _CACHE_STEP_TOKENS

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as real servers do: the client's connection pool is then exercised too.
    protocol_version = "HTTP/1.1"
    server_state: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self._send_error(404, "invalid_request_error", f"Unknown path {self.path}")
            return
        key = self.server_state.api_key
        if key is not None and self.headers.get("authorization") != f"Bearer {key}":
            self._send_error(401, *_ERROR_TYPES[401], code="invalid_api_key")
            return
        self.server_state.models_listed += 1
        served = self.server_state.served_model
        self._send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "revorch"}
                    for model in ([served] if served else LISTED_BY_DEFAULT)
                ],
            },
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(404, "invalid_request_error", f"Unknown path {self.path}")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_error(400, "invalid_request_error", "The body is not valid JSON.")
            return
        state = self.server_state
        fault = state._arrive(body, {k.lower(): v for k, v in self.headers.items()})
        status = 200
        try:
            status = self._answer(state, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            status = 499  # the client gave up (e.g. its timeout) before the answer was written
        finally:
            state._leave(status)

    def _answer(self, state: FakeOpenAI, body: dict[str, Any], fault: Fault | None) -> int:
        key = state.api_key
        if key is not None and self.headers.get("authorization") != f"Bearer {key}":
            return self._send_error(401, *_ERROR_TYPES[401], code="invalid_api_key")
        state._sleep(state.latency_seconds)
        if fault is not None and fault.kind == "delay":
            state._sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            error_type, message = _ERROR_TYPES.get(fault.status_code, ("server_error", "Error."))
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = f"{fault.retry_after:g}"
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = f"{fault.retry_after_ms:g}"
            code = fault.code or ("rate_limit_exceeded" if fault.status_code == 429 else None)
            return self._send_error(fault.status_code, error_type, message, code, headers)
        if not body.get("model") or not body.get("messages"):
            return self._send_error(
                400, "invalid_request_error", "'model' and 'messages' are required."
            )
        response_format = body.get("response_format") or {}
        schema: dict[str, Any] = {}
        if response_format.get("type") == "json_schema":
            json_schema = response_format.get("json_schema") or {}
            schema = json_schema.get("schema") or {}
            if json_schema.get("strict"):
                problem = strict_schema_problem(schema)
                if problem:
                    message = (
                        f"Invalid schema for response_format '{json_schema.get('name')}': {problem}"
                    )
                    return self._send_error(
                        400, "invalid_request_error", message, param="response_format"
                    )
        content: str | None
        refusal = None
        if fault is not None and fault.kind == "malformed_json":
            content = '{"confidence": 0.5, "reasons": ["unterminated'
        elif fault is not None and fault.kind == "schema_violation":
            content = json.dumps({"unexpected_field": "not in the schema"})
        elif fault is not None and fault.kind == "refusal":
            content, refusal = None, fault.message
        else:
            answer = state.responder(body) if state.responder else example_from_schema(schema)
            content = json.dumps(answer)
        prompt = _prompt_text(body)
        prompt_tokens = math.ceil(len(prompt) / 4)
        completion_tokens = math.ceil(len(content or refusal or "") / 4)
        if state.worst_case_usage:
            schema_text = json.dumps(schema, ensure_ascii=False)
            # OpenAI's chat template: 3 tokens around each message, 3 to start the answer.
            template = 3 * len(body["messages"]) + 3
            prompt_tokens = len((prompt + schema_text).encode("utf-8")) + template
            completion_tokens = int(body.get("max_completion_tokens") or completion_tokens)
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.served_model or body["model"],
            "system_fingerprint": "fp_revorch_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": refusal,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {
                    "cached_tokens": state._cached_tokens(prompt),
                    "audio_tokens": 0,
                },
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        }
        return self._send_json(200, payload)

    def _send_error(
        self,
        status: int,
        error_type: str,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> int:
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        return self._send_json(status, body, headers)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> int:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        return status


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running :class:`FakeOpenAI` with default answers, stopped after the test."""
    with FakeOpenAI() as server:
        yield server
