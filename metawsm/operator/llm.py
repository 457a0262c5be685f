"""The optional language-model adviser of the operator (``operator.llm``).

The rules decide; a model only comments.  :func:`consult` runs ``operator.llm.command`` with the
run's context and reads back one suggestion, and :func:`merge` applies the mode's gate to it:

* ``off``: the command is never run.
* ``assist``: the suggestion is recorded beside the rule's decision; the decision, and whether it
  is executed, stay the rule's.  (The Go version also stopped executing anything in this mode,
  its default; here the rules act the same with or without an adviser.)
* ``auto``: the model may raise an escalation where the rules saw nothing to do.  Escalations
  only notify a human, so a model can make the operator louder, never make it act.

The context the caller passes (and the command receives as JSON)::

    {"run_id": "...", "run_status": "running", "tickets": ["T-1"],
     "rule_intent": "noop", "rule_reason": "...",
     "pending_guidance": [{...}],
     "agents": [{"name": "agent", "workspace": "ws", "health": "stalled", "restarts_left": 2}],
     "last_activity_at": "2026-01-01T00:00:00Z"}

The answer is one JSON object ``{"intent", "reason", "confidence", "needs_human"}``; text
around it is tolerated, since chat models like to add some.  A command that fails, times out or
answers something else is logged once per distinct problem and ignored.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from metawsm.operator.model import ESCALATE_GUIDANCE, ESCALATIONS, INTENTS, NOOP, Suggestion

if TYPE_CHECKING:
    from metawsm.policy_compat import OperatorLlmPolicy

__all__ = ["Merged", "allowed_intents", "consult", "merge", "parse_reply", "prompt_for"]

log = logging.getLogger("metawsm.operator")

REJECTED_NOTE = "llm proposal rejected by policy gate"
# A model that writes a novel instead of one object is wrong anyway; reading it all would only
# cost memory.
_OUTPUT_MAX = 256 * 1024
_ERROR_TEXT_MAX = 200
_REMEMBERED_ERRORS = 256

_warned_lock = threading.Lock()
_warned: dict[str, None] = {}


class Merged(msgspec.Struct, frozen=True):
    """The decision after the mode's gate: what to record and whether to carry it out."""

    intent: str
    source: str  # rule | llm
    execute: bool
    note: str  # why the suggestion changed nothing, or what it suggested; "" when silent


class _Invalid(Exception):
    """An answer that is not a usable suggestion; the message is what gets logged."""


def allowed_intents() -> tuple[str, ...]:
    return (NOOP, *INTENTS)


def _warn_once(text: str) -> None:
    with _warned_lock:
        if text in _warned:
            return
        _warned[text] = None
        if len(_warned) > _REMEMBERED_ERRORS:
            del _warned[next(iter(_warned))]
    log.warning("%s", text)


def prompt_for(context_json: str) -> str:
    """The prompt given to ``codex exec``: the Go version's instructions, then the context."""
    return "\n".join([
        "You are an operator assistant for metawsm.",
        "Return a single JSON object with keys: intent, reason, confidence, needs_human.",
        "Allowed intents: " + ", ".join(allowed_intents()) + ".",
        "Do not include markdown.",
        "Context JSON:",
        context_json,
    ])


def _invocation(llm: OperatorLlmPolicy, context_json: str) -> tuple[list[str], bytes | None]:
    """The argv to run and what to write on its stdin (``None``: nothing, stdin closed)."""
    if isinstance(llm.command, list):
        return list(llm.command), context_json.encode()
    argv = shlex.split(llm.command)
    if not argv:
        raise _Invalid("operator: operator.llm.command is empty")
    if os.path.basename(argv[0]) == "codex":
        model = ["--model", llm.model.strip()] if llm.model.strip() else []
        return [*argv, "exec", *model, prompt_for(context_json)], None
    return argv, context_json.encode()


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()[:_ERROR_TEXT_MAX]
    return ""


def _run(argv: list[str], stdin: bytes | None, timeout: float) -> bytes:
    program = argv[0]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise _Invalid(f"operator: llm command not found: {program}") from None
    except OSError as exc:
        raise _Invalid(f"operator: cannot run llm command {program}: {exc.strerror or exc}") from None
    try:
        stdout, stderr = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        # The whole group: a wrapper script's model client would otherwise outlive it and keep
        # the pipes open.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.communicate()
        raise _Invalid(f"operator: llm command {program} timed out after {timeout:g}s") from None
    if proc.returncode != 0:
        detail = _first_line(stderr)
        reason = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exited with status {proc.returncode}")
        raise _Invalid(f"operator: llm command {program} {reason}" + (f": {detail}" if detail else ""))
    return stdout[:_OUTPUT_MAX]


def _objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects in ``text``, in order, skipping whatever surrounds them."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            index = text.find("{", index + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        index = text.find("{", end)
    return found


def parse_reply(output: str) -> Suggestion:
    """The suggestion in a command's output; raises ``ValueError`` with the reason it is unusable."""
    objects = _objects(output)
    if not objects:
        raise ValueError("no JSON object found in llm output")
    # codex echoes its prompt, whose context is an object too; the answer is the one with an intent.
    answer = next((item for item in objects if "intent" in item), None)
    if answer is None:
        raise ValueError("llm response missing intent")
    intent = answer["intent"]
    if not isinstance(intent, str) or not intent.strip():
        raise ValueError("llm response missing intent")
    intent = intent.strip().lower()
    if intent not in allowed_intents():
        raise ValueError(f'llm returned disallowed intent "{intent[:_ERROR_TEXT_MAX]}"')
    reason = answer.get("reason")
    confidence = answer.get("confidence")
    needs_human = answer.get("needs_human")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        confidence = 0.0
    return Suggestion(intent=intent, reason=" ".join(str(reason).split()) if reason is not None else "",
                      confidence=min(1.0, max(0.0, float(confidence))), needs_human=needs_human is True)


def consult(llm: OperatorLlmPolicy, context: Mapping[str, Any]) -> Suggestion | None:
    """Ask the model about one run; ``None`` when the mode is off or the answer is unusable.

    Blocks for up to ``llm.timeout_seconds``: call it from a thread that may wait.
    """
    if llm.mode.strip().lower() not in ("assist", "auto"):
        return None
    context_json = msgspec.json.encode(dict(context)).decode()
    try:
        argv, stdin = _invocation(llm, context_json)
        output = _run(argv, stdin, float(llm.timeout_seconds))
    except ValueError as exc:  # shlex: an unclosed quote
        _warn_once(f"operator: operator.llm.command cannot be split: {exc}")
        return None
    except _Invalid as exc:
        _warn_once(str(exc))
        return None
    try:
        return parse_reply(output.decode("utf-8", "replace"))
    except ValueError as exc:
        _warn_once(f"operator: ignoring the llm's answer: {exc}")
        return None


def _quiet(intent: str) -> bool:
    return intent in ("", NOOP)


def _same(a: str, b: str) -> bool:
    return a == b or (_quiet(a) and _quiet(b))


def merge(mode: str, rule_intent: str, rule_execute: bool, suggestion: Suggestion | None) -> Merged:
    """The rule's decision after the gate of ``mode`` (see the module docstring)."""
    unchanged = Merged(intent=rule_intent, source="rule", execute=rule_execute, note="")
    mode = mode.strip().lower()
    if suggestion is None or mode not in ("assist", "auto"):
        return unchanged
    if mode == "assist":
        if _same(suggestion.intent, rule_intent):
            return unchanged
        note = f"llm suggested {suggestion.intent}" + (f": {suggestion.reason}" if suggestion.reason else "")
        return Merged(intent=rule_intent, source="rule", execute=rule_execute, note=note)
    escalation = suggestion.intent if suggestion.intent in ESCALATIONS else (
        ESCALATE_GUIDANCE if suggestion.needs_human else "")
    if _quiet(rule_intent) and escalation:
        return Merged(intent=escalation, source="llm", execute=False, note=suggestion.reason)
    if _same(suggestion.intent, rule_intent):
        return unchanged
    return Merged(intent=rule_intent, source="rule", execute=rule_execute, note=REJECTED_NOTE)
