"""Every error code the code base can produce, against the two contracts that publish it:
docs/api.md's Errors table (the HTTP status) and docs/cli.md's exit codes (4xx → 2, 5xx and
unreachable → 1, and the documented exceptions).

The codes are collected, not listed: every :class:`Refusal` class (its own code and status),
every literal ``code=`` given to one when it is raised, every literal ``ApiError(status, code,
...)`` and ``error_response(status, code, ...)`` in ``metawsm/``, and every forum write's
failure code (``metawsm/forum/registry.py``).  A place that passes a code it computed must be
accounted for in ``DYNAMIC_SITES`` below, so a new one cannot slip past.

Each collected error is then raised in a handler behind the real ``errors_middleware`` on a real
aiohttp server, and fetched with the CLI's own ``DaemonClient``: the status and code the client
sees, and the exit code it would use, are what the docs say.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import pkgutil
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

import metawsm
from metawsm.actors.errors import ActorUnavailable, Refusal
from metawsm.api.app import errors_middleware
from metawsm.api.context import CONTEXT, ApiContext
from metawsm.api.errors import ApiError
from metawsm.api.metrics import Metrics
from metawsm.cli import exit_codes
from metawsm.cli.client import ApiFailure, DaemonClient, DaemonUnreachable
from metawsm.cli.main import cli
from metawsm.forum import errors as forum_errors
from metawsm.forum.errors import ForumError
from metawsm.forum.registry import WRITES
from metawsm.runs.model import GateBlocked
from metawsm.transport.redis_process import free_tcp_port

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "metawsm"
DOCS = ROOT / "docs"

# Places that pass a code they did not write literally, and where their codes are collected.
DYNAMIC_SITES = {
    "metawsm/api/app.py": "errors_middleware answers with an ApiError's or a Refusal's own code (collected "
                          "here), or with the reason of one of aiohttp's own HTTPExceptions",
    "metawsm/forum/errors.py": "for_command: a write's failure code (registry.WRITES, collected here)",
    "metawsm/forum/service.py": "a refused verdict's code and status: the write model's (failure codes and "
                                "forum_errors.KEPT_BY_COMMANDS, collected here)",
}

# What makes errors_middleware itself answer with each of its literal codes.
MIDDLEWARE_TRIGGERS: dict[str, Callable[[], BaseException]] = {
    "unavailable": lambda: ActorUnavailable("root/test", "restarting"),
    "payload_too_large": lambda: web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2),
    "method_not_allowed": lambda: web.HTTPMethodNotAllowed("GET", ["POST"]),
    "not_found": lambda: web.HTTPNotFound(),
    "internal_error": lambda: RuntimeError("a deliberate bug for the error-table test"),
}


@dataclass(frozen=True)
class Produced:
    code: str
    status: int
    where: str
    make: Callable[[], BaseException]  # an exception that reaches the middleware as this error


# -- collecting ---------------------------------------------------------------------------------


def _import_all() -> None:
    for module in pkgutil.walk_packages(metawsm.__path__, "metawsm."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def refusal_classes() -> list[type[Refusal]]:
    _import_all()
    found: list[type[Refusal]] = [Refusal]
    pending = [Refusal]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return found


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _literal(node: ast.expr | None, kind: type) -> object | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, kind) and not isinstance(node.value, bool):
        return node.value
    return None


def _choices(value: ast.expr) -> list[str] | None:
    """The strings an expression can be: a literal, or ``"a" if x else "b"`` (None: anything else)."""
    if isinstance(value, ast.IfExp):
        body, orelse = _choices(value.body), _choices(value.orelse)
        return None if body is None or orelse is None else body + orelse
    text = _literal(value, str)
    return None if text is None else [str(text)]


def _strings_assigned(function: ast.AST | None, name: str) -> list[str]:
    """What a function assigns to ``name`` (``code = "a" if x else "b"``); [] unless all literal."""
    found: list[str] = []
    for node in ast.walk(function) if function is not None else ():
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            choices = _choices(node.value)
            if choices is None:
                return []
            found += choices
    return found


class _Scan(ast.NodeVisitor):
    def __init__(self, path: Path, classes: dict[str, type[Refusal]]) -> None:
        self.path = path
        self.classes = classes
        self.functions: list[ast.AST] = []
        self.produced: list[Produced] = []
        self.dynamic: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]  # same visitor for both function kinds

    def visit_Call(self, node: ast.Call) -> None:
        name = _name(node.func)
        where = f"{_rel(self.path)}:{node.lineno}"
        if name in ("ApiError", "error_response") and len(node.args) >= 2:
            status = _literal(node.args[0], int)
            codes = [_literal(node.args[1], str)]
            if codes == [None] and isinstance(node.args[1], ast.Name):
                codes = _strings_assigned(self.functions[-1] if self.functions else None, node.args[1].id) or [None]
            for code in codes:
                if status is None or code is None:
                    self.dynamic.append(where)
                elif name == "ApiError":
                    self.produced.append(Produced(code, status, where, _api_error(status, code)))
                else:
                    trigger = MIDDLEWARE_TRIGGERS.get(code)
                    assert trigger is not None, f"{where}: add a trigger for {code} to MIDDLEWARE_TRIGGERS"
                    self.produced.append(Produced(code, status, where, trigger))
        elif name in self.classes:
            keywords = {k.arg: k.value for k in node.keywords}
            if "code" in keywords or "status" in keywords:
                cls = self.classes[name]
                code = _literal(keywords.get("code"), str) if "code" in keywords else cls.code
                status = _literal(keywords.get("status"), int) if "status" in keywords else cls.status
                if code is None or status is None:
                    self.dynamic.append(where)
                else:
                    self.produced.append(Produced(str(code), int(status), where, _refusal(cls, str(code), int(status))))
        self.generic_visit(node)


def _api_error(status: int, code: str) -> Callable[[], BaseException]:
    return lambda: ApiError(status, code, f"{code} for the error-table test")


def _refusal(cls: type[Refusal], code: str, status: int) -> Callable[[], BaseException]:
    return lambda: cls(f"{code} for the error-table test", code=code, status=status)


def _class_refusal(cls: type[Refusal]) -> Callable[[], BaseException]:
    return lambda: cls(f"{cls.__name__} for the error-table test")


def scan_sources() -> tuple[list[Produced], list[str]]:
    classes = {cls.__name__: cls for cls in refusal_classes()}
    produced: list[Produced] = []
    dynamic: list[str] = []
    for path in sorted(SOURCE.rglob("*.py")):
        scan = _Scan(path, classes)
        scan.visit(ast.parse(path.read_text(), str(path)))
        produced += scan.produced
        dynamic += scan.dynamic
    return produced, dynamic


def every_error() -> list[Produced]:
    produced = [
        Produced(cls.code, cls.status, f"{cls.__module__}.{cls.__qualname__}", _class_refusal(cls))
        for cls in refusal_classes()
    ]
    produced += scan_sources()[0]
    for write in WRITES:  # a refused command's verdict, as ForumService raises it
        status = forum_errors.status_of(write.failure_code)
        produced.append(Produced(write.failure_code, status, f"metawsm/forum/registry.py {write.name}",
                                 _refusal(ForumError, write.failure_code, status)))
    unique: dict[tuple[str, int], Produced] = {}
    for item in produced:
        unique.setdefault((item.code, item.status), item)
    return sorted(unique.values(), key=lambda p: (p.code, p.status))


ERRORS = every_error()


# -- the docs -----------------------------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n#", 1)[0]


def documented_statuses() -> dict[str, set[int]]:
    """docs/api.md, Errors: code → the statuses its rows give it."""
    table: dict[str, set[int]] = defaultdict(set)
    for line in _section((DOCS / "api.md").read_text(), "## Errors").splitlines():
        row = re.match(r"\|\s*(\d{3})\s*\|([^|]*)\|", line)
        if row:
            for code in re.findall(r"`([a-z0-9_]+)`", row.group(2)):
                table[code].add(int(row.group(1)))
    return table


def documented_exit_codes() -> dict[int, str]:
    """docs/cli.md, the exit-code table: exit code → its meaning."""
    rows = re.findall(r"^\|\s*(\d)\s*\|(.*)\|\s*$", _section((DOCS / "cli.md").read_text(), "**Exit codes.**"),
                      flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def documented_exceptions() -> dict[str, int]:
    """Error codes docs/cli.md names in an exit code's row: the exceptions to 4xx → 2."""
    known = {e.code for e in ERRORS}
    return {code: exit_code for exit_code, meaning in documented_exit_codes().items()
            for code in re.findall(r"`([a-z0-9_]+)`", meaning) if code in known}


def expected_exit_code(status: int, code: str) -> int:
    exceptions = documented_exceptions()
    if code in exceptions:
        return exceptions[code]
    return 2 if 400 <= status < 500 else 1


# -- tests --------------------------------------------------------------------------------------


def test_the_collection_finds_the_codes_it_must() -> None:
    codes = {e.code for e in ERRORS}
    for code in ("forum_thread_not_found", "conflict", "close_blocked", "forum_open_failed", "invalid_json",
                 "invalid_limit", "not_found", "unauthorized", "unavailable", "internal_error", "invalid_run"):
        assert code in codes, f"{code} was not collected; the scan in tests/test_error_table.py missed it"


def test_every_place_that_computes_a_code_is_accounted_for() -> None:
    _, dynamic = scan_sources()
    unaccounted = sorted(site for site in dynamic if site.rsplit(":", 1)[0] not in DYNAMIC_SITES)
    assert not unaccounted, (
        f"these raise an error whose code or status is not a literal: {unaccounted}; collect their codes in "
        "tests/test_error_table.py and add the file to DYNAMIC_SITES"
    )


@pytest.mark.parametrize("error", ERRORS, ids=[f"{e.code}-{e.status}" for e in ERRORS])
def test_every_error_code_is_in_the_api_doc_with_its_status(error: Produced) -> None:
    documented = documented_statuses().get(error.code, set())
    assert error.status in documented, (
        f"{error.where} answers {error.code} with HTTP {error.status}, but docs/api.md's Errors table gives "
        f"{sorted(documented) or 'no row'}: add it there"
    )


def test_every_code_in_the_api_doc_is_produced() -> None:
    produced = {(e.code, e.status) for e in ERRORS}
    stale = sorted((code, status) for code, statuses in documented_statuses().items() for status in statuses
                   if (code, status) not in produced)
    assert not stale, f"docs/api.md's Errors table lists codes nothing produces: {stale}"


@pytest.mark.parametrize("error", ERRORS, ids=[f"{e.code}-{e.status}" for e in ERRORS])
def test_every_refusal_states_the_documented_exit_code(error: Produced) -> None:
    exception = error.make()
    expected = expected_exit_code(error.status, error.code)
    assert exit_codes.for_error(error.status, error.code) == expected, (
        f"metawsm/cli/exit_codes.py gives {error.code} (HTTP {error.status}) another exit code than docs/cli.md "
        f"({expected})"
    )
    if isinstance(exception, Refusal):
        assert (exception.code, exception.status, exception.exit_code) == (error.code, error.status, expected)


def test_the_exit_code_exceptions_are_the_documented_ones() -> None:
    assert exit_codes.EXCEPTIONS == documented_exceptions()
    assert set(documented_exit_codes()) == {exit_codes.OK, exit_codes.FAILURE, exit_codes.USAGE}


def test_the_forum_status_table_agrees_with_the_classes() -> None:
    for cls in (ForumError, *forum_errors.KEPT_BY_COMMANDS):
        assert forum_errors.status_of(cls.code) == cls.status
    for write in WRITES:
        assert forum_errors.status_of(write.failure_code) == ForumError.status == 400


def _app() -> web.Application:
    """An application with the daemon's real error middleware and nothing else."""
    app = web.Application(middlewares=[errors_middleware])
    app[CONTEXT] = ApiContext(system=None, services=None, forum=None, metrics=Metrics())  # type: ignore[arg-type]  # only the middleware runs: no actors
    return app


async def test_the_middleware_answers_and_the_client_exits_as_documented() -> None:
    app = _app()

    async def fail(request: web.Request) -> web.Response:
        raise ERRORS[int(request.match_info["index"])].make()

    app.router.add_get("/errors/{index}", fail)
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    async with TestServer(app) as server:
        client = DaemonClient(str(server.make_url("")), token="")
        for index, error in enumerate(ERRORS):
            with pytest.raises(ApiFailure) as caught:
                await loop.run_in_executor(None, client.get, f"/errors/{index}")
            failure = caught.value
            answer = (failure.status, failure.code, failure.exit_code)
            wanted = (error.status, error.code, expected_exit_code(error.status, error.code))
            if answer != wanted:
                problems.append(f"{error.where}: the API and CLI give (status, code, exit) {answer}, not {wanted}")
    assert not problems, "\n".join(problems)


def test_an_unreachable_daemon_exits_1() -> None:
    with pytest.raises(DaemonUnreachable) as caught:
        DaemonClient(f"http://127.0.0.1:{free_tcp_port()}", token="").get("/api/v1/forum/threads")
    assert caught.value.exit_code == 1 == exit_codes.FAILURE
    assert "daemon unreachable" in documented_exit_codes()[1]



async def test_a_refused_close_gate_exits_1_with_the_gates_message() -> None:
    """`metawsm close` has no special case: the refusal's code decides, through ApiFailure."""
    gate = "agent a@ws missing forum completion signal; close blocked"
    app = _app()

    async def close(_request: web.Request) -> web.Response:
        raise GateBlocked(gate)

    app.router.add_post("/api/v1/runs/{run_id}/close", close)
    async with TestServer(app) as server:
        argv = ["close", "--run-id", "run-1", "--server", str(server.make_url("")).rstrip("/")]
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: CliRunner().invoke(cli, argv, env={"METAWSM_TOKEN": "test-token"}))
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"error: {gate}\n")
