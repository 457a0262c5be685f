"""The Runs view of the web UI against a REAL run, in Debian's Chromium (Playwright for Python).

A real ``metawsm serve`` (its own Redis namespace, DB and private tmux server ``mw-<namespace>``)
starts a real bootstrap run on a real git repository in ``tmp_path``; the agent is a bash script
in a real tmux session (tests/support/agents.py) that commits, asks for guidance with
``python -m metawsm forum signal --type guidance_request`` and waits for the answer.  Then, in the
browser, without a reload:

* the run appears (it was started while the page was open) with status ``awaiting_guidance``, its
  agent with health, session and pane pid, and the pending question with an answer box;
* a draft in the answer box survives the view's re-reads and a re-render of the run (another
  question arrives on the run meanwhile): text, caret and focus;
* the run's actor subtree shows the Run actor and its TmuxAgent with session, pane pid, health
  and restarts left — the same values tmux and the API report;
* answering from the page posts the ``guidance_answer`` control signal (as the operator named in
  the page), the run goes back to ``running`` in the API and on the page within a couple of
  seconds, and the agent really receives the answer (it commits it on its branch);
* a screenshot of the view at 1280x800 goes to ``test-artifacts/screenshots/runs-1280x800.png``.

The test's tmux server is killed on teardown (and checked gone).  No sleeps: every wait is
Playwright's ``expect``/``wait_for`` or :func:`metawsm.waiting.wait_until`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metawsm.waiting import wait_until
from support.agents import RunsEnv, find_node, git
from support.browser import DESKTOP, SCREENSHOTS, VIEWER, announce, launched_chromium, log_in, record_page_problems

pytestmark = pytest.mark.browser  # `make test BROWSER=0` deselects these

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
expect = sync_api.expect

QUESTION = "Which database should I use?"
CONTEXT = "postgres or sqlite"
ANSWER = "Use SQLite"

expect.set_options(timeout=10_000)

# Works, asks for guidance, waits for the answer, applies it — and keeps running (no completion),
# so the run goes back to `running` and stays there.
ASKING_AGENT = """
commit notes.txt "first step" "agent: first step"
signal --type guidance_request --question "{question}" --context "{context}"
say "asked for guidance"
answer=$(wait_answer)
say "got answer: $answer"
commit decision.txt "$answer" "agent: apply the decision"
say "applied the decision; still working"
exec sleep 600
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_chromium(sync_api)


@pytest.fixture
def env(runs_env: Callable[..., RunsEnv], redis_namespace: str) -> Iterator[RunsEnv]:
    """The daemon, repo and script agent; on teardown the daemon stops and its tmux server dies."""
    started = runs_env(agent=ASKING_AGENT, question=QUESTION, context=CONTEXT)
    assert started.socket == f"mw-{redis_namespace}"  # the policy's private tmux server
    try:
        yield started
    finally:
        started.close()  # stops the daemon and kills `tmux -L mw-<namespace>` (runs_env does it again: harmless)
        gone = subprocess.run(["tmux", "-L", started.socket, "ls"], capture_output=True, text=True, timeout=10)
        assert gone.returncode != 0, f"tmux server {started.socket} still running: {gone.stdout}"


@pytest.fixture
def page(browser: Any, env: RunsEnv) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(f"try {{ localStorage.setItem('metawsm.viewer', {json.dumps(VIEWER)}); }} catch (e) {{}}")
    page = context.new_page()
    log_in(page, env.url)
    external: list[str] = []
    errors: list[str] = []
    record_page_problems(page, env.url, external, errors)
    try:
        yield page
        assert not external, f"the page made requests outside the daemon: {external}"
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def loads(page: Any) -> int:
    return int(page.locator(".runs-page").get_attribute("data-loads") or "0")


def wait_for_reads(page: Any, count: int) -> None:
    """Until the view has re-read the run list ``count`` more times."""
    target = loads(page) + count
    # (page.wait_for_function would need eval, which the page's Content-Security-Policy forbids.)
    wait_until(lambda: loads(page) >= target, timeout=10, interval=0.05, message=f"{count} more reads of the run list")


def test_a_real_bootstrap_run_waiting_for_guidance_is_answered_from_the_runs_view(
        env: RunsEnv, page: Any, request: pytest.FixtureRequest) -> None:
    # The page is open before the run exists: the run must appear without a reload.
    page.goto(env.url + "/#/runs")
    expect(page.locator("#live-status")).to_have_text("live")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.locator(".runs")).to_contain_text("No runs yet")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    run = env.start_run(mode="bootstrap", ticket="UI-7")
    run_id = run["run_id"]
    [agent] = run["agents"]
    session, workspace = agent["session"], agent["workspace"]
    assert session in env.sessions()

    # -- the API says the run waits for guidance; so does the page --------------------------------
    snap = env.wait_status(run_id, "awaiting_guidance")
    [pending] = snap["pending_guidance"]
    assert (pending["question"], pending["context"]) == (QUESTION, CONTEXT)
    pane_pid = env.wait_agent(run_id, lambda a: a.get("pane_pid") and a.get("health") == "healthy",
                              "pane pid and health known")["pane_pid"]
    assert pane_pid == env.pane_pid(session)

    card = page.locator(f'.run[data-run-id="{run_id}"]')
    status = card.locator('[data-field="run-status"]')
    expect(status).to_have_text("awaiting_guidance")
    expect(card.locator(".run-facts")).to_contain_text("bootstrap")
    expect(card.locator(".run-facts")).to_contain_text("UI-7")
    expect(card.locator(".run-facts")).to_contain_text("5 of 5 done")
    row = card.locator('table.agents tr[data-agent="agent"]')
    expect(row.locator('[data-field="health"]')).to_have_text("healthy")
    expect(row.locator('[data-field="agent-status"]')).to_have_text("running")
    expect(row.locator('[data-field="session"]')).to_contain_text(session)
    expect(row.locator('[data-field="session"]')).to_contain_text(f"pane pid {pane_pid}")
    expect(row.locator('[data-field="restarts"]')).to_have_text("0 of 3 used, 3 left")
    expect(row).to_contain_text(workspace)

    form = card.locator(".guidance-form")
    expect(form).to_have_count(1)
    expect(form.locator(".question")).to_have_text(f"agent asks: {QUESTION}")
    expect(form.locator(".context")).to_have_text(CONTEXT)
    expect(form.get_by_role("link", name="Open the control thread")).to_have_attribute(
        "href", f"#/thread/{pending['thread_id']}")
    box = form.get_by_label("Answer for agent")
    expect(box).to_be_visible()

    # -- the actor subtree: Run + TmuxAgent, with what tmux and the API say ------------------------
    card.locator("details.actors summary").click()
    tree = card.locator("table.run-actors")
    run_row = tree.locator(f'tr[data-path="root/runs/{run_id}"]')
    agent_row = tree.locator(f'tr[data-path="root/runs/{run_id}/agent"]')
    expect(run_row).to_contain_text(f"Run[{run_id}]")
    expect(run_row).to_contain_text("awaiting_guidance")
    expect(agent_row.locator("th")).to_have_text("TmuxAgent[agent]")
    expect(agent_row).to_have_attribute("data-kind", "tmux_agent")
    expect(agent_row).to_have_attribute("data-state", "running")
    expect(agent_row.locator('[data-field="session"]')).to_have_text(session)
    expect(agent_row.locator('[data-field="pane-pid"]')).to_have_text(str(pane_pid))
    expect(agent_row.locator('[data-field="health"]')).to_contain_text("healthy")
    expect(agent_row.locator('[data-field="restarts-left"]')).to_have_text("3")
    node = find_node(env.actors(run_id), "TmuxAgent[agent]")
    assert node is not None and node["details"]["session"] == session and node["details"]["pane_pid"] == pane_pid
    assert node["details"]["restarts_left"] == 3 and node["details"]["health"] == "healthy"

    # -- a draft survives the view's re-reads and re-renders (text, caret and focus) ------------------
    # While the operator types, someone asks another question on the run: its forum counts change,
    # so the run is rendered again around the answer box.
    box.fill(ANSWER)
    asked = env.cli("forum", "ask", "--ticket", "UI-7", "--run-id", run_id, "--agent", "agent",
                    "--title", "Is the README enough?", "--body", "Or do we need docs/?")
    assert asked.returncode == 0, asked.stderr
    expect(card.locator(".run-facts")).to_contain_text("2 open of 2 threads")
    wait_for_reads(page, 2)
    expect(box).to_have_value(ANSWER)
    expect(box).to_be_focused()
    assert page.evaluate("document.activeElement.selectionStart") == len(ANSWER)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    png = SCREENSHOTS / "runs-1280x800.png"
    page.screenshot(path=str(png))
    assert png.stat().st_size > 10_000, png

    # -- answer from the page: running again in the API and on the page, no reload ------------------
    form.get_by_role("button", name="Send answer").click()
    clicked = time.monotonic()
    wait_until(lambda: env.snapshot(run_id)["status"] == "running", timeout=10, interval=0.02,
               message=f"the API never showed run {run_id} running again; log:\n{env.serve.log()[-3000:]}")
    api_after = time.monotonic() - clicked
    expect(status).to_have_text("running", timeout=3_000)
    page_after = time.monotonic() - clicked
    assert page_after < 3.0, f"the page showed `running` {page_after:.2f}s after the click (API: {api_after:.2f}s)"
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    expect(card.locator(".guidance-form")).to_have_count(0)
    expect(card.locator(".guidance")).to_contain_text("No agent is waiting for guidance.")
    expect(card.locator(".guidance .sent")).to_contain_text(f"Answer to agent (“{QUESTION}”) sent")
    expect(run_row).to_contain_text("running")  # the open subtree is re-read too
    expect(row.locator('[data-field="health"]')).to_have_text("healthy")

    # What the page posted: a guidance_answer control signal by the operator named in the page.
    snap = env.snapshot(run_id)
    assert snap.get("pending_guidance", []) == []
    thread = env.api("GET", f"/api/v1/forum/threads/{pending['thread_id']}")
    assert thread.status == 200, thread
    detail = thread.data
    last = detail["posts"][-1]
    assert (last["author_type"], last["author_name"]) == ("operator", VIEWER)
    assert json.loads(last["body"]) == {"schema_version": 1, "control_type": "guidance_answer", "run_id": run_id,
                                        "agent_name": "agent", "answer": ANSWER}
    assert detail["thread"]["ticket"] == "UI-7"

    # The agent really got it: it commits the decision on its branch and keeps working.
    branch = f"task/{workspace}"
    wait_until(lambda: _show(env, f"{branch}:decision.txt") == ANSWER, timeout=20,
               message="the agent never committed the answer it received")
    assert "agent: apply the decision" in git(env.repo, "log", "--format=%s", branch)
    assert env.snapshot(run_id)["status"] == "running" and session in env.sessions()

    announce(request, f"Runs view screenshot written to {png}; after the answer the API showed `running` in "
             f"{api_after:.2f}s and the page in {page_after:.2f}s")


def _show(env: RunsEnv, spec: str) -> str | None:
    result = subprocess.run(["git", "show", spec], cwd=env.repo, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None
