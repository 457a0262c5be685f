"""What text the API accepts, as msgspec constraints on the request Structs.

Control characters (U+0000–U+001F, U+007F–U+009F) in an id or a name end up in tmux session
names, file and branch names, terminal output and the runbook's ``sqlite3`` listings, where they
corrupt or spoof what a person reads; NUL is cut short by half the tools on the way.  So:

* :data:`Line` — ids, names, tickets, titles: one line of printable text, no control character;
* :data:`Text` — bodies, notes, questions, answers: may also hold newlines (``\n``, and the
  ``\r`` of text pasted with Windows line endings) and tabs, nothing else.

The decoder refuses anything else with HTTP 400 ``invalid_json`` naming the field
(:func:`describe_violation` words it), before the request reaches an actor.  docs/api.md states
the rule.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

# Python's ``\Z`` is the end of the text; ``$`` would also match before a final newline, which
# would let "title\n" through.  The OpenAPI document gets the same patterns with ECMA's ``$``,
# which means exactly ``\Z`` there (see :func:`ecma_pattern`).
LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*\Z"
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*\Z"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

Line = Annotated[str, msgspec.Meta(pattern=LINE_PATTERN, description="One line: no control characters.")]
Text = Annotated[str, msgspec.Meta(pattern=TEXT_PATTERN,
                                   description="Text: newlines (LF, CR) and tabs, no other control characters.")]

# What each pattern means, in the words of the refusal ({field} is the field's path).
_MEANINGS = {
    LINE_PATTERN: "{field} contains a control character; ids, names and titles must be one line of printable text",
    TEXT_PATTERN: "{field} contains a control character; text may hold newlines and tabs but no other control "
                  "character",
}


def describe_violation(message: str) -> str | None:
    """msgspec's ``Expected `str` matching regex '...' - at `$.title``` for one of these
    patterns, in plain words naming the field; None for any other message."""
    for pattern, meaning in _MEANINGS.items():
        prefix = f"Expected `str` matching regex {pattern!r} - at "
        if message.startswith(prefix):
            field = message[len(prefix):].strip("`").removeprefix("$.").removeprefix("$") or "the body"
            return meaning.format(field=field)
    return None


def control_character(value: str, *, text: bool) -> str | None:
    """The first character of ``value`` that :data:`Text` (``text``) or :data:`Line` refuses,
    as ``U+0000``; None when there is none.  For values checked outside msgspec (a control
    signal's free-form payload)."""
    found = (_CONTROL_IN_TEXT if text else _CONTROL).search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def ecma_pattern(pattern: str) -> str:
    """The OpenAPI (ECMA-262) spelling of one of these patterns: ``\\Z`` becomes ``$``."""
    return pattern[:-2] + "$" if pattern.endswith(r"\Z") else pattern


# The same rules for a field that must also hold something besides white space (ECMA spelling).
_NON_BLANK = {
    ecma_pattern(LINE_PATTERN): r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
    ecma_pattern(TEXT_PATTERN): (r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f]"
                                 r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"),
}


def non_blank_pattern(pattern: str) -> str:
    """``pattern`` (ECMA spelling) narrowed to text that is not blank; ``\\S`` for no pattern."""
    return _NON_BLANK.get(pattern, r"\S")
