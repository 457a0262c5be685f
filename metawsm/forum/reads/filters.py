"""What a read accepts: filters, the viewer and the limit, validated before any SQL runs.

Every refusal is a :class:`ForumError` with ``invalid_filter`` or ``invalid_limit`` (HTTP
400), worded for the API caller.  Text filters must be strings SQLite can store (valid
UTF-8); an empty one means "any".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from metawsm.forum.enums import Priority, ThreadState, ViewerType, parse_enum
from metawsm.forum.errors import ForumError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DEFAULT_EVENT_LIMIT = 100
MAX_EVENT_LIMIT = 1000


def invalid_filter(message: str) -> ForumError:
    return ForumError(message, code="invalid_filter")


def text_filter(value: Any, name: str) -> str | None:
    """A text filter: None/empty → None; must be a str that SQLite can store (valid UTF-8)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_filter(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_filter(f"{name} is not valid text") from None
    return value or None


def enum_filter(enum_type: type[Any], value: Any, name: str) -> str | None:
    given = text_filter(value, name)
    if given is None:
        return None
    try:
        return str(parse_enum(enum_type, given, name).value)
    except ForumError as exc:
        raise invalid_filter(exc.message) from None


def parse_limit(value: Any, default: int, maximum: int = MAX_LIMIT) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ForumError(f"limit must be an integer between 1 and {maximum}", code="invalid_limit")
    return value


def equal_to(columns: tuple[tuple[str, Any], ...], params: list[Any]) -> list[str]:
    """``column = ?`` for each (column, value) whose value is not None; fills ``params``."""
    clauses = []
    for column, value in columns:
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return clauses


def where(clauses: list[str]) -> str:
    """`` WHERE a AND b`` for the clauses, or nothing when there are none."""
    return " WHERE " + " AND ".join(clauses) if clauses else ""


@dataclass(frozen=True)
class ThreadFilters:
    """List/search/queue filters; None (or empty) means "any"."""

    ticket: str | None = None
    run_id: str | None = None
    state: str | None = None
    priority: str | None = None
    assignee: str | None = None  # assignee_name

    @classmethod
    def parse(cls, filters: ThreadFilters | Mapping[str, Any] | None = None) -> ThreadFilters:
        """Validate (``invalid_filter``) and normalise filters given as this class or a mapping."""
        if filters is None:
            return cls()
        if isinstance(filters, ThreadFilters):
            raw: dict[str, Any] = {f.name: getattr(filters, f.name) for f in fields(cls)}
        elif isinstance(filters, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(str(k) for k in filters if k not in known)
            if unknown:
                raise invalid_filter(f'unknown filter "{unknown[0]}": must be one of {", ".join(sorted(known))}')
            raw = dict(filters)
        else:
            raise invalid_filter("filters must be an object")
        return cls(
            ticket=text_filter(raw.get("ticket"), "ticket"),
            run_id=text_filter(raw.get("run_id"), "run_id"),
            state=enum_filter(ThreadState, raw.get("state"), "state"),
            priority=enum_filter(Priority, raw.get("priority"), "priority"),
            assignee=text_filter(raw.get("assignee"), "assignee"),
        )

    def where(self, alias: str, params: dict[str, Any]) -> list[str]:
        """SQL conditions on ``alias`` (a thread view or queue view row); fills ``params``.

        An assignee filter (never empty: empty means "any") also gets the literal
        ``assignee_name <> ''``: it changes no result, and it is the condition of the partial
        index ``ix_forum_thread_views_assigned`` (migration 13), which SQLite uses only when the
        query's WHERE holds that term itself.
        """
        clauses = []
        for name, column in (
            ("ticket", "ticket"), ("run_id", "run_id"), ("state", "state"),
            ("priority", "priority"), ("assignee", "assignee_name"),
        ):
            value = getattr(self, name)
            if value is not None:
                params[f"f_{name}"] = value
                clauses.append(f"{alias}.{column} = :f_{name}")
        if self.assignee is not None:
            clauses.append(f"{alias}.assignee_name <> ''")
        return clauses


@dataclass(frozen=True)
class Viewer:
    """Who is looking: ``viewer_type`` (human|agent) and ``viewer_id`` (an actor name)."""

    viewer_type: str
    viewer_id: str

    @classmethod
    def parse(cls, viewer_type: Any, viewer_id: Any, *, required: bool = False) -> Viewer | None:
        """Both or neither (None); ``invalid_filter`` for a half-given or invalid viewer."""
        vtype = text_filter(viewer_type, "viewer_type")
        vid = text_filter(viewer_id, "viewer_id")
        if vtype is None and vid is None and not required:
            return None
        if vtype is None:
            raise invalid_filter("viewer_type is required")
        if vid is None or not vid.strip():
            raise invalid_filter("viewer_id is required")
        parsed = enum_filter(ViewerType, vtype, "viewer_type")
        assert parsed is not None
        return cls(parsed, vid)
