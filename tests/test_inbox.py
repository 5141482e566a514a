"""The approvals inbox over real HTTP: uvicorn on 127.0.0.1 (port 0) serving
``inbox_routes`` on a copy of the shared simulated CRM, reviews applied by the real
``review_actions`` job, and a reviewer in Debian's Chromium (driven by Playwright, which uses
that Chromium and downloads no browser)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import pytest
from filelock import FileLock
from starlette.applications import Starlette

from conftest import serving_app
from revorch.server.inbox import InboxConfigError, InboxSettings, inbox_routes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKENS = {"alice": "alice-token-4f9c2a7e1b", "bob": "bob-token-8d3e6f0a2c5"}
# A review runs a Dagster job in the server: seconds on a busy machine.
TIMEOUT = 120
ATTACK = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def serving(app):
    """``app`` under uvicorn on 127.0.0.1, a port the system picks; its base URL."""
    return serving_app(app)


@pytest.fixture
def home(copy_crm, monkeypatch):
    """A governed copy of the shared CRM as this process's REVORCH_HOME (the inbox and the
    review runs read their paths from the environment)."""
    crm = copy_crm("governed")
    for name in list(os.environ):
        if name.startswith(("REVORCH_", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REVORCH_HOME", str(crm.root))
    monkeypatch.setenv("DAGSTER_HOME", str(crm.root / "dagster"))  # restored after the test
    return crm


@pytest.fixture
def inbox(home) -> Iterator[str]:
    """The inbox's base URL (…/approvals) on ``home``."""
    settings = InboxSettings(tokens=TOKENS, busy_wait_seconds=0.5, review_wait_seconds=TIMEOUT)
    with serving(Starlette(routes=inbox_routes(settings))) as base:
        yield f"{base}/approvals"


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _login(client: httpx.Client, inbox: str, token: str) -> httpx.Response:
    form = client.get(f"{inbox}/login")
    return client.post(f"{inbox}/login", data={"csrf": _csrf(form.text), "token": token})


def _pending(home) -> list[str]:
    with duckdb.connect(str(home.root / "published" / "revorch.duckdb"), read_only=True) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT action_id FROM governance.approval_queue ORDER BY action_id"
            ).fetchall()
        ]


def _statuses_and_reviews(home, ids: list[str]) -> tuple[dict, list]:
    with duckdb.connect(str(home.database), read_only=True) as conn:
        statuses = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions "
                "WHERE action_id IN (SELECT unnest(?))",
                [ids],
            ).fetchall()
        )
        reviews = conn.execute(
            "SELECT action_id, event, actor, comment FROM governance.reviews "
            "WHERE event IN ('approved', 'rejected') ORDER BY recorded_at"
        ).fetchall()
    return statuses, reviews


def test_the_inbox_asks_for_a_login_before_showing_or_applying_anything(home, inbox):
    action = _pending(home)[0]
    with httpx.Client(timeout=TIMEOUT) as client:
        page = client.get(f"{inbox}/")
        assert page.status_code == 303
        assert page.headers["location"] == f"{inbox}/login"
        # A review posted without a session (with a token of a fresh anonymous one) is refused.
        form = client.get(f"{inbox}/login")
        refused = client.post(
            f"{inbox}/review",
            data={"csrf": _csrf(form.text), "action_id": action, "decision": "approve"},
        )
        assert refused.status_code == 401
    assert _statuses_and_reviews(home, [action]) == ({action: "pending_approval"}, [])


def test_a_wrong_token_is_refused_and_the_right_one_names_the_reviewer(inbox):
    with httpx.Client(timeout=TIMEOUT) as client:
        wrong = _login(client, inbox, TOKENS["alice"] + "x")
        assert wrong.status_code == 401
        assert "That token is not known." in wrong.text
        assert client.get(f"{inbox}/").status_code == 303  # still not logged in
        right = _login(client, inbox, TOKENS["alice"])
        assert right.status_code == 303
        page = client.get(f"{inbox}/")
        assert page.status_code == 200
        assert "Signed in as <strong>alice</strong>" in page.text


def test_a_post_without_this_sessions_csrf_token_is_refused(home, inbox):
    action = _pending(home)[0]
    review = {"action_id": action, "decision": "approve"}
    with httpx.Client(timeout=TIMEOUT) as alice, httpx.Client(timeout=TIMEOUT) as bob:
        assert _login(alice, inbox, TOKENS["alice"]).status_code == 303
        assert _login(bob, inbox, TOKENS["bob"]).status_code == 303
        bobs_token = _csrf(bob.get(f"{inbox}/").text)
        assert alice.post(f"{inbox}/review", data=review).status_code == 403
        refused = alice.post(f"{inbox}/review", data={**review, "csrf": bobs_token})
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        # A login form posted without the token of the session that loaded it.
        assert alice.post(f"{inbox}/login", data={"token": TOKENS["bob"]}).status_code == 403
    assert _statuses_and_reviews(home, [action]) == ({action: "pending_approval"}, [])


def test_model_text_and_reasons_are_shown_as_text(home, inbox):
    action = _pending(home)[0]
    # What a compromised model could write, planted in the copy the inbox reads.
    with duckdb.connect(str(home.root / "published" / "revorch.duckdb")) as conn:
        conn.execute(
            "UPDATE governance.actions SET reason = ?, "
            "payload = json_object('model_text', json_object('text', ?, 'untrusted', true)) "
            "WHERE action_id = ?",
            [f"because {ATTACK}", ATTACK, action],
        )
    with httpx.Client(timeout=TIMEOUT) as client:
        _login(client, inbox, TOKENS["alice"])
        page = client.get(f"{inbox}/")
    assert page.status_code == 200
    assert "because &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in (
        page.text
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text.split('class="model-text">')[1]
    assert "<script" not in page.text and "<img" not in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # so none may run
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_a_review_runs_the_review_job_and_the_audit_trail_names_the_reviewer(
    home, inbox, monkeypatch
):
    monkeypatch.setenv("REVORCH_INBOX_URL", f"{inbox}/")
    approved, rejected = _pending(home)[:2]
    with httpx.Client(timeout=TIMEOUT) as client:
        _login(client, inbox, TOKENS["bob"])
        csrf = _csrf(client.get(f"{inbox}/").text)
        # A rejection without a comment is refused whole, in the review code's own words.
        bare = {"csrf": csrf, "action_id": rejected, "decision": "reject"}
        refused = client.post(f"{inbox}/review", data=bare)
        assert refused.status_code == 400
        assert "a rejection needs a comment" in refused.text
        done = client.post(
            f"{inbox}/review",
            data={"csrf": csrf, "action_id": approved, "decision": "approve", "comment": "ok"},
        )
        assert done.status_code == 303, done.text
        page = client.get(f"{inbox}/")
    assert f'id="action-{approved}"' not in page.text  # the published copy was refreshed
    assert f'id="action-{rejected}"' in page.text
    assert _statuses_and_reviews(home, [approved, rejected]) == (
        {approved: "sent", rejected: "pending_approval"},  # approved, and sent at once
        [(approved, "approved", "human:bob", "ok")],
    )
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(dg.RunsFilter(tags={"revorch/via": "inbox"}))
        assert run.job_name == "approve_and_dispatch"
        assert run.tags["revorch/reviewer"] == "bob"
        queue = instance.get_latest_materialization_event(
            dg.AssetKey(["governance", "approval_queue"])
        )
    # The Dagster UI links the approval queue to the inbox.
    assert queue.asset_materialization.metadata["inbox"] == dg.MetadataValue.url(f"{inbox}/")


def test_a_review_says_busy_and_applies_nothing_while_the_writer_is_held(home, inbox):
    action = _pending(home)[0]
    review = {"action_id": action, "decision": "approve"}
    # A connection of another run holds the state store's writer lock (resources/state_store.py).
    writer = FileLock(f"{home.database.resolve()}.writer.lock")
    with httpx.Client(timeout=TIMEOUT) as client:
        _login(client, inbox, TOKENS["alice"])
        csrf = _csrf(client.get(f"{inbox}/").text)
        with writer:
            busy = client.post(f"{inbox}/review", data={**review, "csrf": csrf})
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "10"
        assert "Busy" in busy.text and "writing the state store" in busy.text
        assert f'name="action_id" value="{action}"' in busy.text  # a form to send it again
        assert _statuses_and_reviews(home, [action]) == ({action: "pending_approval"}, [])
        # A step of another run holds the duckdb_writer pool's one slot.
        with dg.DagsterInstance.get() as instance:
            storage = instance.event_log_storage
            storage.set_concurrency_slots("duckdb_writer", 1)
            storage.claim_concurrency_slot("duckdb_writer", "f00dcafe-run", "crm__change_log")
            try:
                busy = client.post(f"{inbox}/review", data={**review, "csrf": csrf})
            finally:
                storage.free_concurrency_slots_for_run("f00dcafe-run")
        assert busy.status_code == 503
        assert "run f00dcafe (a run) is in step crm__change_log" in busy.text
        again = client.post(f"{inbox}/review", data={**review, "csrf": csrf})
        assert again.status_code == 303
    assert _statuses_and_reviews(home, [action])[0] == {action: "sent"}


def test_a_review_that_outlasts_the_wait_is_reported_as_applying_then_applied(home):
    action = _pending(home)[0]
    settings = InboxSettings(tokens=TOKENS, review_wait_seconds=0.01)
    with (
        serving(Starlette(routes=inbox_routes(settings))) as base,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        inbox = f"{base}/approvals"
        _login(client, inbox, TOKENS["alice"])
        csrf = _csrf(client.get(f"{inbox}/").text)
        review = {"csrf": csrf, "action_id": action, "decision": "approve"}
        applying = client.post(f"{inbox}/review", data=review)
        assert applying.status_code == 202
        assert "Still applying" in applying.text
        # Until the page shows how the review ended (pytest-timeout is the hang guard).
        while "review-applying" in (page := client.get(f"{inbox}/").text):
            time.sleep(0.5)
    assert 'class="review-applied">' in page and action in page
    assert _statuses_and_reviews(home, [action])[0] == {action: "sent"}


def _outbox(home) -> list[str]:
    if not home.outbox.exists():
        return []
    return [json.loads(line)["action_id"] for line in home.outbox.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_a_reviewer_in_chromium_approves_one_rejects_another_and_only_one_is_sent(home, inbox):
    sync_api = pytest.importorskip("playwright.sync_api")
    approved, rejected = _pending(home)[:2]
    sent_before = _outbox(home)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{inbox}/")
            assert page.url == f"{inbox}/login"
            page.fill("input[name=token]", TOKENS["alice"])
            page.click("button:text('Log in')")
            assert page.inner_text("header").count("alice") == 1
            card = page.locator(f"#action-{approved}")
            card.locator("textarea").fill("checked the account")
            card.locator("button[value=approve]").click()
            card = page.locator(f"#action-{rejected}")
            card.locator("textarea").fill("we call strategic accounts ourselves")
            card.locator("button[value=reject]").click()
            reviews = page.inner_text("section.recent")
            assert f"approve {approved}: applied" in reviews
            assert f"reject {rejected}: applied" in reviews
            assert page.locator(f"#action-{approved}").count() == 0
            assert page.locator(f"#action-{rejected}").count() == 0
        finally:
            browser.close()
    # The dispatcher, as `revorch dispatch` runs it, sends the approved one and nothing else.
    dispatch = subprocess.run(
        [str(Path(sys.executable).with_name("revorch")), "dispatch"],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dispatch.returncode == 0, dispatch.stderr
    assert _outbox(home)[len(sent_before) :] == [approved]
    assert _statuses_and_reviews(home, [approved, rejected]) == (
        {approved: "sent", rejected: "rejected"},
        [
            (approved, "approved", "human:alice", "checked the account"),
            (rejected, "rejected", "human:alice", "we call strategic accounts ourselves"),
        ],
    )


@pytest.mark.parametrize(
    ("tokens", "complaint"),
    [
        ("alice-token-4f9c2a7e1b", "entry 1 is not NAME:TOKEN"),
        ("alice:short", "shorter than 16 characters"),
        ("alice:same-token-0123456789,bob:same-token-0123456789", "the same token"),
        ("al/ice:alice-token-4f9c2a7e1b", "reviewer name 'al/ice'"),
    ],
)
def test_tokens_that_cannot_be_used_stop_the_inbox_with_the_reason(tokens, complaint):
    with pytest.raises(InboxConfigError, match=complaint) as raised:
        InboxSettings.from_env({"REVORCH_INBOX_TOKENS": tokens})
    assert "4f9c2a7e1b" not in str(raised.value)  # a token is never repeated in the message
    found = InboxSettings.from_env(
        {"REVORCH_INBOX_TOKENS": ",".join(f"{n}:{t}" for n, t in TOKENS.items())}
    )
    assert found.tokens == TOKENS
