"""The operator's LLM adviser (metawsm/operator/llm.py): real commands written as small scripts,
and the gate that keeps a model from making the operator act."""

from __future__ import annotations

import itertools
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from metawsm.operator.llm import REJECTED_NOTE, Merged, allowed_intents, consult, merge, parse_reply
from metawsm.operator.model import (
    AUTO_RESTART,
    AUTO_STOP_STALE,
    ESCALATE_BLOCKED,
    ESCALATE_GUIDANCE,
    ESCALATIONS,
    INTENTS,
    NOOP,
    Suggestion,
)
from metawsm.policy_compat import OperatorLlmPolicy
from metawsm.waiting import wait_until

CONTEXT: dict[str, Any] = {
    "run_id": "run-1", "run_status": "running", "tickets": ["T-1"],
    "rule_intent": "noop", "rule_reason": "no deterministic action required",
    "pending_guidance": [],
    "agents": [{"name": "agent", "workspace": "ws-1", "health": "stalled", "restarts_left": 2}],
    "last_activity_at": "2026-01-01T00:00:00Z",
}
ANSWER: dict[str, Any] = {"intent": "escalate_guidance", "reason": "agent idle for an hour", "confidence": 0.7,
          "needs_human": True}


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(0o755)
    return path


def adviser(tmp_path: Path, answer: str, name: str = "adviser.py") -> Path:
    """A command that keeps the JSON it was given (``seen.json``) and prints ``answer``."""
    return script(tmp_path, name, f"""\
import sys
open({str(tmp_path / "seen.json")!r}, "w").write(sys.stdin.read())
sys.stdout.write({answer!r})
""")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "metawsm.operator"]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="metawsm.operator")


# --------------------------------------------------------------------------- consult


def test_assist_gets_the_suggestion_from_the_context_on_stdin(tmp_path: Path) -> None:
    command = adviser(tmp_path, "Sure! Here it is:\n" + json.dumps(ANSWER) + "\nAnything else?\n")
    suggestion = consult(OperatorLlmPolicy(mode="assist", command=[str(command)]), CONTEXT)
    assert suggestion == Suggestion(intent="escalate_guidance", reason="agent idle for an hour", confidence=0.7,
                                    needs_human=True)
    assert json.loads((tmp_path / "seen.json").read_text()) == CONTEXT


def test_a_string_command_is_split_and_gets_the_json_on_stdin(tmp_path: Path) -> None:
    command = adviser(tmp_path, json.dumps({"intent": "NOOP"}), name="my adviser.py")
    llm = OperatorLlmPolicy(mode=" Auto ", command=f"{shlex.quote(sys.executable)} {shlex.quote(str(command))}")
    assert consult(llm, CONTEXT) == Suggestion(intent=NOOP)
    assert json.loads((tmp_path / "seen.json").read_text()) == CONTEXT


def test_a_codex_command_is_run_as_codex_exec_with_the_prompt(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"
    # Like codex, it echoes the prompt (with the context object in it) before answering.
    codex = script(tmp_path, "codex", f"""\
import json, sys
open({str(argv_file)!r}, "w").write(json.dumps(sys.argv[1:]))
print(sys.argv[-1])
print({json.dumps(ANSWER)!r})
""")
    llm = OperatorLlmPolicy(mode="assist", command=str(codex), model="gpt-test", timeout_seconds=10)
    assert consult(llm, CONTEXT) == Suggestion(**ANSWER)
    argv = json.loads(argv_file.read_text())
    assert argv[:3] == ["exec", "--model", "gpt-test"] and len(argv) == 4
    prompt = argv[3].splitlines()
    assert prompt[0] == "You are an operator assistant for metawsm."
    assert prompt[2] == "Allowed intents: " + ", ".join(allowed_intents()) + "."
    assert prompt[4] == "Context JSON:"
    assert json.loads("\n".join(prompt[5:])) == CONTEXT
    assert not any("max-tokens" in arg or "max_tokens" in arg for arg in argv)


def test_off_runs_nothing(tmp_path: Path) -> None:
    command = adviser(tmp_path, json.dumps(ANSWER))
    assert consult(OperatorLlmPolicy(mode="off", command=[str(command)]), CONTEXT) is None
    assert consult(OperatorLlmPolicy(mode=" OFF", command=[str(command)]), CONTEXT) is None
    assert not (tmp_path / "seen.json").exists()


def test_garbage_is_ignored_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    command = adviser(tmp_path, "I think you should restart it, probably.")
    llm = OperatorLlmPolicy(mode="assist", command=[str(command)])
    assert consult(llm, CONTEXT) is None
    assert consult(llm, CONTEXT) is None
    assert warnings_of(caplog) == ["operator: ignoring the llm's answer: no JSON object found in llm output"]


def test_a_disallowed_intent_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    command = adviser(tmp_path, json.dumps({"intent": "delete_workspace", "reason": "tidy up"}))
    assert consult(OperatorLlmPolicy(mode="auto", command=[str(command)]), CONTEXT) is None
    assert warnings_of(caplog) == ['operator: ignoring the llm\'s answer: llm returned disallowed intent '
                                   '"delete_workspace"']


def test_a_slow_command_is_killed_at_the_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pid_file = tmp_path / "pid"
    command = script(tmp_path, "slow.py", f"""\
import os, signal
open({str(pid_file)!r}, "w").write(str(os.getpid()))
signal.pause()
""")
    started = time.monotonic()
    assert consult(OperatorLlmPolicy(mode="assist", command=[str(command)], timeout_seconds=0.5), CONTEXT) is None
    assert time.monotonic() - started < 5
    assert warnings_of(caplog) == [f"operator: llm command {command} timed out after 0.5s"]
    pid = int(pid_file.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists()
               or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", timeout=5)


def test_a_failing_command_is_ignored_with_its_first_error_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    command = script(tmp_path, "fails.py", "import sys\nsys.stdin.read()\nprint('{\"intent\": \"noop\"}')\n"
                                           "sys.stderr.write('quota exceeded\\n')\nsys.exit(2)\n")
    assert consult(OperatorLlmPolicy(mode="assist", command=[str(command)]), CONTEXT) is None
    assert consult(OperatorLlmPolicy(mode="assist", command=[str(tmp_path / "missing")]), CONTEXT) is None
    assert warnings_of(caplog) == [f"operator: llm command {command} exited with status 2: quota exceeded",
                                   f"operator: llm command not found: {tmp_path / 'missing'}"]


@pytest.mark.parametrize(("output", "expected"), [
    ('{"intent": " Escalate_Blocked ", "reason": "budget\\n spent", "confidence": 3}',
     Suggestion(intent=ESCALATE_BLOCKED, reason="budget spent", confidence=1.0)),
    ('noise {"context": {"rule_intent": "noop"}} then {"intent": "noop", "confidence": "high"} done',
     Suggestion(intent=NOOP)),
    ('{"intent": "auto_restart", "needs_human": "yes", "confidence": 0.25}',
     Suggestion(intent=AUTO_RESTART, confidence=0.25)),
])
def test_parse_reply_reads_the_first_object_with_an_intent(output: str, expected: Suggestion) -> None:
    assert parse_reply(output) == expected


@pytest.mark.parametrize(("output", "message"), [
    ("", "no JSON object found in llm output"),
    ("{not json}", "no JSON object found in llm output"),
    ('{"reason": "x"}', "llm response missing intent"),
    ('{"intent": 3}', "llm response missing intent"),
    ('{"intent": "merge_everything"}', 'llm returned disallowed intent "merge_everything"'),
])
def test_parse_reply_rejects(output: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_reply(output)
    assert str(err.value) == message


# --------------------------------------------------------------------------- merge


def suggest(intent: str, needs_human: bool = False, reason: str = "because") -> Suggestion:
    return Suggestion(intent=intent, reason=reason, confidence=0.9, needs_human=needs_human)


def test_off_or_no_suggestion_leaves_the_rule_alone() -> None:
    unchanged = Merged(intent=AUTO_RESTART, source="rule", execute=True, note="")
    assert merge("off", AUTO_RESTART, True, suggest(ESCALATE_BLOCKED)) == unchanged
    assert merge("assist", AUTO_RESTART, True, None) == unchanged
    assert merge("auto", AUTO_RESTART, True, None) == unchanged


def test_assist_records_the_suggestion_and_keeps_the_rules_action() -> None:
    assert merge("assist", AUTO_RESTART, True, suggest(ESCALATE_BLOCKED, reason="it keeps dying")) == Merged(
        intent=AUTO_RESTART, source="rule", execute=True, note="llm suggested escalate_blocked: it keeps dying")
    assert merge("assist", NOOP, False, suggest(AUTO_STOP_STALE, reason="")) == Merged(
        intent=NOOP, source="rule", execute=False, note="llm suggested auto_stop_stale")
    assert merge("assist", AUTO_RESTART, True, suggest(AUTO_RESTART)).note == ""
    assert merge("assist", "", False, suggest(NOOP)).note == ""


def test_auto_may_escalate_where_the_rules_saw_nothing() -> None:
    assert merge("auto", NOOP, False, suggest(ESCALATE_BLOCKED, reason="looping")) == Merged(
        intent=ESCALATE_BLOCKED, source="llm", execute=False, note="looping")
    assert merge(" AUTO ", "", False, suggest(AUTO_STOP_STALE, needs_human=True)) == Merged(
        intent=ESCALATE_GUIDANCE, source="llm", execute=False, note="because")
    assert merge("auto", NOOP, False, suggest(NOOP, needs_human=True)).intent == ESCALATE_GUIDANCE


def test_auto_rejects_every_other_proposal() -> None:
    assert merge("auto", NOOP, False, suggest(AUTO_RESTART)) == Merged(
        intent=NOOP, source="rule", execute=False, note=REJECTED_NOTE)
    assert merge("auto", AUTO_RESTART, True, suggest(ESCALATE_BLOCKED, needs_human=True)) == Merged(
        intent=AUTO_RESTART, source="rule", execute=True, note=REJECTED_NOTE)
    assert merge("auto", AUTO_RESTART, True, suggest(AUTO_RESTART)) == Merged(
        intent=AUTO_RESTART, source="rule", execute=True, note="")


def test_no_suggestion_ever_makes_the_operator_act() -> None:
    for mode, rule, execute, intent, needs_human in itertools.product(
            ("off", "assist", "auto"), ("", *allowed_intents()), (False, True), allowed_intents(), (False, True)):
        merged = merge(mode, rule, execute, suggest(intent, needs_human))
        case = (mode, rule, execute, intent, needs_human)
        if merged.execute:
            assert execute and merged.intent == rule and merged.source == "rule", case
        if merged.intent != rule:
            assert mode == "auto" and merged.intent in ESCALATIONS and merged.source == "llm", case
            assert rule in ("", NOOP), case
    assert set(INTENTS) < set(allowed_intents())
