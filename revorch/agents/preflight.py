"""Before a run that may call a model: one cheap call to the LLM endpoint (its models listing).

A wrong setup (no server at the URL, a refused key, a model the server does not serve) would
otherwise cost every LLM call its timeout and retries, for minutes, before each decision falls
back to the offline tier. The preflight finds it in one call and the run goes offline at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import openai

OPENAI_URL = "https://api.openai.com/v1"
PREFLIGHT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Preflight:
    """What the check found: ``offline_reason`` is None when the agents may use the endpoint."""

    line: str
    offline_reason: str | None = None

    @property
    def online(self) -> bool:
        return self.offline_reason is None


def check_llm_endpoint(
    base_url: str | None,
    api_key: str,
    models: set[str],
    *,
    timeout_seconds: float = PREFLIGHT_TIMEOUT_SECONDS,
) -> Preflight:
    """List the endpoint's models once (no retries) and say whether it serves ``models``."""
    url = base_url or OPENAI_URL
    wanted = ", ".join(sorted(models))
    client = openai.OpenAI(
        base_url=base_url, api_key=api_key, timeout=timeout_seconds, max_retries=0
    )
    try:
        served = {model.id for model in client.models.list()}
    except openai.APIConnectionError as error:  # also a timeout
        return _offline(f"the LLM endpoint {url} is unreachable ({error})", "unreachable")
    except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
        return _offline(
            f"the LLM endpoint {url} refused the key (HTTP {error.status_code}; "
            "check OPENAI_API_KEY)",
            "key_refused",
        )
    except openai.NotFoundError:
        # Some OpenAI-compatible proxies do not list models; the calls themselves may work.
        return Preflight(
            f"LLM tier: {url} does not list its models; the agents will try {wanted} there."
        )
    except openai.APIStatusError as error:
        return _offline(
            f"the LLM endpoint {url} answered HTTP {error.status_code} to a models listing",
            f"http_{error.status_code}",
        )
    finally:
        client.close()
    missing = sorted(models - served)
    if missing:
        return _offline(
            f"the LLM endpoint {url} does not serve {', '.join(missing)} "
            f"(it serves {', '.join(sorted(served)[:5]) or 'no model'})",
            "model_not_served",
        )
    return Preflight(f"LLM tier: the agents will use {wanted} at {url}.")


def _offline(problem: str, reason: str) -> Preflight:
    return Preflight(
        f"LLM tier: {problem}; the agents will decide offline for this run.",
        offline_reason=f"preflight: {reason}",
    )
