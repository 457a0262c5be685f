"""Agents' tmux sessions on the private metawsm tmux server (``tmux -L <socket>``).

Rules every method follows:

* Commands are argv lists handed to :func:`subprocess.run`, never a shell. Several tmux
  commands that must happen together go into ONE tmux invocation, separated by ``;``
  arguments: the server runs such a sequence without returning to its event loop, so e.g. an
  agent that exits at once cannot die before ``remain-on-exit`` and ``pipe-pane`` are in place,
  and a failing command (``has-session`` of a missing session) stops the rest of the sequence.
* Always ``tmux -L <socket>``, and by default ``-f /dev/null``: the private server does not
  read the user's ``~/.tmux.conf`` (a ``default-shell``, ``base-index`` or hook there must not
  change how agents start). Pass ``config_file=None`` to let tmux read it.
* Targets are exact: ``=NAME`` (session) and ``=NAME:`` (its current window/pane). A plain
  ``-t ab`` would also match a session called ``abc``.
* Agent argv: with two or more elements tmux execs the program directly (no shell at all);
  a single element is a shell command line that tmux runs through its default shell
  (``/bin/sh -c`` unless ``$SHELL`` says otherwise) — pass ``["sh", "-c", "..."]`` to be explicit.
* PATH: tmux gives a new pane the PATH of the client that asked for it, overriding a
  ``-e PATH=...``. So when ``env`` has a PATH, the tmux client for ``new-session`` and
  ``respawn-pane`` runs with that PATH; the pane then gets it, and the program is found on it.

Two tmux parsing quirks are neutralised here so that any string reaches the agent verbatim:
an argument ending in ``;`` would be read as a command separator (it is escaped as ``\\;``),
and the arguments tmux expands as formats (``-c`` start directory, the ``pipe-pane`` command)
get ``#`` doubled.

Exit status: a pane counts as dead only once tmux has its exit status (or signal). tmux can
see the pty close before it reaps the process and, built with libutempter, can even miss the
SIGCHLD altogether (tmux issue #311); :meth:`Tmux.pane_info` then sends the server a SIGCHLD,
the workaround tmux's author recommends, so the status is collected.

Activity: ``#{window_activity}`` moves whenever a pane of the window prints, attached or not;
``#{session_activity}`` does not move when a detached session prints, so it is never used.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

__all__ = [
    "LOG_OPTION",
    "PaneInfo",
    "Tmux",
    "TmuxError",
    "sanitize_session_name",
    "session_name",
]

MAX_SESSION_NAME = 64
# Session user option remembering the pane's log file, so respawn can re-establish the pipe
# even from a Tmux object created after a daemon restart.
LOG_OPTION = "@metawsm_log"

_PANE_FORMAT = "\t".join(
    ["#{session_name}", "#{pane_pid}", "#{pane_dead}", "#{pane_dead_status}", "#{window_activity}",
     "#{pane_dead_signal}", "#{pid}"]
)
# stderr fragments meaning "that session (or the whole server) is not there".
_MISSING = (
    "can't find session",
    "can't find window",
    "can't find pane",
    "no server running",
    "error connecting to",
    "server exited unexpectedly",
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class TmuxError(Exception):
    """A tmux command failed; ``str()`` is one line with the command and tmux's stderr."""

    def __init__(self, message: str, *, command: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "") -> None:
        self.message = " ".join(message.split())
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class PaneInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What tmux says about a session's (current) pane.

    tmux sees the pty close slightly before it reaps the process; in between, the pane is
    reported alive here, so ``pane_dead`` always comes with ``dead_status`` (normal exit) or
    ``dead_signal`` (killed by a signal; ``dead_status`` is then None).
    """

    session_exists: bool
    pane_pid: int | None = None
    pane_dead: bool = False
    dead_status: int | None = None  # exit status once the pane is dead
    window_activity: float | None = None  # epoch seconds of the window's last output
    dead_signal: int | None = None  # signal number when the process was killed


# --------------------------------------------------------------------------- names


def sanitize_session_name(text: str) -> str:
    """A tmux-safe session name: ``[A-Za-z0-9_-]`` only (tmux forbids ``.`` and ``:``).

    Runs of other characters become one ``-``; leading/trailing ``-`` are trimmed; the result
    is cut to 64 characters and is never empty (``"session"`` as a last resort).
    """
    name = _UNSAFE.sub("-", text).strip("-")
    name = name[:MAX_SESSION_NAME].strip("-")
    return name or "session"


def session_name(pattern: str, agent: str, workspace: str) -> str:
    """Apply ``tmux.session_pattern`` (``{agent}``, ``{workspace}``) and sanitise the result."""
    try:
        text = pattern.format(agent=agent, workspace=workspace)
    except (KeyError, IndexError, ValueError):
        # Unknown placeholder or stray brace: substitute only what we know.
        text = pattern.replace("{agent}", agent).replace("{workspace}", workspace)
    return sanitize_session_name(text)


# --------------------------------------------------------------------------- argv helpers


def _arg(text: str) -> str:
    """Protect a trailing ``;`` (tmux would take it as a command separator)."""
    return text[:-1] + "\\;" if text.endswith(";") else text


def _fmt(text: str) -> str:
    """Escape an argument tmux expands as a format (``#`` starts a format)."""
    return _arg(text.replace("#", "##"))


def _is_missing(stderr: str) -> bool:
    low = stderr.lower()
    return any(marker in low for marker in _MISSING)


def _env_args(env: Mapping[str, str] | None) -> list[str]:
    args: list[str] = []
    for key, value in (env or {}).items():
        if not key or "=" in key:
            raise TmuxError(f"invalid environment variable name {key!r}")
        args += ["-e", _arg(f"{key}={value}")]
    return args


def _path_of(env: Mapping[str, str] | None) -> str | None:
    return (env or {}).get("PATH")


def _pipe_command(log_path: str | os.PathLike[str]) -> str:
    # pipe-pane takes a shell command by nature; the path is shell-quoted, then format-escaped.
    return _fmt(f"cat >> {shlex.quote(os.fspath(log_path))}")


class _Pane(msgspec.Struct, frozen=True):
    info: PaneInfo
    unreaped: bool  # the pty is closed but tmux has not collected the exit status yet
    server_pid: int | None


def _parse_pane(name: str, stdout: str) -> _Pane:
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 7 or parts[0] != name:
            continue
        _, pid, dead, status, activity, signal_number, server_pid = parts
        exit_status = int(status) if dead == "1" and status.lstrip("-").isdigit() else None
        exit_signal = int(signal_number) if dead == "1" and signal_number.isdigit() else None
        finished = exit_status is not None or exit_signal is not None
        info = PaneInfo(
            session_exists=True,
            pane_pid=int(pid) if pid.isdigit() else None,
            pane_dead=finished,
            dead_status=exit_status,
            window_activity=float(activity) if activity.isdigit() else None,
            dead_signal=exit_signal,
        )
        return _Pane(info, dead == "1" and not finished,
                     int(server_pid) if server_pid.isdigit() else None)
    raise TmuxError(f"tmux: unexpected pane info for session {name!r}: {stdout.strip()!r}")


# --------------------------------------------------------------------------- the client


class Tmux:
    """One private tmux server, addressed by its ``-L`` socket name."""

    def __init__(self, socket: str, binary: str = "tmux", *, config_file: str | None = os.devnull,
                 timeout: float = 10.0) -> None:
        if not socket.strip():
            raise TmuxError("tmux socket name cannot be empty")
        self.socket = socket
        self.binary = binary
        self.config_file = config_file
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Tmux(socket={self.socket!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _argv(self, commands: Sequence[Sequence[str]]) -> list[str]:
        argv = [self.binary, "-L", self.socket]
        if self.config_file is not None:
            argv += ["-f", self.config_file]
        for index, command in enumerate(commands):
            if index:
                argv.append(";")
            argv += list(command)
        return argv

    def _exec(self, *commands: Sequence[str], path: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run one tmux client; ``path``, when given, is its PATH (which a pane it spawns inherits)."""
        argv = self._argv(commands)
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        if path is not None:
            env["PATH"] = path
        try:
            for _ in range(3):
                result = subprocess.run(argv, capture_output=True, text=True,
                                        timeout=self.timeout, env=env, stdin=subprocess.DEVNULL,
                                        check=False)
                # A client that reached a server in the middle of exiting (kill-server, last
                # session gone) ran nothing; a new server is started by the next attempt.
                if "server exited unexpectedly" not in result.stderr:
                    break
            return result
        except FileNotFoundError:
            raise TmuxError(f"tmux binary {self.binary!r} not found; install tmux",
                            command=argv) from None
        except subprocess.TimeoutExpired:
            raise TmuxError(f"tmux -L {self.socket} {commands[0][0]} timed out after "
                            f"{self.timeout:g}s", command=argv) from None

    def _fail(self, result: subprocess.CompletedProcess[str], what: str) -> TmuxError:
        stderr = result.stderr.strip()
        detail = stderr or f"exit status {result.returncode}"
        return TmuxError(f"tmux -L {self.socket} {what} failed: {detail}",
                         command=list(result.args), returncode=result.returncode, stderr=stderr)

    def _run(self, what: str, *commands: Sequence[str], path: str | None = None) -> str:
        result = self._exec(*commands, path=path)
        if result.returncode != 0:
            raise self._fail(result, what)
        return result.stdout

    @staticmethod
    def _check_name(name: str) -> None:
        if not name or sanitize_session_name(name) != name:
            raise TmuxError(f"invalid tmux session name {name!r} (use sanitize_session_name)")

    # -- queries -----------------------------------------------------------------------------

    def available(self) -> bool:
        """Whether the tmux binary can be run at all."""
        if shutil.which(self.binary) is None:
            return False
        try:
            result = subprocess.run([self.binary, "-V"], capture_output=True, text=True,
                                    timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    def has_session(self, name: str) -> bool:
        result = self._exec(["has-session", "-t", f"={name}"])
        if result.returncode == 0:
            return True
        if _is_missing(result.stderr):
            return False
        raise self._fail(result, f"has-session {name}")

    def panes(self) -> dict[str, PaneInfo]:
        """Every session's first pane, in one ``list-panes -a`` (empty when no server runs).

        Panes whose pty closed before tmux collected their exit status are left out: asking
        :meth:`pane_info` for them nudges the server and reads them exactly.
        """
        result = self._exec(["list-panes", "-a", "-F", _PANE_FORMAT])
        if result.returncode != 0:
            if _is_missing(result.stderr):
                return {}
            raise self._fail(result, "list-panes -a")
        found: dict[str, PaneInfo] = {}
        for line in result.stdout.splitlines():
            name = line.split("\t", 1)[0]
            if name in found:
                continue
            pane = _parse_pane(name, line)
            if not pane.unreaped:
                found[name] = pane.info
        return found

    def pane_info(self, name: str) -> PaneInfo:
        """Pid, dead flag, exit status and window activity; ``session_exists=False`` if gone.

        ``display-message`` silently falls back to another pane when its target is missing,
        so a ``has-session`` guard runs first in the same invocation (its failure stops it).
        """
        for attempt in range(2):
            result = self._exec(["has-session", "-t", f"={name}"],
                                ["display-message", "-p", "-t", f"={name}:", _PANE_FORMAT])
            if result.returncode != 0:
                if _is_missing(result.stderr):
                    return PaneInfo(session_exists=False)
                raise self._fail(result, f"display-message {name}")
            pane = _parse_pane(name, result.stdout)
            if not pane.unreaped or attempt:
                break
            self._nudge(pane.server_pid)
        return pane.info

    @staticmethod
    def _nudge(server_pid: int | None) -> None:
        """Make the tmux server reap exited children it was not told about.

        tmux built with libutempter can miss a SIGCHLD (tmux issue #311): the pane's process
        is then a zombie forever and the pane never gets its exit status. The workaround
        tmux's author gives is to send the server a SIGCHLD, which only makes it run its
        ``waitpid`` loop. Done only for a pane whose pty has closed without a status.
        """
        if server_pid:
            try:
                os.kill(server_pid, signal.SIGCHLD)
            except OSError:
                pass

    def list_sessions(self) -> list[str]:
        result = self._exec(["list-sessions", "-F", "#{session_name}"])
        if result.returncode != 0:
            if _is_missing(result.stderr):
                return []
            raise self._fail(result, "list-sessions")
        return [line for line in result.stdout.splitlines() if line]

    def capture(self, name: str, lines: int = 50) -> str:
        """The last ``lines`` lines of the pane (history included), trailing blank lines dropped."""
        lines = max(1, int(lines))
        out = self._run(f"capture-pane {name}",
                        ["capture-pane", "-p", "-J", "-t", f"={name}:", "-S", f"-{lines}"])
        rows = out.rstrip("\n").split("\n")
        while rows and not rows[-1].strip():
            rows.pop()
        return "\n".join(rows[-lines:])

    # -- actions -----------------------------------------------------------------------------

    def new_session(self, name: str, workdir: str | os.PathLike[str], argv: Sequence[str],
                    env: Mapping[str, str] | None = None,
                    log_path: str | os.PathLike[str] | None = None) -> PaneInfo:
        """Start ``argv`` detached in a new session ``name`` in ``workdir``.

        One tmux invocation creates the session (with ``-e`` for each of ``env``), turns on
        ``remain-on-exit`` for its window (an agent that exits stays visible as a dead pane
        with its exit status) and, with ``log_path``, pipes the pane's output into that file
        (appending; its parent directory is created). Raises :class:`TmuxError` when the name
        is taken. See the module docstring for how ``argv`` is executed.
        """
        self._check_name(name)
        argv = list(argv)
        if not argv or not argv[0]:
            raise TmuxError(f"tmux session {name}: empty command")
        workdir = Path(workdir)
        if not workdir.is_dir():
            raise TmuxError(f"tmux session {name}: working directory {workdir} does not exist")
        target = f"={name}:"
        commands: list[list[str]] = [
            ["new-session", "-d", "-s", name, "-c", _fmt(str(workdir)), *_env_args(env),
             "--", *(_arg(a) for a in argv)],
            ["set-option", "-w", "-t", target, "remain-on-exit", "on"],
        ]
        if log_path is not None:
            log = Path(log_path)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.touch(exist_ok=True)
            commands += [
                ["set-option", "-t", target, LOG_OPTION, _arg(str(log))],
                ["pipe-pane", "-o", "-t", target, _pipe_command(log)],
            ]
        commands.append(["display-message", "-p", "-t", target, _PANE_FORMAT])
        return _parse_pane(name, self._run(f"new-session {name}", *commands, path=_path_of(env))).info

    def respawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
                workdir: str | os.PathLike[str] | None = None,
                log_path: str | os.PathLike[str] | None = None) -> PaneInfo:
        """Restart the session's pane with ``argv`` (``respawn-pane -k``: a live one is killed).

        The session (and its name) stays. The output pipe is re-established to ``log_path``,
        or to the log recorded at ``new_session``. ``pipe-pane`` runs without ``-o`` here on
        purpose: ``-o`` toggles, so it would *close* the pipe that survives a pane's death.
        """
        argv = list(argv)
        if not argv or not argv[0]:
            raise TmuxError(f"tmux session {name}: empty command")
        target = f"={name}:"
        if log_path is None:
            log_path = self._log_option(name)
        command = ["respawn-pane", "-k", "-t", target]
        if workdir is not None:
            command += ["-c", _fmt(str(workdir))]
        command += [*_env_args(env), "--", *(_arg(a) for a in argv)]
        commands: list[list[str]] = [["has-session", "-t", f"={name}"]]
        # ``-e`` reaches only the new process: the session's own environment (what a window opened
        # later, or ``show-environment``, sees) is updated too, or it would keep e.g. a revoked token.
        commands += [["set-environment", "-t", f"={name}", _arg(key), _arg(value)]
                     for key, value in (env or {}).items()]
        commands.append(command)
        if log_path:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            commands.append(["pipe-pane", "-t", target, _pipe_command(log_path)])
        commands.append(["display-message", "-p", "-t", target, _PANE_FORMAT])
        return _parse_pane(name, self._run(f"respawn-pane {name}", *commands, path=_path_of(env))).info

    def _log_option(self, name: str) -> str | None:
        result = self._exec(["show-options", "-v", "-t", f"={name}:", LOG_OPTION])
        if result.returncode != 0:
            return None
        return result.stdout.rstrip("\n") or None

    def kill_session(self, name: str) -> bool:
        """Kill exactly session ``name``; False when it was not there."""
        result = self._exec(["kill-session", "-t", f"={name}"])
        if result.returncode == 0:
            return True
        if _is_missing(result.stderr):
            return False
        raise self._fail(result, f"kill-session {name}")

    def send_keys(self, name: str, text: str, enter: bool = True) -> None:
        """Type ``text`` literally into the pane (``send-keys -l``), then Enter if asked."""
        target = f"={name}:"
        commands: list[list[str]] = [["has-session", "-t", f"={name}"]]
        if text:
            commands.append(["send-keys", "-t", target, "-l", "--", _arg(text)])
        if enter:
            commands.append(["send-keys", "-t", target, "Enter"])
        self._run(f"send-keys {name}", *commands)

    def kill_server(self) -> None:
        """Stop the whole private server; a server that is not running is fine."""
        result = self._exec(["kill-server"])
        if result.returncode != 0 and not _is_missing(result.stderr):
            raise self._fail(result, "kill-server")
