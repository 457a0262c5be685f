"""The web UI, round 2 (issue 18): a whole bootstrap run driven from the browser, in Debian's
Chromium (Playwright for Python) against a REAL ``metawsm serve``, a real git repository and a
real script agent in a real tmux session (tests/support/agents.py).

* the run is started from the runs view: a dry-run preview of the plan first, then Start; the
  run gets its tmux session;
* the board card of the agent's control thread shows the question itself (and the run's status);
* answering that card from the board sends the ``guidance_answer`` signal: the run is ``running``
  again in the API and on the card, without a reload, and the agent receives the answer;
* the thread page shows one timeline of posts and events, and a state change made with the CLI
  appears in it without a reload;
* the runs view shows the agent's attach command and a live tail of its pane, the changes of
  its workspace against the base branch (the agent's commits and a file the test writes, with
  added lines coloured), refuses a cleanup of the running run with the API's own sentence, and
  closes and cleans up the run once the agent is done;
* asking as a human from the Ask page: the API's validation error sits next to the field, and
  the thread opened (by a human) appears on the board live;
* restart (per agent), stop and resume from the runs view, each after a confirmation;
* queues (Assigned to me), the agent filter, the viewer type kept across reloads, the opt-in
  desktop notifications, and a control thread answered from its page (a guidance_answer);
* no JavaScript error and no console error (beyond the browser's own log line for a refused
  request the test provokes), no request outside the daemon;
* screenshots of each view at 1280x800 and 390x844 in ``test-artifacts/screenshots/``.

No sleeps: every wait is Playwright's ``expect`` or :func:`metawsm.waiting.wait_until`.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metawsm.waiting import wait_until
from support.agents import BRIEF, RunsEnv
from support.browser import DESKTOP, SCREENSHOTS, VIEWER, announce, launched_chromium, log_in, record_page_problems

pytestmark = pytest.mark.browser  # `make test BROWSER=0` deselects these

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
expect = sync_api.expect
expect.set_options(timeout=15_000)

PHONE = {"width": 390, "height": 844}
QUESTION = "Which database should I use?"
CONTEXT = "postgres or sqlite"
ANSWER = "Use SQLite"

# Works, asks, waits for the answer, applies it, keeps running until the test lets it finish
# (the flag file), then signals completion and a passed validation, and stays up.
AGENT = """
commit notes.txt "first step" "agent: first step"
signal --type guidance_request --question "{question}" --context "{context}"
say "asked for guidance"
answer=$(wait_answer)
say "got answer: $answer"
commit decision.txt "$answer" "agent: apply the decision"
say "applied the decision; still working"
while [ ! -f {flag} ]; do sleep 0.1; done
signal --type completion --summary "Implemented with $answer"
signal --type validation --status passed --done-criteria "{done}"
say "completion and validation posted"
exec sleep 600
"""

# The browser logs every refused request ("Failed to load resource: ... status of 409") as a
# console error by itself; the test provokes exactly those refusals on purpose.
EXPECTED_REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status of (400|409)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_chromium(sync_api)


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    return tmp_path / "finish.flag"


@pytest.fixture
def env(runs_env: Callable[..., RunsEnv], flag: Path) -> Iterator[RunsEnv]:
    started = runs_env(agent=AGENT, question=QUESTION, context=CONTEXT, flag=str(flag), done=BRIEF["done_criteria"])
    try:
        yield started
    finally:
        started.close()
        gone = subprocess.run(["tmux", "-L", started.socket, "ls"], capture_output=True, text=True, timeout=10)
        assert gone.returncode != 0, f"tmux server {started.socket} still running: {gone.stdout}"


class Problems:
    def __init__(self) -> None:
        self.external: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        self.expected: list[re.Pattern[str]] = [EXPECTED_REFUSAL]

    def check(self) -> None:
        assert not self.external, f"the page made requests outside the daemon: {self.external}"
        assert not self.errors, f"JavaScript errors on the page: {self.errors}"
        unexpected = [text for text in self.console if not any(p.match(text) for p in self.expected)]
        assert not unexpected, f"console errors: {unexpected}"


@pytest.fixture
def problems() -> Problems:
    return Problems()


@pytest.fixture
def page(browser: Any, env: RunsEnv, problems: Problems) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(f"try {{ localStorage.setItem('metawsm.viewer', {json.dumps(VIEWER)}); }} catch (e) {{}}")
    page = context.new_page()
    log_in(page, env.url)
    record_page_problems(page, env.url, problems.external, problems.errors)
    page.on("console", lambda message: problems.console.append(message.text) if message.type == "error" else None)
    try:
        yield page
        problems.check()
    finally:
        context.close()


def shoot(page: Any, name: str) -> Path:
    """The current view at 1280x800 and at 390x844 (phone), back to desktop afterwards."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    desktop = SCREENSHOTS / f"round2-{name}-1280x800.png"
    page.screenshot(path=str(desktop))
    page.set_viewport_size(PHONE)
    phone = SCREENSHOTS / f"round2-{name}-390x844.png"
    page.screenshot(path=str(phone))
    page.set_viewport_size(DESKTOP)
    assert desktop.stat().st_size > 5_000 and phone.stat().st_size > 5_000
    return desktop


def test_a_whole_bootstrap_from_the_browser(env: RunsEnv, page: Any, flag: Path,
                                            request: pytest.FixtureRequest) -> None:
    # -- start the bootstrap from the runs view: preview first, then start ---------------------------
    page.goto(env.url + "/#/runs")
    expect(page.locator("#live-status")).to_have_text("live")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.get_by_text("Start a run or bootstrap").click()
    form = page.locator("form.start-form")
    form.get_by_label("Mode").select_option("bootstrap")
    form.get_by_label("Tickets").fill("UI-18")
    form.get_by_label("Repositories").fill(env.repo_name)
    form.get_by_label("Directory (optional)").fill(str(env.repo))
    for label, key in (("Goal", "goal"), ("Scope", "scope"), ("Done criteria", "done_criteria"),
                       ("Constraints", "constraints"), ("Merge intent", "merge_intent")):
        form.get_by_label(label, exact=True).fill(BRIEF[key])
    qa = form.get_by_label("Questions and answers (optional)")
    qa.fill("Q: Which branch?")  # a question without its answer is refused next to the field
    form.get_by_role("button", name="Preview plan (dry run)").click()
    expect(form.locator("#start-qa-error")).to_contain_text("A: ")
    qa.fill("Q: Which branch?\nA: main")
    start = form.get_by_role("button", name="Start", exact=True)
    expect(start).to_be_disabled()  # no start before a preview
    form.get_by_role("button", name="Preview plan (dry run)").click()
    preview = form.locator(".plan-preview")
    expect(preview).to_contain_text("nothing started yet")
    expect(preview.locator(".plan-agents")).to_contain_text("agent in workspace")
    assert env.api("GET", "/api/v1/runs").data["runs"] == [], "a dry run must not create a run"
    preview.scroll_into_view_if_needed()
    shoot(page, "start-preview")
    expect(start).to_be_enabled()
    start.click()
    expect(form.locator(".note")).to_contain_text("Started run")
    [run] = env.api("GET", "/api/v1/runs").data["runs"]
    run_id = run["run_id"]
    assert run["brief"]["qa"] == [{"question": "Which branch?", "answer": "main"}]
    [agent] = run["agents"]
    session, workspace = agent["session"], agent["workspace"]
    wait_until(lambda: session in env.sessions(), timeout=20, message=f"tmux session {session}")
    snap = env.wait_status(run_id, "awaiting_guidance")
    [pending] = snap["pending_guidance"]
    thread_id = pending["thread_id"]

    card = page.locator(f'.run[data-run-id="{run_id}"]')
    expect(card.locator('[data-field="run-status"]')).to_have_text("awaiting_guidance")
    expect(card.locator('[data-field="attach"]')).to_have_text(f"tmux -L {env.socket} attach -t {session}")

    # -- the board: the question is on the card ------------------------------------------------------
    page.goto(env.url + "/#/")
    expect(page.locator("#live-status")).to_have_text("live")
    board_card = page.locator(f'.card[data-thread-id="{thread_id}"]')
    expect(board_card.locator('[data-field="question"]')).to_contain_text(f"agent asks: {QUESTION}")
    expect(board_card.locator('[data-field="question"]')).to_contain_text(CONTEXT)
    expect(board_card.locator('[data-field="run-status"]')).to_have_text("awaiting_guidance")
    expect(page).to_have_title("(1) metawsm")  # pending requests in the tab title
    shoot(page, "board")

    # -- answer from the board: the agent resumes (guidance_answer), live on the card -----------------
    board_card.get_by_role("button", name="Answer", exact=True).click()
    board_card.get_by_label("Your answer to agent’s question").fill(ANSWER)
    board_card.get_by_role("button", name="Send answer").click()
    env.wait_status(run_id, "running")
    expect(board_card.locator('[data-field="run-status"]')).to_have_text("running")
    expect(board_card.locator('[data-field="question"]')).to_have_count(0)
    expect(page).to_have_title("metawsm")
    detail = env.api("GET", f"/api/v1/forum/threads/{thread_id}").data
    answer_post = detail["posts"][-1]
    assert (answer_post["author_type"], answer_post["author_name"]) == ("operator", VIEWER)
    assert json.loads(answer_post["body"]) == {"schema_version": 1, "control_type": "guidance_answer",
                                               "run_id": run_id, "agent_name": "agent", "answer": ANSWER}
    branch = f"task/{workspace}"
    wait_until(lambda: _show(env, f"{branch}:decision.txt") == ANSWER, timeout=20,
               message="the agent never committed the answer it received")
    expect(board_card.locator('[data-field="excerpt"]')).to_contain_text(f"guidance answer: {ANSWER}")

    # -- the thread page: one timeline, live ------------------------------------------------------------
    page.goto(env.url + f"/#/thread/{thread_id}")
    expect(page.locator('.thread-head [data-field="run-status"]')).to_have_text("running")
    timeline = page.locator("ol.posts")
    expect(timeline.locator('[data-kind="signal-guidance_request"]')).to_contain_text(QUESTION)
    expect(timeline.locator('[data-kind="signal-guidance_answer"]')).to_contain_text(ANSWER)
    state = detail["thread"]["state"]
    target = "waiting_operator" if state == "waiting_human" else "waiting_human"
    changed = env.cli("forum", "state", "--thread-id", thread_id, "--state", target, "--actor-name", "cli-user")
    assert changed.returncode == 0, changed.stderr
    event = timeline.locator('.timeline-event[data-event-type="forum.state.changed"]').last
    expect(event).to_contain_text("cli-user")
    expect(event).to_contain_text(target.replace("_", " ").replace("waiting ", "waiting for "))
    expect(page.locator('[data-field="state"]')).to_have_text(target.replace("_", " ").replace("waiting ", "waiting for "))
    shoot(page, "thread")

    # -- the runs view: pane tail, changes, a refusal, then close and clean up ---------------------------
    page.goto(env.url + "/#/runs")
    card = page.locator(f'.run[data-run-id="{run_id}"]')
    expect(card.locator('[data-field="run-status"]')).to_have_text("running")
    pane = card.locator('details.pane[data-agent="agent"]')
    pane.locator("summary").click()
    expect(pane.locator("pre")).to_contain_text(f"got answer: {ANSWER}")
    (Path(agent["workspace_path"]) / "from-test.txt").write_text("written by the test\n")
    changes = card.locator("details.changes")
    changes.locator("summary").click()
    repo_changes = changes.locator(f'.repo-changes[data-workspace="{workspace}"]')
    expect(repo_changes.locator('li[data-path="decision.txt"]')).to_contain_text("added")
    expect(repo_changes.locator('li[data-path="from-test.txt"]')).to_contain_text("new (untracked)")
    expect(repo_changes.locator(".diff .diff-add", has_text="+written by the test")).to_have_count(1)
    expect(repo_changes.locator(".diff .diff-add", has_text=f"+{ANSWER}")).to_have_count(1)
    card.locator("details.decisions-fold summary").click()
    expect(card.locator("details.decisions-fold")).not_to_contain_text("Could not read")
    card.locator("h2").scroll_into_view_if_needed()
    shoot(page, "runs")

    actions = card.locator(".run-actions")
    actions.get_by_role("button", name="Clean up").click()
    actions.get_by_role("button", name="Yes, clean up").click()
    expect(actions.locator(".error")).to_contain_text("stop or close it before cleanup")
    assert env.snapshot(run_id)["status"] == "running" and session in env.sessions()

    flag.write_text("go\n")  # the agent signals completion and validation now
    expect(card.locator('[data-field="run-status"]')).to_have_text("completed", timeout=20_000)
    expect(pane.locator("pre")).to_contain_text("completion and validation posted")  # the open tail grows
    # The close gate refuses while the workspace has the test's uncommitted file: the page says so.
    actions.get_by_role("button", name="Close").click()
    actions.get_by_role("button", name="Yes, close").click()
    expect(actions.locator(".error")).to_contain_text("has uncommitted changes; close blocked")
    (Path(agent["workspace_path"]) / "from-test.txt").unlink()
    actions.get_by_role("button", name="Close").click()
    actions.get_by_role("button", name="Yes, close").click()
    expect(actions.locator(".note")).to_contain_text("close done", timeout=30_000)
    expect(actions.locator(".error")).to_have_text("")
    expect(card.locator('[data-field="run-status"]')).to_have_text("closed", timeout=30_000)
    actions.get_by_role("button", name="Clean up").click()
    actions.get_by_role("button", name="Yes, clean up").click()
    expect(actions.locator(".note")).to_contain_text("Cleaned up")
    wait_until(lambda: session not in env.sessions(), timeout=20, message=f"tmux session {session} gone")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    announce(request, f"round-2 screenshots written to {SCREENSHOTS}")


def test_asking_as_a_human_opens_a_thread_that_appears_live(env: RunsEnv, page: Any) -> None:
    board = page
    board.goto(env.url + "/#/")
    expect(board.locator("#live-status")).to_have_text("live")
    ask = board.context.new_page()  # a second tab asks; the first shows the board
    writes: list[dict[str, str]] = []
    ask.on("request", lambda r: writes.append(r.all_headers()) if r.method == "POST" else None)
    ask.goto(env.url + "/#/ask")
    expect(ask.get_by_role("heading", name="Ask a question")).to_be_visible()
    ask.get_by_label("Ticket").fill("UI-ASK")
    ask.get_by_label("Your question").fill("Should the docs move to docs/?")
    ask.get_by_label("Priority").select_option("high")
    ask.get_by_role("button", name="Open thread").click()
    # The API refuses the missing title; its sentence sits next to the Title field, text kept.
    title_error = ask.locator("#ask-title-error")
    expect(title_error).to_have_text("forum thread title is required")
    expect(ask.get_by_label("Title")).to_have_attribute("aria-invalid", "true")
    expect(ask.get_by_label("Your question")).to_have_value("Should the docs move to docs/?")
    shoot(ask, "ask")
    ask.get_by_label("Title").fill("Where do the docs live?")
    ask.get_by_role("button", name="Open thread").click()
    link = ask.locator(".note a[data-thread-id]")
    expect(link).to_have_text("Open it")
    thread_id = link.get_attribute("data-thread-id")
    # Writes go as JSON from the page's own origin, each user action with its own Idempotency-Key.
    assert len(writes) == 2, writes
    keys = [w.get("idempotency-key", "") for w in writes]
    assert all(re.fullmatch(r"ui-[0-9a-f]{32}", k) for k in keys) and keys[0] != keys[1], keys
    assert all(w.get("content-type") == "application/json" and w.get("origin") == env.url for w in writes), writes
    thread = env.api("GET", f"/api/v1/forum/threads/{thread_id}").data["thread"]
    assert (thread["opened_by_type"], thread["opened_by_name"]) == ("human", VIEWER)
    assert (thread["ticket"], thread["priority"]) == ("UI-ASK", "high")
    card = board.locator(f'.card[data-thread-id="{thread_id}"]')
    expect(card).to_contain_text("Where do the docs live?")  # live, on the other tab's board
    expect(card.locator('[data-field="excerpt"]')).to_contain_text("Should the docs move to docs/?")
    expect(card.locator('[data-field="excerpt"]')).to_contain_text(f"{VIEWER} (human)")
    ask.close()


def test_queues_filters_viewer_and_a_control_answer_from_the_thread_page(env: RunsEnv, page: Any) -> None:
    mine = env.api("POST", "/api/v1/forum/threads", {"ticket": "UI-Q", "title": "For ana", "body": "Yours.",
                                                      "run_id": "run-q", "agent_name": "builder"}).data["thread"]
    other = env.api("POST", "/api/v1/forum/threads", {"ticket": "UI-Q", "title": "For nobody", "body": "Open.",
                                                       "run_id": "run-q", "agent_name": "tester"}).data["thread"]
    assigned = env.api("POST", f"/api/v1/forum/threads/{mine['thread_id']}/assign",
                       {"assignee_type": "human", "assignee_name": VIEWER})
    assert assigned.status == 200, assigned
    page.context.grant_permissions(["notifications"])
    page.goto(env.url + "/#/")
    expect(page.locator("#live-status")).to_have_text("live")
    mine_card = page.locator(f'.card[data-thread-id="{mine["thread_id"]}"]')
    other_card = page.locator(f'.card[data-thread-id="{other["thread_id"]}"]')
    expect(other_card).to_be_visible()

    # Assigned to me: the viewer's name is the assignee.
    assigned_queue = page.get_by_role("button", name=re.compile(r"^Assigned to me"))
    expect(assigned_queue).to_contain_text("(1)")
    assigned_queue.click()
    expect(mine_card).to_be_visible()
    expect(other_card).to_have_count(0)
    page.get_by_role("button", name=re.compile(r"^All threads")).click()

    # The agent filter.
    page.get_by_label("Agent", exact=True).fill("tester")
    expect(mine_card).to_have_count(0)
    expect(other_card).to_be_visible()
    page.get_by_role("button", name="Clear").click()
    expect(mine_card).to_be_visible()

    # The viewer's type is chosen once and kept (localStorage), like the name; back to human.
    page.get_by_label("Viewing as").select_option("agent")
    page.reload()
    expect(page.get_by_label("Viewing as")).to_have_value("agent")
    expect(page.get_by_label("You are")).to_have_value(VIEWER)
    expect(page.locator(".board-status")).to_contain_text(f"as {VIEWER}")
    page.get_by_label("Viewing as").select_option("human")

    # Desktop notifications are opt-in.
    toggle = page.get_by_role("button", name=re.compile(r"^Desktop notifications"))
    expect(toggle).to_have_text("Desktop notifications: off")
    toggle.click()
    expect(toggle).to_have_text("Desktop notifications: on")
    expect(toggle).to_have_attribute("aria-pressed", "true")

    # A control thread answered from its page: a guidance_answer signal for the agent that asked.
    signal = env.api("POST", "/api/v1/forum/control/signal", {
        "run_id": "run-q", "ticket": "UI-Q", "agent_name": "builder", "actor_type": "agent", "actor_name": "builder",
        "payload": {"schema_version": 1, "control_type": "guidance_request", "run_id": "run-q",
                    "agent_name": "builder", "question": "Tabs or spaces?"}})
    assert signal.status == 200, signal
    control_id = signal.data["thread"]["thread_id"]
    page.goto(env.url + f"/#/thread/{control_id}")
    expect(page.locator(".thread-head h1")).to_have_text("Control: builder")
    box = page.get_by_label("Answer builder (a guidance answer: resumes the run)")
    box.fill("Spaces.")
    page.locator("form.action-answer").get_by_role("button", name="Answer").click()
    expect(page.locator('ol.posts [data-kind="signal-guidance_answer"]')).to_contain_text("Spaces.")
    last = env.api("GET", f"/api/v1/forum/threads/{control_id}").data["posts"][-1]
    assert last["author_type"] == "operator"
    assert json.loads(last["body"]) == {"schema_version": 1, "control_type": "guidance_answer", "run_id": "run-q",
                                        "agent_name": "builder", "answer": "Spaces."}


def _show(env: RunsEnv, spec: str) -> str | None:
    result = subprocess.run(["git", "show", spec], cwd=env.repo, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None



def test_restart_stop_and_resume_from_the_runs_view(env: RunsEnv, page: Any) -> None:
    run = env.start_run(mode="run", ticket="UI-RS")  # a plain run: no brief
    run_id = run["run_id"]
    [agent] = run["agents"]
    session = agent["session"]
    env.wait_status(run_id, "awaiting_guidance")
    first_pid = env.wait_agent(run_id, lambda a: bool(a.get("pane_pid")), "a pane pid")["pane_pid"]
    page.goto(env.url + "/#/runs")
    expect(page.locator("#live-status")).to_have_text("live")
    card = page.locator(f'.run[data-run-id="{run_id}"]')
    row = card.locator('table.agents tr[data-agent="agent"]')
    expect(row.locator('[data-field="session"]')).to_contain_text(f"pane pid {first_pid}")
    expect(card.locator(".run-facts")).to_contain_text("run")
    assert "null" not in card.inner_text(), card.inner_text()  # the stray `null` of a run without a brief
    actions = card.locator(".run-actions")

    # Restart the agent (from its row): confirmed, then a new pane in the same session.
    row.get_by_role("button", name="Restart agent").click()
    expect(actions.locator(".confirm")).to_contain_text("Restart agent agent?")
    actions.get_by_role("button", name="Yes, restart").click()
    expect(actions.locator(".note")).to_contain_text("restart done")
    second_pid = env.wait_agent(run_id, lambda a: bool(a.get("pane_pid")) and a["pane_pid"] != first_pid,
                                "a new pane pid")["pane_pid"]
    expect(row.locator('[data-field="session"]')).to_contain_text(f"pane pid {second_pid}")

    # Cancel leaves the run alone.
    actions.get_by_role("button", name="Stop").click()
    actions.get_by_role("button", name="Cancel").click()
    expect(actions.locator(".confirm")).to_be_hidden()
    assert env.snapshot(run_id)["status"] != "stopped"

    # Stop, then resume.
    actions.get_by_role("button", name="Stop").click()
    actions.get_by_role("button", name="Yes, stop").click()
    expect(card.locator('[data-field="run-status"]')).to_have_text("stopped")
    wait_until(lambda: session not in env.sessions(), timeout=20, message=f"session {session} stopped")
    actions.get_by_role("button", name="Resume").click()
    actions.get_by_role("button", name="Yes, resume").click()
    expect(card.locator('[data-field="run-status"]')).to_have_text(re.compile(r"^(running|awaiting_guidance)$"))
    wait_until(lambda: session in env.sessions(), timeout=20, message=f"session {session} back")
    # The resumed agent starts its script again and asks again.
    env.wait_status(run_id, "awaiting_guidance")
    expect(card.locator('[data-field="run-status"]')).to_have_text("awaiting_guidance")


    # The UI's read routes: incremental pane reads, and 400/404 in the API's error shape.
    base = f"/api/v1/runs/{run_id}"
    whole = env.api("GET", f"{base}/agents/agent/pane")
    assert whole.status == 200 and whole.data["pane"]["reset"] is True, whole
    assert "asked for guidance" in whole.data["pane"]["text"]
    size = whole.data["pane"]["size"]
    more = env.api("GET", f"{base}/agents/agent/pane?after_bytes={size}")
    assert more.status == 200 and more.data["pane"]["reset"] is False and more.data["pane"]["start"] == size, more
    for path, status, code in ((f"{base}/agents/agent/pane?after_bytes=-1", 400, "invalid_filter"),
                               (f"{base}/agents/nobody/pane", 404, "not_found"),
                               ("/api/v1/runs/run_nope/agents/agent/pane", 404, "run_not_found"),
                               (f"{base}/changes?workspace=elsewhere", 404, "not_found"),
                               ("/api/v1/ui/excerpts?limit=0", 400, "invalid_limit")):
        answer = env.api("GET", path)
        assert (answer.status, answer.data["error"]["code"]) == (status, code), (path, answer)


def test_an_expired_session_is_said_clearly(env: RunsEnv, page: Any, problems: Problems) -> None:
    # Rotating the token ends the page's session: its requests (and stream) get 401 from now on,
    # which the browser logs by itself.
    problems.expected.append(re.compile(r"^Failed to load resource: the server responded with a status of 401"))
    problems.expected.append(re.compile(r"^WebSocket connection to .* failed"))
    page.goto(env.url + "/#/")
    expect(page.locator("#live-status")).to_have_text("live")
    rotated = env.api("POST", "/api/v1/auth/rotate", {})
    assert rotated.status == 200, rotated
    page.get_by_role("button", name="Apply").click()  # the board reads again
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Session expired")
    expect(banner).to_contain_text("metawsm ui")
    expect(page.locator(".board .error")).to_contain_text("Your session has expired")
