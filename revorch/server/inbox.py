"""The approvals inbox: a web page where reviewers approve or reject what the policy held.

``inbox_routes(settings)`` gives the routes Revorch's HTTP service mounts at ``/approvals``.
The page lists the actions waiting in ``governance.approval_queue`` with their reason, the
decision and evidence behind them, the rules that held them and the SLA left. It reads the
analysts' published copy, so it never waits for the writer; the copy is refreshed by every run
and by every review. On DuckLake it reads the live catalog (revorch/state/access.py).

A click applies the review the way ``revorch approvals approve|reject`` does: it runs the job
``approve_and_dispatch`` (or ``review_actions`` for a rejection) in this process with the
same config, so the same code (``revorch.governance.approvals.review``) applies it all or
nothing, the audit trail records ``human:<reviewer>`` and the comment, an approved action is
judged again and sent at once by the dispatcher, the audit trail's head is anchored in
Dagster, and the published copy is refreshed. When a run holds the
state store's writer, the inbox says so and applies nothing ("busy, retry"), instead of
leaving the reviewer waiting in silence.

Reviewers log in with a token of their own (``REVORCH_INBOX_TOKENS``); the session is a signed
cookie (Starlette's SessionMiddleware), and every form carries the session's CSRF token. The
pages load no script and forbid it (Content-Security-Policy), and model text is escaped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import filelock
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.templating import Jinja2Templates

from revorch import clock, settings
from revorch.governance.approvals import Review, ReviewError
from revorch.state.access import NoState, StateBusy, reading
from revorch.state.writer_lock import lock_path

log = logging.getLogger("revorch.inbox")

MOUNT_PATH = "/approvals"
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
PENDING_SQL = (Path(__file__).parent / "inbox_pending.sql").read_text()
# No script runs on these pages, whatever text a model wrote into them.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_REVIEWER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_TOKEN_LENGTH = 16


class InboxConfigError(ValueError):
    """REVORCH_INBOX_TOKENS (or another inbox setting) cannot be used; says what to fix."""


@dataclass(frozen=True)
class InboxSettings:
    """How the inbox runs. ``tokens`` maps each reviewer's name (recorded in the audit trail)
    to the token they log in with. ``session_secret`` signs the session cookie; a random one
    (the default) logs everybody out when the server restarts."""

    tokens: dict[str, str] = field(default_factory=dict)
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    secure_cookies: bool = False  # set behind an HTTPS proxy: the cookie goes over HTTPS only
    session_hours: float = 12.0
    page_size: int = 50
    # A review waits this long for a writer that is between two steps before "busy, retry".
    busy_wait_seconds: float = 2.0
    # A review that started but is not done after this is reported as still applying.
    review_wait_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name, token in self.tokens.items():
            if not _REVIEWER_NAME.fullmatch(name):
                raise InboxConfigError(
                    f"reviewer name {name!r}: use letters, digits and . _ @ - (at most 64)"
                )
            if len(token) < MIN_TOKEN_LENGTH:
                raise InboxConfigError(
                    f"the token of {name} is shorter than {MIN_TOKEN_LENGTH} characters; "
                    "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
                )
        if len(set(self.tokens.values())) < len(self.tokens):
            raise InboxConfigError("two reviewers have the same token; give each their own")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> InboxSettings:
        """REVORCH_INBOX_TOKENS (``alice:TOKEN,bob:TOKEN``), REVORCH_INBOX_SECRET (signs the
        session cookie; random when unset) and REVORCH_INBOX_SECURE_COOKIES (1 behind HTTPS)."""
        env = os.environ if environ is None else environ
        tokens: dict[str, str] = {}
        entries = re.split(r"[,\s]+", env.get("REVORCH_INBOX_TOKENS", "").strip())
        for number, entry in enumerate(filter(None, entries), start=1):
            name, colon, token = entry.partition(":")
            if not colon:  # the entry may be a bare token: not repeated in the message
                raise InboxConfigError(
                    f"REVORCH_INBOX_TOKENS: entry {number} is not NAME:TOKEN "
                    "(entries separated by commas)"
                )
            if name in tokens:
                raise InboxConfigError(f"REVORCH_INBOX_TOKENS names {name} twice")
            tokens[name] = token
        chosen = {"tokens": tokens}
        if env.get("REVORCH_INBOX_SECRET"):
            chosen["session_secret"] = env["REVORCH_INBOX_SECRET"]
        chosen["secure_cookies"] = env.get("REVORCH_INBOX_SECURE_COOKIES", "") in ("1", "true")
        return cls(**chosen)

    def reviewer_for(self, token: str) -> str | None:
        """The reviewer whose token this is, compared in constant time; None if nobody's."""
        found = None
        for name, known in self.tokens.items():
            if secrets.compare_digest(token.encode(), known.encode()):
                found = name
        return found

    def token_mark(self, reviewer: str) -> str | None:
        """A fingerprint of the reviewer's current token kept in the session, so a session
        ends when the token is changed or removed."""
        token = self.tokens.get(reviewer)
        return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


# -- reading the queue ------------------------------------------------------------------------


def pending_actions(page: int, page_size: int) -> tuple[int, list[dict]] | str:
    """One page of the actions waiting for approval, oldest first, with the decision behind
    each, from the published copy (or the live DuckLake catalog); or why there is nothing to
    show."""
    try:
        with reading() as conn:
            clock.bind(conn, os.environ.get("REVORCH_CLOCK") or clock.WALL)
            total = conn.execute("SELECT count(*) FROM governance.approval_queue").fetchone()[0]
            cursor = conn.execute(
                PENDING_SQL, {"limit": page_size, "offset": (page - 1) * page_size}
            )
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except (NoState, StateBusy) as error:
        return str(error)
    except duckdb.CatalogException:
        return "the state store has no governance tables yet: run `revorch ingest`"
    return total, [_shown(row) for row in rows]


def _shown(row: dict) -> dict:
    """JSON columns as Python values, and the SLA left in words."""
    for column in ("facts", "payload", "model_text", "input", "output"):
        if isinstance(row.get(column), str):
            row[column] = json.loads(row[column])
    output = row.get("output") or {}
    row["scores"] = {
        k: v for k, v in output.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    row["model_text_shown"] = (
        json.dumps(row["model_text"], indent=2, ensure_ascii=False)
        if row.get("model_text") is not None
        else None
    )
    row["payload_shown"] = json.dumps(row["payload"], indent=2, ensure_ascii=False)
    row["sla"] = _sla_words(row["sla_seconds_left"], row["escalated_at"])
    return row


def _sla_words(seconds: float | None, escalated_at: datetime | None) -> str:
    if seconds is None:
        return "no SLA"
    span = _duration(abs(seconds))
    if seconds >= 0:
        return f"{span} left"
    escalated = " (escalated)" if escalated_at else ""
    return f"overdue by {span}{escalated}"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


# -- applying a review ------------------------------------------------------------------------


class WriterBusy(Exception):
    """A run holds the state store's writer; the review was not applied."""


@dataclass
class ReviewRecord:
    """A review sent from this inbox, and what became of it (shown to its reviewer)."""

    reviewer: str
    decision: str
    action_ids: list[str]
    comment: str
    state: str = "applying"  # applying, applied, refused, busy, failed
    message: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Reviews:
    """Applies reviews one at a time, off the event loop, and remembers the last ones."""

    def __init__(self, inbox: InboxSettings) -> None:
        self.settings = inbox
        self.one_at_a_time = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inbox-review")
        self.recent: deque[ReviewRecord] = deque(maxlen=200)

    async def submit(self, record: ReviewRecord) -> ReviewRecord:
        """Apply ``record``; return it once applied, refused or busy, or still ``applying``
        after ``review_wait_seconds`` (it then goes on, and its state changes when done)."""
        self.recent.appendleft(record)
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._apply, record)
        await asyncio.wait([future], timeout=self.settings.review_wait_seconds)
        return record

    def _apply(self, record: ReviewRecord) -> None:
        review = Review(record.action_ids, record.decision, record.reviewer, record.comment)
        try:
            review.validate()
            if not self.one_at_a_time.acquire(timeout=self.settings.busy_wait_seconds):
                raise WriterBusy("another review from this inbox is being applied")
            try:
                holder = writer_holder(self.settings.busy_wait_seconds)
                if holder:
                    raise WriterBusy(holder)
                failure = run_review_job(review)
            finally:
                self.one_at_a_time.release()
        except ReviewError as error:
            record.state, record.message = "refused", str(error)
        except WriterBusy as busy:
            record.state, record.message = "busy", str(busy)
        except Exception as error:  # reported on the page and in the server's log
            log.exception("review %s failed", record.action_ids)
            record.state, record.message = "failed", f"{type(error).__name__}: {error}"
        else:
            if failure:
                record.state, record.message = "refused", failure
            else:
                record.state = "applied"
                log.info("%s: %s %s", record.reviewer, record.decision, record.action_ids)


# The run priority of review_actions and approve_and_dispatch (orch_assets/schedules.py).
REVIEW_PRIORITY = 10


def writer_holder(wait_seconds: float) -> str | None:
    """Who holds the state store's writer (a run's step in the ``duckdb_writer`` pool, or a
    connection of another process), if it stays held for ``wait_seconds``; None once free."""
    import dagster as dg

    from revorch.instance import ensure_dagster_home
    from revorch.instance.writer import held_for_whole_run, pool_holder

    ensure_dagster_home()
    # The lock file every writer holds while its connection is open.
    lock = filelock.FileLock(lock_path(settings.database_path()))
    deadline = time.monotonic() + wait_seconds
    with dg.DagsterInstance.get() as instance:
        while True:
            if held_for_whole_run(instance, below=REVIEW_PRIORITY):
                # A live ingestion holds it for its run and lets a review go between two of
                # its steps (revorch/instance/writer.py): the review will not wait for the run.
                return None
            holder = pool_holder(instance)
            if holder is None:
                try:
                    lock.acquire(timeout=0)
                    lock.release()
                    return None
                except filelock.Timeout:
                    holder = "another process has the state store open for writing"
            if time.monotonic() >= deadline:
                return holder
            time.sleep(0.2)


def run_review_job(review: Review) -> str | None:
    """Run the review's job, as ``revorch approvals`` does (an approval is dispatched in the
    same run); None when the review was applied, else why not (the step's own words)."""

    from resources import default_resources
    from revorch.definitions import defs
    from revorch.instance import ensure_dagster_home
    from revorch.instance.recovery import in_process_run_tags, recover_abandoned_runs
    from revorch.instance.writer import in_process_instance

    ensure_dagster_home()
    config = {
        "action_ids": review.action_ids,
        "decision": review.decision,
        "reviewer": review.reviewer,
        "comment": review.comment,
    }
    job = defs.resolve_job_def(
        "approve_and_dispatch" if review.decision == "approve" else "review_actions"
    )
    run_id = str(uuid.uuid4())
    # The writer once for the run's steps, as the CLI does (revorch/instance/writer.py).
    with in_process_instance(job) as (instance, hold_writer):
        for recovered in recover_abandoned_runs(instance):  # as the CLI does before a run
            log.warning("%s", recovered)
        with hold_writer(run_id):
            result = job.execute_in_process(
                run_id=run_id,
                instance=instance,
                run_config={
                    "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
                    "ops": {"governance__approval_queue": {"config": config}},
                },
                # The environment as it is now (paths, clock), not as it was at import.
                resources=default_resources(),
                raise_on_error=False,
                tags={
                    **in_process_run_tags(),
                    "revorch/via": "inbox",
                    "revorch/reviewer": review.reviewer,
                },
            )
    if result.success:
        return None
    failure = _step_failure(result)
    if any(
        e.asset_key.path == ["governance", "approval_queue"]
        for e in result.get_asset_materialization_events()
    ):
        # Applied; the send failed. They stay approved: the approvals sensor sends them later.
        log.warning("%s approved, not dispatched yet: %s", review.action_ids, failure)
        return None
    return failure


def _step_failure(result) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data:
                return data.user_failure_data.description
            return data.error.message.strip().splitlines()[0]
    return "the review run failed; see it in the Dagster UI"


# -- the pages --------------------------------------------------------------------------------


def inbox_routes(inbox: InboxSettings | None = None) -> list[BaseRoute]:
    """The inbox's routes, mounted at ``/approvals`` with their own session cookie."""
    inbox = inbox or InboxSettings.from_env()
    reviews = Reviews(inbox)

    def page(request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        context = {"csrf": _csrf(request), "reviewer": _reviewer(request, inbox), **context}
        return TEMPLATES.TemplateResponse(
            request, name, context, status_code=status_code, headers=SECURITY_HEADERS
        )

    async def queue(request: Request) -> Response:
        reviewer = _reviewer(request, inbox)
        if reviewer is None:
            return RedirectResponse(request.url_for("inbox:login"), status_code=303)
        try:
            number = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            number = 1
        found = pending_actions(number, inbox.page_size)
        total, actions = found if isinstance(found, tuple) else (0, [])
        mine = [r for r in reviews.recent if r.reviewer == reviewer][:10]
        return page(
            request,
            "inbox/queue.html",
            {
                "actions": actions,
                "total": total,
                "page": number,
                "pages": max(1, -(-total // inbox.page_size)),
                "unavailable": None if isinstance(found, tuple) else found,
                "recent": mine,
            },
        )

    async def login_form(request: Request) -> Response:
        return page(request, "inbox/login.html", {"configured": bool(inbox.tokens)})

    async def login(request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form):
            return page(request, "inbox/message.html", _CSRF_REFUSED, status_code=403)
        reviewer = inbox.reviewer_for(str(form.get("token", "")))
        if reviewer is None:
            log.warning("inbox: a login with an unknown token from %s", _client(request))
            context = {"configured": bool(inbox.tokens), "error": "That token is not known."}
            return page(request, "inbox/login.html", context, status_code=401)
        request.session.clear()  # a new session (and CSRF token) for the reviewer
        request.session.update(reviewer=reviewer, mark=inbox.token_mark(reviewer))
        return RedirectResponse(request.url_for("inbox:queue"), status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form):
            return page(request, "inbox/message.html", _CSRF_REFUSED, status_code=403)
        request.session.clear()
        return RedirectResponse(request.url_for("inbox:login"), status_code=303)

    async def review(request: Request) -> Response:
        reviewer = _reviewer(request, inbox)
        if reviewer is None:
            context = {"title": "Log in first", "text": "Your session has ended; log in again."}
            return page(request, "inbox/message.html", context, status_code=401)
        form = await request.form()
        if not _csrf_ok(request, form):
            return page(request, "inbox/message.html", _CSRF_REFUSED, status_code=403)
        record = await reviews.submit(
            ReviewRecord(
                reviewer=reviewer,
                decision=str(form.get("decision", "")),
                action_ids=[str(v) for v in form.getlist("action_id")],
                comment=str(form.get("comment", "")).strip(),
            )
        )
        if record.state == "applied":
            return RedirectResponse(request.url_for("inbox:queue"), status_code=303)
        status, title = _OUTCOMES[record.state]
        headers = {"Retry-After": "10"} if record.state == "busy" else None
        response = page(
            request, "inbox/message.html", {"title": title, "record": record}, status_code=status
        )
        if headers:
            response.headers.update(headers)
        return response

    routes = [
        Route("/", queue, name="queue"),
        Route("/login", login_form, methods=["GET"], name="login"),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Route("/review", review, methods=["POST"], name="review"),
    ]
    session = Middleware(
        SessionMiddleware,
        secret_key=inbox.session_secret,
        session_cookie="revorch_inbox",
        max_age=int(inbox.session_hours * 3600),
        # Lax: a link from elsewhere (chat, mail) opens the inbox logged in; posts from other
        # sites carry no cookie, and the CSRF token guards the rest.
        same_site="lax",
        https_only=inbox.secure_cookies,
    )
    return [Mount(MOUNT_PATH, routes=routes, middleware=[session], name="inbox")]


_CSRF_REFUSED = {
    "title": "Refused: the form's CSRF token does not match this session",
    "text": "Nothing was applied. Reload the inbox and try again.",
}
_OUTCOMES = {
    "refused": (400, "Not applied"),
    "busy": (503, "Busy: a run is writing the state store; retry in a moment"),
    "failed": (500, "The review failed"),
    "applying": (202, "Still applying: the review waits for the state store's writer"),
}


def _reviewer(request: Request, inbox: InboxSettings) -> str | None:
    """The logged-in reviewer, while their token is still the one they logged in with."""
    reviewer = request.session.get("reviewer")
    if reviewer and request.session.get("mark") == inbox.token_mark(reviewer):
        return reviewer
    return None


def _csrf(request: Request) -> str:
    """This session's CSRF token (the synchronizer-token pattern), made on first use."""
    if "csrf" not in request.session:
        request.session["csrf"] = secrets.token_urlsafe(32)
    return request.session["csrf"]


def _csrf_ok(request: Request, form) -> bool:
    expected = request.session.get("csrf")
    sent = str(form.get("csrf", ""))
    return bool(expected) and secrets.compare_digest(sent.encode(), expected.encode())


def _client(request: Request) -> str:
    return request.client.host if request.client else "an unknown client"
