"""The web UI in Debian's Chromium (Playwright for Python, system browser) against a real
``metawsm serve`` with its own Redis namespace.

* the board is served at ``/`` and a question asked through the CLI appears within one second,
  without a reload; it is answered from the board in two clicks and the API shows ``answered``;
* filters, text search and the viewer's queues (viewer name kept in the browser);
* a refused transition shows the API's own sentence next to the action, inputs kept.  The UI
  only offers the transitions the state machine allows from the state it knows, so the refusal
  is produced the way it happens for real: another client closes the thread while this page's
  stream is delayed (the test holds the WebSocket frames back), so the page still shows ``new``;
* the page survives ``kill -9`` of the daemon and a restart on the same port: a "disconnected —
  reconnecting" banner meanwhile, a reconnect from its last cursor that brings what was written
  while it was away (no gap), and no post shown twice (post elements counted against the API);
* runs and system views render what the API has (no runs yet: an empty state, not an error);
* screenshots of the board and a thread page at 1280x800 (plus the board at phone width) go to
  ``test-artifacts/screenshots/``; the folder is printed in the test output.

No sleeps: every wait is Playwright's deadline-based ``expect``/``wait_for`` or ``wait_until``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from metawsm.waiting import wait_until
from support.browser import DESKTOP, SCREENSHOTS, VIEWER, announce, launched_chromium, log_in, record_page_problems
from support.http import auth_headers

pytestmark = pytest.mark.browser  # `make test BROWSER=0` deselects these

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
expect = sync_api.expect

PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=10_000)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_chromium(sync_api)


@dataclass
class Ui:
    page: Any
    url: str
    external: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, fragment: str = "") -> None:
        self.page.goto(self.url + "/" + fragment)
        expect(self.page.locator("#live-status")).to_have_text("live")

    def assert_clean(self) -> None:
        assert not self.external, f"the page made requests outside the daemon: {self.external}"
        assert not self.errors, f"JavaScript errors on the page: {self.errors}"


@pytest.fixture
def ui(browser: Any, serve_process: Any) -> Iterator[Ui]:
    context = browser.new_context(viewport=DESKTOP)
    # The viewer's name is kept in the browser (localStorage); set it before the page runs.
    context.add_init_script(f"try {{ if (!localStorage.getItem('metawsm.viewer')) "
                            f"localStorage.setItem('metawsm.viewer', {json.dumps(VIEWER)}); }} catch (e) {{}}")
    page = context.new_page()
    log_in(page, serve_process.url)
    state = Ui(page, serve_process.url)
    record_page_problems(page, serve_process.url, state.external, state.errors)
    try:
        yield state
    finally:
        context.close()


# -- talking to the daemon like another client would ------------------------------------------------


def cli(url: str, *args: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "metawsm", "forum", *args, "--server", url, "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv} failed: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def ask(url: str, ticket: str, title: str, body: str = "What now?", **options: str) -> dict[str, Any]:
    args = ["ask", "--ticket", ticket, "--title", title, "--body", body]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", value]
    return cli(url, *args)["thread"]


def call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, method=method, data=data,
                                     headers={"Content-Type": "application/json", **auth_headers(url)})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def guidance_request(url: str, run_id: str, ticket: str, agent: str, question: str) -> dict[str, Any]:
    """An agent's guidance question: a control signal on its (run, agent) control thread."""
    status, body = call(url, "POST", "/api/v1/forum/control/signal", {
        "run_id": run_id, "ticket": ticket, "agent_name": agent, "actor_type": "agent", "actor_name": agent,
        "payload": {"schema_version": 1, "control_type": "guidance_request", "run_id": run_id,
                    "agent_name": agent, "question": question}})
    assert status == 200, body
    return body["thread"]


def detail(url: str, thread_id: str) -> dict[str, Any]:
    status, body = call(url, "GET", f"/api/v1/forum/threads/{thread_id}")
    assert status == 200, body
    return body


def card(page: Any, thread_id: str, group: str = "") -> Any:
    scope = f".column-{group} " if group else ""
    return page.locator(f'{scope}.card[data-thread-id="{thread_id}"]')


def new_ticket() -> str:
    return f"UI-{uuid.uuid4().hex[:6]}"


# -- tests ------------------------------------------------------------------------------------------


def test_a_cli_question_appears_within_a_second_and_is_answered_in_two_clicks(ui: Ui) -> None:
    page = ui.page
    ui.open()
    expect(page).to_have_title("metawsm")
    expect(page.locator(".column-new h2")).to_contain_text("New")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    ticket = new_ticket()
    thread = ask(ui.url, ticket, "Which database for the cache?", "Postgres or SQLite?",
                 run_id="run-ui-1", agent="builder", priority="high")
    asked_at = time.monotonic()
    fresh = card(page, thread["thread_id"], "new")
    expect(fresh).to_be_visible(timeout=1000)  # the bar: visible within one second
    shown_after = time.monotonic() - asked_at
    assert shown_after < 1.0, shown_after
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    for text in (ticket, "run-ui-1", "builder", "high", "unseen", "unanswered"):
        expect(fresh).to_contain_text(text)

    # Two clicks: "Answer" opens the box on the card, "Send answer" sends it.
    fresh.get_by_role("button", name="Answer", exact=True).click()
    box = fresh.get_by_label("Your answer to")
    expect(box).to_be_focused()
    box.fill("SQLite: the cache is local.")
    fresh.get_by_role("button", name="Send answer").click()

    wait_until(lambda: detail(ui.url, thread["thread_id"])["thread"]["state"] == "answered", timeout=10,
               message="the API never showed the thread answered")
    body = detail(ui.url, thread["thread_id"])
    last = body["posts"][-1]
    assert (last["body"], last["author_type"], last["author_name"]) == ("SQLite: the cache is local.", "human", VIEWER)
    expect(card(page, thread["thread_id"], "answered")).to_be_visible()
    expect(card(page, thread["thread_id"], "new")).to_have_count(0)

    # The same with the keyboard only, with a visible focus ring on the way.
    second = ask(ui.url, ticket, "May I bump the lock file?", "Two minor upgrades.", agent="builder")
    other = card(page, second["thread_id"], "new")
    expect(other).to_be_visible(timeout=1000)
    other.get_by_role("link", name="May I bump the lock file?").focus()
    page.keyboard.press("Tab")
    expect(other.get_by_role("button", name="Answer", exact=True)).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    expect(other.get_by_label("Your answer to")).to_be_focused()
    page.keyboard.type("Yes, go ahead.")
    page.keyboard.press("Tab")
    expect(other.get_by_role("button", name="Send answer")).to_be_focused()
    page.keyboard.press("Enter")
    wait_until(lambda: detail(ui.url, second["thread_id"])["thread"]["state"] == "answered", timeout=10,
               message="the keyboard answer never reached the API")
    expect(card(page, second["thread_id"], "answered")).to_be_visible()
    ui.assert_clean()


def test_filters_search_and_queues_of_the_viewer(ui: Ui) -> None:
    page = ui.page
    ticket_a, ticket_b = new_ticket(), new_ticket()
    agent_q = ask(ui.url, ticket_a, "Flaky stream test", "fails one run in twenty", run_id="run-f", agent="tester")
    human_q = ask(ui.url, ticket_b, "Rename the package?", "metawsm or mwsm", actor_type="human",
                  actor_name="bob", priority="urgent")
    control = guidance_request(ui.url, "run-f", ticket_a, "tester", "May I skip the flaky test?")
    ui.open()
    expect(card(page, agent_q["thread_id"])).to_be_visible()
    expect(card(page, human_q["thread_id"])).to_be_visible()
    expect(card(page, control["thread_id"])).to_contain_text("control")

    page.get_by_label("Type").select_option("control")
    expect(card(page, control["thread_id"])).to_be_visible()
    expect(card(page, agent_q["thread_id"])).to_have_count(0)
    page.get_by_label("Type").select_option("question")
    expect(card(page, control["thread_id"])).to_have_count(0)
    expect(card(page, agent_q["thread_id"])).to_be_visible()
    page.get_by_role("button", name="Clear").click()

    # The viewer's name is kept in the browser across reloads.
    expect(page.get_by_label("You are")).to_have_value(VIEWER)
    page.get_by_label("You are").fill("carol")
    page.get_by_label("You are").press("Enter")
    page.reload()
    expect(page.get_by_label("You are")).to_have_value("carol")
    assert page.evaluate("localStorage.getItem('metawsm.viewer')") == "carol"

    page.get_by_label("Ticket").fill(ticket_b)
    expect(card(page, agent_q["thread_id"])).to_have_count(0)
    expect(card(page, human_q["thread_id"])).to_be_visible()
    page.get_by_role("button", name="Clear").click()

    page.get_by_label("Priority").select_option("urgent")
    expect(card(page, agent_q["thread_id"])).to_have_count(0)
    expect(card(page, human_q["thread_id"])).to_be_visible()
    page.get_by_label("Priority").select_option("")

    page.get_by_label("Run").fill("run-f")
    expect(card(page, human_q["thread_id"])).to_have_count(0)
    expect(card(page, agent_q["thread_id"])).to_be_visible()
    page.get_by_role("button", name="Clear").click()

    page.get_by_role("searchbox", name="Search").fill("twenty")  # in the post body, not the title
    expect(card(page, human_q["thread_id"])).to_have_count(0)
    expect(card(page, agent_q["thread_id"])).to_be_visible()
    page.get_by_role("button", name="Clear").click()

    # "Unanswered": the agent's question needs an answer; the human's does not.
    page.get_by_role("button", name="Unanswered").click()
    expect(card(page, human_q["thread_id"])).to_have_count(0)
    expect(card(page, agent_q["thread_id"])).to_be_visible()
    # "Unseen by me": both are unseen by carol until she opens one.
    page.get_by_role("button", name="Unseen by me").click()
    expect(card(page, human_q["thread_id"])).to_be_visible()
    page.get_by_role("link", name="Rename the package?").click()
    expect(page.locator(".thread-head h1")).to_have_text("Rename the package?")
    wait_until(lambda: not _flags(ui.url, human_q["thread_id"], "carol")["is_unseen"], timeout=10,
               message="opening the thread did not record carol's seen marker")
    page.get_by_role("link", name="← Board").click()
    expect(card(page, agent_q["thread_id"])).to_be_visible()
    expect(card(page, human_q["thread_id"])).to_have_count(0)
    ui.assert_clean()


def _flags(url: str, thread_id: str, viewer: str) -> dict[str, Any]:
    status, body = call(url, "GET", f"/api/v1/forum/threads/{thread_id}?viewer_type=human&viewer_id={viewer}")
    assert status == 200, body
    return body["thread"]


def test_a_refused_transition_shows_the_api_message_and_keeps_the_inputs(ui: Ui, serve_process: Any) -> None:
    page = ui.page
    held: list[Any] = []
    gate = {"hold": False}
    sockets: list[Any] = []

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_server(message: Any) -> None:
            if gate["hold"]:
                held.append(message)
            else:
                ws.send(message)

        server.on_message(from_server)
        sockets.append(ws)

    page.route_web_socket("**/api/v1/forum/stream*", route)
    thread = ask(ui.url, new_ticket(), "Ship on Friday?", "Release train question", agent="planner")
    ui.open(f"#/thread/{thread['thread_id']}")
    state_badge = page.locator('.thread-head [data-field="state"]')
    expect(state_badge).to_have_text("new")
    # Only the transitions the state machine allows from "new" are offered.
    choices = page.get_by_label("New state").locator("option")
    expect(choices).to_have_text(["triaged", "waiting for operator", "waiting for human", "answered", "closed"])

    # Another client closes the thread while this page's stream is delayed: the page still says "new".
    gate["hold"] = True
    cli(ui.url, "close", "--thread-id", thread["thread_id"], "--actor-name", "someone-else")
    status, refusal = call(ui.url, "POST", f"/api/v1/forum/threads/{thread['thread_id']}/state", {"to_state": "triaged"})
    assert status == 400, refusal
    expected = refusal["error"]["message"]
    assert expected == "forum state transition closed -> triaged is not allowed"
    expect(state_badge).to_have_text("new")

    page.get_by_label("New state").select_option("triaged")
    page.get_by_role("button", name="Change state").click()
    state_form = page.locator("form.action-state")
    expect(state_form.locator(".error")).to_have_text(expected)
    expect(page.get_by_label("New state")).to_have_value("triaged")  # the choice is kept

    # The same for a post: the server's sentence, and the text stays in the box.
    post_box = page.get_by_label("Post (state unchanged)")
    post_box.fill("Let's ship it.")
    page.get_by_role("button", name="Post", exact=True).click()
    expect(page.locator("form.action-post .error")).to_have_text(f"forum thread {thread['thread_id']} is closed")
    expect(post_box).to_have_value("Let's ship it.")

    # The delayed frames arrive: the page catches up with the truth.
    gate["hold"] = False
    for message in held:
        sockets[-1].send(message)
    held.clear()
    expect(state_badge).to_have_text("closed")
    expect(page.get_by_label("New state")).to_be_disabled()
    expect(page.get_by_role("button", name="Change state")).to_be_disabled()
    assert detail(ui.url, thread["thread_id"])["thread"]["state"] == "closed"
    ui.assert_clean()


def test_the_page_recovers_after_the_daemon_is_killed_and_restarted(ui: Ui, serve_process: Any) -> None:
    page = ui.page
    gate = {"refuse": False}
    urls: list[str] = []

    def route(ws: Any) -> None:
        urls.append(ws.url)
        if gate["refuse"]:
            ws.close()  # as if the daemon were still unreachable
            return
        ws.connect_to_server()

    page.route_web_socket("**/api/v1/forum/stream*", route)
    thread = ask(ui.url, new_ticket(), "Can I force-push the branch?", "It is my own branch.", agent="builder")
    thread_id = thread["thread_id"]
    ui.open(f"#/thread/{thread_id}")
    posts = page.locator(".posts .post")
    expect(posts).to_have_count(1)
    cli(ui.url, "post", "--thread-id", thread_id, "--body", "before the crash", "--actor-name", "op")
    expect(posts).to_have_count(2)
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()

    gate["refuse"] = True
    serve_process.kill()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Disconnected — reconnecting")
    expect(page.locator("#live-status")).to_have_text("disconnected")

    serve_process.start()
    cli(ui.url, "post", "--thread-id", thread_id, "--body", "while the page was away", "--actor-name", "op")
    expect(banner).to_be_visible()  # the page has not reconnected yet ...
    expect(posts).to_have_count(2)  # ... so it cannot know about that post

    reconnects_before = len(urls)
    gate["refuse"] = False
    expect(banner).to_be_hidden(timeout=20_000)
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.get_by_text("while the page was away")).to_have_count(1)  # no gap
    assert len(urls) > reconnects_before
    assert "cursor=" in urls[-1], f"reconnected without its cursor: {urls[-1]}"

    cli(ui.url, "post", "--thread-id", thread_id, "--body", "after the restart", "--actor-name", "op")
    expect(page.get_by_text("after the restart")).to_have_count(1)

    api_posts = detail(ui.url, thread_id)["posts"]
    expect(posts).to_have_count(len(api_posts))  # no duplicate
    shown = page.locator(".posts .post").evaluate_all("items => items.map(li => li.dataset.postId)")
    assert shown == [p["post_id"] for p in api_posts]
    for text in ("It is my own branch.", "before the crash", "while the page was away", "after the restart"):
        expect(page.get_by_text(text, exact=True)).to_have_count(1)
    snapshot = page.evaluate("window.metawsm.snapshot()")
    assert snapshot["connects"] >= 2 and snapshot["status"] == "live", snapshot
    ui.assert_clean()


def test_runs_and_system_views(ui: Ui) -> None:
    page = ui.page
    ui.open("#/runs")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    # No run is hosted by the daemon yet: an empty state, not an error.
    expect(page.locator(".runs")).to_contain_text("No runs yet")
    expect(page.locator(".runs-page .error")).to_be_hidden()

    page.get_by_role("link", name="System").click()
    expect(page.locator('[data-field="health-status"]')).to_have_text("ok")
    for text in ("outbox pending", "lag thread_views", "restarts (total)"):
        expect(page.locator(".health")).to_contain_text(text)
    tree = page.locator("table.actor-tree")
    expect(tree.locator('tr[data-path="root"]')).to_be_visible()
    expect(tree.locator('tr[data-path="root/forum"]')).to_be_visible()
    expect(tree.locator("thead")).to_contain_text("restarts")
    expect(tree.locator("thead")).to_contain_text("mailbox")
    ui.assert_clean()


def test_screenshots_of_the_board_and_a_thread(ui: Ui, request: pytest.FixtureRequest) -> None:
    page, url = ui.page, ui.url
    ticket = new_ticket()
    main = ask(url, ticket, "Which database for the cache?", "Postgres or SQLite? The brief does not say.",
               run_id="run-demo", agent="builder", priority="high")
    ask(url, ticket, "Tests need Redis 7?", "The CI image has Redis 6.", run_id="run-demo", agent="tester")
    ask(url, new_ticket(), "Rename the package?", "metawsm or mwsm", actor_type="human", actor_name="bob",
        priority="low")
    triaged = ask(url, ticket, "Flaky stream test", "fails one run in twenty", run_id="run-demo", agent="tester",
                  priority="urgent")
    cli(url, "state", "--thread-id", triaged["thread_id"], "--state", "triaged")
    waiting = ask(url, new_ticket(), "Need a decision on the API version", "v1 or v2 path prefix?", agent="planner")
    cli(url, "state", "--thread-id", waiting["thread_id"], "--state", "waiting_human")
    answered = ask(url, ticket, "Is Python 3.11 enough?", "Or do we need 3.12?", run_id="run-demo", agent="builder")
    cli(url, "answer", "--thread-id", answered["thread_id"], "--body", "3.11 is enough.", "--actor-name", "ana")
    closed = ask(url, new_ticket(), "Old question", "Already settled.", agent="builder")
    cli(url, "close", "--thread-id", closed["thread_id"])
    status, _ = call(url, "POST", "/api/v1/forum/control/signal", {
        "run_id": "run-demo", "ticket": ticket, "agent_name": "builder", "actor_type": "agent",
        "payload": {"schema_version": 1, "control_type": "guidance_request", "run_id": "run-demo",
                    "agent_name": "builder", "question": "May I drop the legacy table?"}})
    assert status == 200
    cli(url, "post", "--thread-id", main["thread_id"], "--body", "Leaning to SQLite: one file, no server.",
        "--actor-name", "ana")
    cli(url, "post", "--thread-id", main["thread_id"], "--body", "Then the tests can run without Docker.",
        "--actor-type", "agent", "--actor-name", "builder")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui.open()
    for group, thread in (("triaged", triaged), ("waiting", waiting), ("answered", answered), ("new", main)):
        expect(card(page, thread["thread_id"], group)).to_be_visible()
    board_png = SCREENSHOTS / "board-1280x800.png"
    page.screenshot(path=str(board_png))

    page.get_by_role("link", name="Which database for the cache?").click()
    expect(page.locator(".posts .post")).to_have_count(3)
    page.get_by_label("Answer (moves the thread to answered)").fill("SQLite.")
    thread_png = SCREENSHOTS / "thread-1280x800.png"
    page.screenshot(path=str(thread_png))

    page.set_viewport_size(PHONE)
    page.get_by_role("link", name="← Board").click()
    expect(card(page, main["thread_id"])).to_be_visible()
    phone_png = SCREENSHOTS / "board-phone-390x844.png"
    page.screenshot(path=str(phone_png))
    # Readable at phone width: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    for png in (board_png, thread_png, phone_png):
        assert png.stat().st_size > 10_000, png
    announce(request, f"UI screenshots written to {SCREENSHOTS}: "
             f"{board_png.name}, {thread_png.name}, {phone_png.name}")
    ui.assert_clean()
