"""One registry entry per forum command (metawsm/forum/registry.py), and every place that must
agree with it: the message unions, the intake's planners, the write model's handlers, the topics,
the API routes, the CLI commands, the vocabularies the CLI shows and the docs.

Each test names what is missing and where, so adding a command is a matter of following the
failures.  The write model's behaviour per command is tested in tests/test_write_model.py.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from metawsm.api import forum_routes
from metawsm.api.app import route_table
from metawsm.cli import forum_cmd
from metawsm.cli.client import DaemonClient
from metawsm.cli.main import cli
from metawsm.forum import commands, enums, registry, write_model
from metawsm.forum.messages import COMMAND_NAMES, EVENT_TYPES, CommandBody, EventBody
from metawsm.forum.registry import COMMANDS, WRITES, CommandSpec, RegistryMismatch, WriteSpec
from metawsm.forum.requests import WriteRequest
from metawsm.forum.topics import Topics

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _ids(specs: Any) -> list[str]:
    return [spec.name for spec in specs]


# -- the registry itself --------------------------------------------------------------------------


def test_the_registry_covers_the_message_and_request_unions() -> None:
    assert {c.body for c in COMMANDS} == set(typing.get_args(CommandBody)), "messages.CommandBody vs registry.COMMANDS"
    assert {e for c in COMMANDS for e in c.events} == set(typing.get_args(EventBody)), "messages.EventBody"
    assert {w.request for w in WRITES} == set(typing.get_args(WriteRequest)), "requests.WriteRequest vs WRITES"
    assert set(COMMAND_NAMES) == {c.name for c in COMMANDS}
    assert set(EVENT_TYPES) == {registry.tag(e) for c in COMMANDS for e in c.events}


def test_a_missing_entry_is_named_with_the_table_it_is_missing_from() -> None:
    class Known:
        pass

    class Added:
        pass

    with pytest.raises(RegistryMismatch) as caught:
        registry.require_all("metawsm/forum/write_model.py HANDLERS", {Known: 1}, [Known, Added], "command body")
    assert str(caught.value) == ("metawsm/forum/write_model.py HANDLERS has no entry for command body Added"
                                 " (see metawsm/forum/registry.py)")
    with pytest.raises(RegistryMismatch, match="has an entry for Added, which is not a registered command body"):
        registry.require_all("HANDLERS", {Known: 1, Added: 2}, [Known], "command body")


# -- the forum's own tables -----------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_every_command_has_a_handler_an_event_type_and_a_topic(command: CommandSpec) -> None:
    assert command.body in write_model.HANDLERS, f"metawsm/forum/write_model.py HANDLERS lacks {command.name}"
    assert registry.EVENT_TYPE_OF_COMMAND[command.name] == command.event_type
    assert Topics().command(command.name) in Topics().all_commands()
    for event in command.events:
        assert Topics().event(registry.tag(event)) in Topics().all_events()


@pytest.mark.parametrize("write", WRITES, ids=_ids(WRITES))
def test_every_write_has_a_planner_and_a_failure_code(write: WriteSpec) -> None:
    assert write.request in commands.PLANNERS, f"metawsm/forum/commands.py PLANNERS lacks {write.request.__name__}"
    assert registry.FAILURE_CODES[write.name] == write.failure_code
    assert re.fullmatch(r"forum_[a-z_]+_failed", write.failure_code), write.failure_code


# -- the API --------------------------------------------------------------------------------------


ROUTES = route_table().routes


@pytest.mark.parametrize("write", WRITES, ids=_ids(WRITES))
def test_every_write_is_served_at_its_path_with_its_request_body(write: WriteSpec) -> None:
    assert write.name in forum_routes.WRITE_HANDLERS, f"metawsm/api/forum_routes.py WRITE_HANDLERS lacks {write.name}"
    served = [r for r in ROUTES if r.method == "POST" and r.path == write.path]
    assert len(served) == 1, f"no POST {write.path} route for the write {write.name}"
    route = served[0]
    assert (route.body, route.summary, route.handler) == (
        write.request, write.summary, forum_routes.WRITE_HANDLERS[write.name][0])


# -- the CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", WRITES, ids=_ids(WRITES))
def test_every_write_has_a_cli_command(write: WriteSpec) -> None:
    assert write.cli in forum_cmd.forum.commands, f"metawsm/cli/forum_cmd.py has no `metawsm forum {write.cli}`"
    assert write.cli in CLI_SAMPLES, f"tests/test_forum_registry.py CLI_SAMPLES has no invocation of forum {write.cli}"


def test_the_cli_vocabularies_are_the_forums_enums() -> None:
    def values(enum_type: Any) -> str:
        return "|".join(member.value for member in enum_type)

    assert forum_cmd.STATES == values(enums.ThreadState)
    assert forum_cmd.PRIORITIES == values(enums.Priority)
    assert forum_cmd.ACTOR_TYPES == values(enums.ActorType)
    assert forum_cmd.VIEWER_TYPES == values(enums.ViewerType)
    assert forum_cmd.QUEUE_TYPES == values(enums.QueueType)
    assert forum_cmd.CONTROL_TYPES == values(enums.ControlType)
    options = {p.name: p for p in forum_cmd.forum.commands["state"].params if isinstance(p, click.Option)}
    assert options["state"].metavar == forum_cmd.STATES


# How each write's CLI command is run against a real daemon ({thread_id}: the thread `ask` opened).
CLI_SAMPLES: dict[str, list[str]] = {
    "ask": ["--ticket", "REG-1", "--title", "Registry", "--body", "first"],
    "post": ["--thread-id", "{thread_id}", "--body", "a post"],
    "answer": ["--thread-id", "{thread_id}", "--body", "an answer"],
    "assign": ["--thread-id", "{thread_id}", "--assignee", "carol"],
    "state": ["--thread-id", "{thread_id}", "--state", "waiting_human"],
    "priority": ["--thread-id", "{thread_id}", "--priority", "urgent"],
    "close": ["--thread-id", "{thread_id}"],
    "signal": ["--run-id", "run-reg", "--ticket", "REG-1", "--agent-name", "alice", "--type", "completion"],
}


def test_every_cli_write_reaches_its_command(serve_process: Any) -> None:
    """Run each write's CLI command against a real daemon: the events it adds are its commands'."""
    server = serve_process.url
    client = DaemonClient(server)
    runner = CliRunner()
    env = {"METAWSM_SERVER": None, "METAWSM_TOKEN": None}
    thread_id = ""
    cursor = 0
    for write in sorted(WRITES, key=lambda w: (w.name != "open_thread", w.name == "close_thread")):
        args = [a.format(thread_id=thread_id) for a in CLI_SAMPLES[write.cli]]
        result = runner.invoke(cli, ["forum", write.cli, *args, "--server", server], env=env)
        assert result.exit_code == 0, f"metawsm forum {write.cli}: {result.output}"
        if write.name == "open_thread":
            thread_id = result.output.split()[0]
        page = client.get("/api/v1/forum/events", {"cursor": cursor}).data
        cursor = page["next_cursor"]
        wanted = [c.event_type for c in write.commands]
        assert [e["envelope"]["event_type"] for e in page["events"]] == wanted, (
            f"metawsm forum {write.cli} should reach POST {write.path} ({write.name})")


# -- the docs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_every_command_and_its_event_are_in_the_forum_doc(command: CommandSpec) -> None:
    table = (DOCS / "forum.md").read_text().split("## Commands and events", 1)[1].split("\n## ", 1)[0]
    labels = (f"| `{command.name}`", f"| {command.name.replace('_', ' ')}")  # `open_thread` or control signal
    rows = [line for line in table.splitlines() if line.startswith(labels)]
    assert rows, f"docs/forum.md's Commands and events table has no row for {command.name}"
    assert f"`{command.event_type}`" in rows[0], f"docs/forum.md: {command.name} produces {command.event_type}"
