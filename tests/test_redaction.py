"""Personal data out of prompts, a personal-data check that is right, and budgets that are
true bounds (issue 12, findings 3, 4 and 5).

- Every kind of personal data a CRM's free text carries (names the CRM holds: contacts of any
  company, owners, companies; emails, also written out; phones in national and international
  formats; IBANs; card numbers; national ids; IP addresses) is planted in every free-text field
  the agents read, landed and ingested like any change; the agents run with their LLM tier
  pointed at a real server on 127.0.0.1; not one planted value is in any request it receives,
  and the check ``prompts_hold_no_personal_data`` passes. With redaction bypassed the same run
  sends them all, and the check finds every kind in every planted record and fails the run.
- Numbers that are no phone numbers (``annual_revenue``) and dates are left alone.
- With 80,000-character CJK and emoji tickets and a server that bills a token per UTF-8 byte,
  recorded cost stays within the budgets, for one run and for two runs at once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from conftest import ingest_and_stage
from fake_openai import FakeOpenAI
from orch_assets.governance.checks import prompts_hold_no_personal_data
from resources import LlmResource, StateStore
from revorch.agents import runtime
from revorch.agents.config import Budget, LlmWhen, load_agents_config
from revorch.agents.llm import strict_json_schema, worst_case_prompt_tokens
from revorch.agents.models import offline_tier
from revorch.agents.redact import (
    KINDS,
    KnownNames,
    personal_data_in,
    personal_data_in_record,
    pseudonymise,
    record_in_prompt,
    redact,
    restore,
)
from revorch.agents.registry import INPUTS, OUTPUTS, agent_specs
from revorch.agents.runtime import keep_open, run_agent, worst_case_cost

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load_agents_config()
# Rate limits are not under test here.
FAST = CONFIG.model_copy(
    update={
        "limits": CONFIG.limits.model_copy(
            update={"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000}
        )
    }
)

# What free text adds, by the placeholder kind it must become.
PATTERNS = {
    "EMAIL": (
        "rosa.vega@lumen-mail.example",
        "jane dot doe at acme dot com",
        "omar[at]tallbird.example",
        "li (at) harbor (dot) example",
    ),
    "PHONE": (
        "030/12345678",
        "555-0199",
        "+49 30 12345678",
        "+1 (415) 555-0134",
        "+44 20 7946 0958",
    ),
    "IBAN": ("DE89370400440532013000", "GB82 WEST 1234 5698 7654 32"),
    "CARD": ("4111 1111 1111 1111", "5500-0000-0000-0004"),
    "NATIONAL_ID": ("536-22-8814", "AB123456C"),
    "IP": ("203.0.113.42",),
}
PLANTED_PATTERNS = [(kind, value) for kind, values in PATTERNS.items() for value in values]


# -- the recognizers, one value at a time -------------------------------------------------------


@pytest.mark.parametrize(("kind", "value"), PLANTED_PATTERNS, ids=lambda v: str(v))
def test_each_kind_of_personal_data_in_free_text_becomes_a_placeholder(kind, value):
    record = {"id": "t-1", "body": f"Hi, please use {value} for this. Thanks!"}
    sent, originals = pseudonymise(record)
    assert value not in json.dumps(sent)
    assert sent["body"] == f"Hi, please use <{kind}_1> for this. Thanks!"
    assert restore(sent, originals) == record
    assert personal_data_in(record["body"]) == [kind]


def test_numbers_dates_and_ordinary_text_are_not_personal_data():
    record = {
        "id": "c-0123456",
        "company_id": "co-012345",
        "annual_revenue": 110986000.0,
        "employees": 1250,
        "amount": "110986000.0",
        "end_date": "2026-11-03",
        "recent_activity": ["2026-10-31 email_replied: Re: pricing at checkout. Please call"],
        "body": "Order 12345 of 2026-11-03 failed at 10:30; 3 of 40 seats, version 4.2.1, "
        "see c-0123456.",
        "job_title": "VP of Sales",
    }
    assert personal_data_in_record(record) == []
    assert redact(record) == record


def test_names_the_crm_holds_are_replaced_wherever_they_stand():
    known = KnownNames.of(
        people=["Dana", "Whitfield", "Dana Whitfield", "Long", "Jo"],
        companies=["North Blue Labs", "northbluelabs.io"],
    )
    record = {
        "company_name": "North Blue Labs",
        "body": "Dana Whitfield of north blue labs (northbluelabs.io) had a long call with "
        "WHITFIELD and Long; Jo joined.",
    }
    sent, originals = pseudonymise(record, known)
    assert sent == {
        "company_name": "<COMPANY_1>",
        "body": "<PERSON_1> of <COMPANY_1> (<COMPANY_2>) had a long call with <PERSON_2> and "
        "<PERSON_3>; Jo joined.",  # one lower-case word, or two letters, is no name here
    }
    assert restore(sent, originals)["body"].startswith("Dana Whitfield of North Blue Labs")
    assert pseudonymise(record, known) == (sent, originals)  # stable
    assert personal_data_in_record(sent, known) == []
    assert personal_data_in_record(record, known) == ["COMPANY", "PERSON"]


def test_redaction_needs_no_network_and_startup_does_not_import_it():
    """Presidio pulls in spaCy (seconds to import) and tldextract (which fetches the public
    suffix list on first use): neither is imported by the definitions, and redaction works
    with every connection refused."""
    script = textwrap.dedent(
        """
        import socket, sys
        import revorch.definitions
        assert "presidio_analyzer" not in sys.modules and "spacy" not in sys.modules

        def refuse(*args, **kwargs):
            raise OSError("network use")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from revorch.agents.redact import redact
        sent = redact({"body": "write to rosa.vega@lumen-mail.example or 030/12345678"})
        print(sent["body"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "write to <EMAIL_1> or <PHONE_1>"


# -- budgets that are true bounds ---------------------------------------------------------------

CJK = "顧客データの移行が失敗しました请尽快处理這個問題데이터가손실되었습니다"
EMOJI = "🚨🔥💳📞🧾👩🏽‍💻🏳️‍🌈"
TICKET_AGENT = "ticket_triage"


def _huge_tickets(n: int, alphabets: tuple[str, ...] = (CJK, EMOJI, CJK + EMOJI)) -> list[dict]:
    """Open tickets whose subject and body are 80,000 characters of CJK, emoji, or both."""
    tickets = []
    for i in range(n):
        alphabet = alphabets[i % len(alphabets)]
        text = alphabet * (80_000 // len(alphabet) + 1)
        tickets.append(
            {
                "id": f"t-huge-{i}",
                "subject": text[:200],
                "body": text[:80_000],
                "crm_category": "other",
                "priority": "high",
                "status": "new",
                "created_at": "2026-11-01T10:00:00+00:00",
                "company_id": None,
                "contact_id": None,
                "company_name": None,
                "tier": "smb",
                "active_arr": 1000.0,
            }
        )
    return tickets


def _ticket_settings(per_run: float, per_day: float):
    return FAST.agents[TICKET_AGENT].model_copy(
        update={
            "llm_when": LlmWhen(value_field="active_arr", value_at_least=0),
            "budget": Budget(per_run_usd=per_run, per_day_usd=per_day),
        }
    )


def test_the_worst_case_bounds_a_byte_level_tokenizer_for_cjk_and_emoji(conn):
    spec = agent_specs(offline_tier(conn))[TICKET_AGENT]
    items = _huge_tickets(6)
    worst = [worst_case_cost(spec, FAST.agents[TICKET_AGENT], FAST, redact(i)) for i in items]
    # Room for two calls at their worst case, not three.
    settings = _ticket_settings(per_run=worst[0] + worst[1] + min(worst) / 2, per_day=10)
    with FakeOpenAI(worst_case_usage=True) as server:
        llm = LlmResource(base_url=server.base_url, api_key="k")
        with llm.client(FAST, settings.model) as client:
            report = run_agent(
                keep_open(conn), spec, FAST, items, llm=client, run_id="huge", settings=settings
            )
        bodies = [r["body"] for r in server.received]
    assert report.calls == 2 and report.fallbacks["budget_exhausted"] == 4
    rows = conn.execute(
        "SELECT entity_id, prompt_tokens, completion_tokens, cost_usd FROM agents.decisions "
        "WHERE tier = 'llm' ORDER BY entity_id"
    ).fetchall()
    by_id = {item["id"]: w for item, w in zip(items, worst, strict=True)}
    for entity_id, prompt_tokens, completion_tokens, cost in rows:
        assert prompt_tokens > 80_000 * 2  # far more tokens than characters: a true worst case
        assert completion_tokens == runtime.MAX_COMPLETION_TOKENS
        assert cost <= by_id[entity_id]
    schema = strict_json_schema(OUTPUTS[TICKET_AGENT])
    billed = {entity_id: prompt_tokens for entity_id, prompt_tokens, _, _ in rows}
    assert len(bodies) == len(billed)
    for body in bodies:
        entity_id = record_in_prompt(body["messages"])["id"]
        assert worst_case_prompt_tokens(body["messages"], schema) >= billed[entity_id]
    ledger = conn.execute("SELECT sum(cost_usd) FROM agents.cost_ledger").fetchone()[0]
    assert ledger == pytest.approx(report.cost_usd) and ledger <= settings.budget.per_run_usd
    assert conn.execute("SELECT count(*) FROM agents.budget_reservations").fetchone()[0] == 0


def test_two_runs_at_once_stay_within_the_day_budget_with_cjk_and_emoji(tmp_path):
    store = StateStore(database=str(tmp_path / "revorch.duckdb"))
    with store.get_connection() as conn:
        spec = agent_specs(offline_tier(conn))[TICKET_AGENT]
    items = _huge_tickets(8, alphabets=(CJK + EMOJI,))  # alike: the same worst case each
    worst = max(worst_case_cost(spec, FAST.agents[TICKET_AGENT], FAST, redact(i)) for i in items)
    settings = _ticket_settings(per_run=10, per_day=3.5 * worst)
    reports = {}
    with FakeOpenAI(worst_case_usage=True, latency_seconds=0.2) as server:
        llm = LlmResource(base_url=server.base_url, api_key="k")

        def run(name: str, batch: list[dict]) -> None:
            with llm.client(FAST, settings.model) as client:
                reports[name] = run_agent(
                    store.get_connection,
                    spec,
                    FAST,
                    batch,
                    llm=client,
                    run_id=name,
                    settings=settings,
                )

        threads = [
            threading.Thread(target=run, args=(name, batch))
            for name, batch in (("run-a", items[:4]), ("run-b", items[4:]))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert set(reports) == {"run-a", "run-b"}
    assert sum(r.calls for r in reports.values()) == 3
    with store.get_connection() as conn:
        spent = conn.execute("SELECT sum(cost_usd) FROM agents.cost_ledger").fetchone()[0]
        left = conn.execute("SELECT count(*) FROM agents.budget_reservations").fetchone()[0]
    assert 0 < spent <= settings.budget.per_day_usd and left == 0


# -- planted personal data over the whole pipeline ----------------------------------------------

# The free-text fields each agent reads (revorch/agents/offline/inputs.py), and a numeric field
# every input of the agent has, so that `value_at_least=0` sends every planted record.
ALWAYS_SET = {
    "ticket_triage": "active_arr",
    "lead_qualification": "touches_total",
    "deal_risk": "deal_touches",
    "renewal_risk": "arr",
    "onboarding_plan": "open_tickets",
}


def _names(conn: duckdb.DuckDBPyConnection, company_id: str) -> dict[str, str]:
    """People and a company the CRM holds that are not of ``company_id``: a contact of another
    company, an owner (a sales rep or CSM), and another company's name."""
    contact, company = conn.execute(
        "SELECT c.first_name || ' ' || c.last_name, co.name FROM contacts AS c "
        "JOIN companies AS co ON co.id = c.company_id WHERE c.company_id <> ? "
        "ORDER BY c.id LIMIT 1",
        [company_id],
    ).fetchone()
    owner = conn.execute(
        "SELECT first_name || ' ' || last_name FROM owners ORDER BY id LIMIT 1"
    ).fetchone()[0]
    return {"contact": contact, "owner": owner, "company": company}


def _pii_text(names: dict[str, str]) -> str:
    """Free text that carries every kind of personal data at once."""
    values = [value for _, value in PLANTED_PATTERNS]
    return (
        f"Please loop in {names['contact']} and our rep {names['owner']} "
        f"({names['company']} asked too). Reach me at " + "; ".join(values) + "."
    )


def _plant(conn: duckdb.DuckDBPyConnection) -> tuple[list[dict], dict[str, list[str]], dict]:
    """Landing-zone events that put personal data in every free-text field an agent reads,
    one record per field; the ids per agent; and the planted values by field."""
    at = conn.execute("SELECT data_clock() + INTERVAL 1 MINUTE").fetchone()[0]
    at = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    events: list[dict] = []
    ids: dict[str, list[str]] = {agent: [] for agent in ALWAYS_SET}
    planted: dict[str, str] = {}

    def upsert(kind: str, object_id: str, field: str, **properties) -> None:
        events.append(
            {
                "event_id": f"pii:{kind}:{object_id}:{field}",
                "object_type": kind,
                "object_id": object_id,
                "occurred_at": at,
                "op": "upsert",
                "properties": properties,
            }
        )

    used: set[str] = set()

    def fresh(rows: list[dict]) -> dict:
        row = next(r for r in rows if r.get("company_id") and r["company_id"] not in used)
        used.add(row["company_id"])
        return row

    # Deals: the deal's name and its contact's job title (deal_risk).
    deals = INPUTS["deal_risk"](conn)
    for field in ("name", "job_title"):
        deal = fresh(deals)
        text = _pii_text(_names(conn, deal["company_id"]))
        if field == "name":
            upsert("deal", deal["id"], field, name=text)
        else:
            upsert("contact", deal["contact_id"], field, job_title=text)
        ids["deal_risk"].append(deal["id"])
        planted[f"deal {field}"] = text

    # Renewals: the company's name (renewal_risk).
    renewal = fresh(INPUTS["renewal_risk"](conn))
    text = _pii_text(_names(conn, renewal["company_id"]))
    upsert("company", renewal["company_id"], "name", name=text)
    ids["renewal_risk"].append(renewal["id"])
    planted["company name"] = text

    # Onboardings: a deal won now starts one; its champion's job title (onboarding_plan).
    prospects = conn.execute(
        "SELECT company_id, id AS contact_id FROM contacts WHERE company_id IS NOT NULL "
        "AND company_id NOT IN (SELECT company_id FROM subscriptions) ORDER BY id"
    ).fetchall()
    company_id, champion = next(row for row in prospects if row[0] not in used)
    used.add(company_id)
    text = _pii_text(_names(conn, company_id))
    upsert(
        "deal",
        "d-pii-won",
        "won",
        company_id=company_id,
        contact_id=champion,
        name="New business",
        deal_type="new_business",
        stage="closedwon",
        amount=50_000.0,
        close_date=at[:10],
        closed_at=at,
        created_at=at,
    )
    upsert("contact", champion, "champion", job_title=text)
    ids["onboarding_plan"].append("d-pii-won")
    planted["champion title"] = text

    # Leads: an email's subject, a visited page and the job title (lead_qualification).
    leads = INPUTS["lead_qualification"](conn)
    for field in ("activity subject", "activity url", "job_title"):
        lead = fresh(leads)
        text = _pii_text(_names(conn, lead["company_id"]))
        if field == "job_title":
            upsert("contact", lead["id"], field, job_title=text)
        else:
            kind = "email_replied" if field == "activity subject" else "web_visit"
            content = {"subject": text} if kind == "email_replied" else {"url": f"/contact?{text}"}
            upsert(
                "activity",
                f"act-pii-{lead['id']}",
                field,
                activity_type=kind,
                contact_id=lead["id"],
                company_id=lead["company_id"],
                activity_at=at,
                **content,
            )
        ids["lead_qualification"].append(lead["id"])
        planted[f"lead {field}"] = text

    # Tickets: subject and body (ticket_triage), from a paying customer's contact.
    customers = conn.execute(
        "SELECT co.id, c.id FROM companies AS co JOIN contacts AS c ON c.company_id = co.id "
        "JOIN subscriptions AS s ON s.company_id = co.id AND s.status = 'active' "
        "ORDER BY co.id, c.id"
    ).fetchall()
    customer = next(row for row in customers if row[0] not in used)
    text = _pii_text(_names(conn, customer[0]))
    for field in ("subject", "body"):
        ticket = f"t-pii-{field}"
        other = "body" if field == "subject" else "subject"
        upsert(
            "ticket",
            ticket,
            field,
            company_id=customer[0],
            contact_id=customer[1],
            status="new",
            priority="high",
            category="other",
            created_at=at,
            **{field: text, other: "Question about our account"},
        )
        ids["ticket_triage"].append(ticket)
        planted[f"tickets.{field}"] = text
    return events, ids, planted


def _run_agents(conn, ids: dict[str, list[str]], run_id: str) -> list[dict]:
    """Each agent over its planted records with the LLM tier on a server on 127.0.0.1;
    the request bodies the server received."""
    specs = agent_specs(offline_tier(conn))
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="k")
        for agent, entity_ids in ids.items():
            settings = FAST.agents[agent].model_copy(
                update={"llm_when": LlmWhen(value_field=ALWAYS_SET[agent], value_at_least=0)}
            )
            items = INPUTS[agent](conn, entity_ids)
            assert sorted(i["id"] for i in items) == sorted(entity_ids), agent
            with llm.client(FAST, settings.model) as client:
                report = run_agent(
                    keep_open(conn),
                    specs[agent],
                    FAST,
                    items,
                    llm=client,
                    run_id=run_id,
                    settings=settings,
                )
            assert report.calls == len(entity_ids), agent
        return [r["body"] for r in server.received]


def _values(planted: dict[str, str]) -> set[str]:
    """Every planted value: the pattern values and the names in the planted texts."""
    values = {value for _, value in PLANTED_PATTERNS}
    for text in planted.values():
        found = re.search(r"loop in (.+?) and our rep (.+?) \((.+?) asked too\)", text)
        values.update(found.groups())
    return values


def _check(path: Path) -> dict[str, dg.AssetCheckResult]:
    # The state store as the runs pick it: on DuckLake (``state_backend``) this test's lake.
    store = StateStore.configured(path)
    return {r.asset_key.path[-1]: r for r in prompts_hold_no_personal_data(state_store=store)}


@pytest.fixture
def planted_crm(copy_crm):
    """The shared simulated CRM (after its stages) with personal data planted through the
    landing zone in every free-text field the agents read, ingested and staged."""
    home = copy_crm("stages")
    conn = home.connect()
    events, ids, planted = _plant(conn)
    home.landing.write_events("pii", events)
    conn.close()
    landed = ingest_and_stage(home.database, home.landing)["crm/change_log"]
    assert landed["loaded"] == len(events) and landed["quarantined"] == 0
    conn = home.connect()
    yield home, conn, ids, planted
    conn.close()


def test_no_planted_personal_data_reaches_the_model_and_the_check_agrees(planted_crm, monkeypatch):
    home, conn, ids, planted = planted_crm
    values = _values(planted)

    bodies = _run_agents(conn, ids, "redacted")
    assert len(bodies) == sum(len(v) for v in ids.values())
    inputs = "\n".join(
        t for (t,) in conn.execute("SELECT CAST(input AS VARCHAR) FROM agents.decisions").fetchall()
    )
    for field, text in planted.items():  # the data was in every agent's input, to leak
        assert json.dumps(text, ensure_ascii=False)[1:-1] in inputs or text in inputs, field
    sent = [json.dumps(body, ensure_ascii=False) for body in bodies]
    sent += [m["content"] for body in bodies for m in body["messages"]]
    leaked = sorted(v for v in values if any(v in text for text in sent))
    assert leaked == [], f"sent to the model: {leaked}"

    conn.close()
    results = _check(home.database)
    assert all(r.passed for r in results.values()), {
        agent: r.metadata["sample"] for agent, r in results.items() if not r.passed
    }
    assert all(r.metadata["prompts_checked"].value >= 1 for r in results.values())

    # Redaction bypassed: the same records go out whole, and the check finds every kind in
    # every planted record.
    conn = home.connect()
    conn.execute("DELETE FROM agents.decisions")
    monkeypatch.setattr(runtime, "redact", lambda record, known=None: record)
    bodies = _run_agents(conn, ids, "bypassed")
    sent = "\n".join(json.dumps(body, ensure_ascii=False) for body in bodies)
    assert all(v in sent for v in values)
    conn.close()
    results = _check(home.database)
    for agent, entity_ids in ids.items():
        result = results[agent]
        assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR, agent
        leaks = result.metadata["sample"].value
        assert sorted(leak["entity_id"] for leak in leaks) == sorted(entity_ids), agent
        for leak in leaks:
            assert set(leak["found"]) == set(KINDS), (agent, leak)


def test_a_stored_prompt_with_personal_data_fails_the_run(copy_crm, monkeypatch):
    """The check is blocking: materializing the agents with a leaking prompt in the record
    fails the run, and says which decision leaked what."""
    home = copy_crm("decided")
    conn = home.connect()
    decision_id = conn.execute(
        "SELECT decision_id FROM agents.decisions WHERE agent = 'renewal_risk' LIMIT 1"
    ).fetchone()[0]
    leak = '<record>\n{"id": "x", "note": "write to jane dot doe at acme dot com"}\n</record>'
    conn.execute(
        "UPDATE agents.decisions SET prompt = ? WHERE decision_id = ?",
        [json.dumps([{"role": "user", "content": leak}]), decision_id],
    )
    conn.close()
    from resources import default_resources
    from revorch.definitions import defs

    for name in ("REVORCH_DB", "REVORCH_LLM_BASE_URL", "OPENAI_API_KEY", "REVORCH_CLOCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REVORCH_HOME", str(home.root))
    agents = [
        key
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        if key.path[0] == "agents" and key.path[-1] in ALWAYS_SET
    ]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=dg.AssetSelection.assets(*agents),
            resources=default_resources(),
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    evaluations = {
        e.asset_key.path[-1]: e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "prompts_hold_no_personal_data"
    }
    assert set(evaluations) == set(ALWAYS_SET)
    failed = {agent for agent, e in evaluations.items() if not e.passed}
    assert failed == {"renewal_risk"}
    sample = evaluations["renewal_risk"].metadata["sample"].value
    assert sample == [
        {"decision_id": decision_id, "entity_id": sample[0]["entity_id"], "found": ["EMAIL"]}
    ]


@pytest.mark.timeout(300)  # a hang guard: unbounded email patterns took most of an hour here
def test_text_written_to_make_the_patterns_backtrack_is_redacted_all_the_same():
    texts = {
        "labels": "a." * 40_000 + "@",
        "spelled dots": "x" + " dot" * 20_000 + " at y",
        "at and dots": "a at b" + " dot c" * 13_000 + " dot 1",
    }
    for name, text in texts.items():
        assert redact({"body": text + " rosa.vega@lumen-mail.example"})["body"].endswith(
            " <EMAIL_1>"
        ), name
