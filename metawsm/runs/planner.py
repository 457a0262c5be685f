"""Turning a run request into a frozen RunSpec, its ordered steps and its agent slots.

Planning resolves everything that can fail early (unknown agents or profiles, repos that
cannot be found, a missing bootstrap brief field) and has no side effects, so ``--dry-run``
is simply "plan and show".
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from metawsm import ids
from metawsm.clock import now_text
from metawsm.defaults import DEFAULT_DB_PATH
from metawsm.policy import WORKSPACE_STRATEGIES, AgentProfile, Policy, redacted_policy
from metawsm.runs.model import BRIEF_FIELDS, AgentSpec, Brief, RunError, RunRequest, RunSpec
from metawsm.runs.sockets import tmux_socket_for

STEP_VERIFY = "verify_ticket"
STEP_WORKSPACE = "provision_workspace"
STEP_DOCS = "seed_docs"
STEP_RUN_FILE = "write_run_file"
STEP_AGENT = "start_agent"

FULL_AUTO = "--full-auto"  # codex runs without asking for approval (runner_options.full_auto)

_SAFE = re.compile(r"[^a-z0-9]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _checked_names(values: list[str], what: str) -> list[str]:
    """Tickets and repo names become paths, branches and session names: keep them plain."""
    names = [v.strip() for v in values if v.strip()]
    for name in names:
        if not _NAME.fullmatch(name) or ".." in name:
            raise RunError(f'invalid {what} "{name}": use letters, digits, ".", "_" or "-" (max 100)',
                           code="invalid_run")
    if len({n.lower() for n in names}) != len(names):
        raise RunError(f"duplicate {what} in the request", code="invalid_run")
    return names


@dataclass(frozen=True)
class AgentSlot:
    agent: str
    workspace: str
    session: str
    workspace_path: str


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    steps: list[tuple[str, str]]  # (ticket, step name)
    slots: list[AgentSlot]
    brief: Brief | None


def missing_brief_field(brief: object) -> str | None:
    """The label of the first empty brief field, or None."""
    for field, label in BRIEF_FIELDS:
        if not str(getattr(brief, field, "") or "").strip():
            return label
    return None


def brief_from_request(request: RunRequest) -> Brief:
    given = request.brief
    label = missing_brief_field(given) if given is not None else BRIEF_FIELDS[0][1]
    if given is None or label is not None:
        raise RunError(
            f'missing required bootstrap intake field "{label}"; provide all fields via flags in non-interactive mode',
            code="run_brief_incomplete",
        )
    return Brief(
        goal=given.goal.strip(),
        scope=given.scope.strip(),
        done_criteria=given.done_criteria.strip(),
        constraints=given.constraints.strip(),
        merge_intent=given.merge_intent.strip(),
        qa=list(given.qa),
    )


def workspace_name(ticket: str, run_id: str) -> str:
    slug = _SAFE.sub("-", ticket.lower()).strip("-") or "ticket"
    return f"{slug}-{run_id[-6:]}"


def resolve_command(profile: AgentProfile, prompt_file: str, prompt: str) -> list[str]:
    """The agent's argv from its profile (frozen into the spec at run creation)."""
    command = profile.runner_options.command
    if profile.runner == "shell":
        argv = shlex.split(command) if isinstance(command, str) else list(command)
    elif profile.runner == "command":
        template = shlex.split(command) if isinstance(command, str) else list(command)
        argv = [part.replace("{prompt_file}", prompt_file).replace("{prompt}", prompt) for part in template]
    elif profile.runner == "codex":
        if shutil.which("codex") is None:
            raise RunError(f'agent profile "{profile.name}" uses the codex runner but codex is not installed')
        argv = (shlex.split(command) if isinstance(command, str) else list(command)) if command else ["codex", prompt]
        if profile.runner_options.full_auto and argv and FULL_AUTO not in argv:
            argv.insert(1, FULL_AUTO)  # an option of codex itself, so right after the program
    else:
        raise RunError(f'agent profile "{profile.name}" has unsupported runner "{profile.runner}"')
    if not argv:
        raise RunError(f'agent profile "{profile.name}" has an empty command')
    return argv


def plan_run(request: RunRequest, policy: Policy, *, policy_path: str, server_url: str, base_dir: Path,
             db_path: Path | None = None) -> Plan:
    mode = request.mode
    if mode not in ("run", "bootstrap"):
        raise RunError(f'invalid mode "{mode}": must be run or bootstrap')
    strategy = request.workspace_strategy
    if strategy and strategy not in WORKSPACE_STRATEGIES:  # empty: the policy's default
        raise RunError(f'invalid workspace_strategy "{strategy}": must be one of {", ".join(WORKSPACE_STRATEGIES)}',
                       code="invalid_run")
    tickets = _checked_names(request.tickets, "ticket")
    repos = _checked_names(request.repos, "repo name")
    if not tickets:
        raise RunError("at least one --ticket is required")
    if not repos:
        raise RunError("at least one --repos entry is required")
    brief = brief_from_request(request) if mode == "bootstrap" else None
    run_id = ids.new_id(ids.RUN)
    profiles = {p.name: p for p in policy.agent_profiles}
    wanted = request.agents or [a.name for a in policy.agents]
    known = {a.name: a for a in policy.agents}
    if len(set(wanted)) != len(wanted):  # one session per agent and workspace
        raise RunError("duplicate agent in the request", code="invalid_run")
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise RunError(f'unknown agent "{unknown[0]}": the policy defines {", ".join(known) or "none"}')
    root = Path(policy.workspace.root)
    if not root.is_absolute():
        root = base_dir / root
    agents: list[AgentSpec] = []
    first_ws = workspace_name(tickets[0], run_id)
    for name in wanted:
        profile = profiles[known[name].profile]
        prompt_file = str(root / first_ws / ".metawsm" / f"prompt-{name}.md")
        prompt = profile.base_prompt or f"You are agent {name} working on {', '.join(tickets)}."
        agents.append(AgentSpec(name=name, profile=profile.name, runner=profile.runner,
                                command=resolve_command(profile, prompt_file, prompt)))
    doc_home = request.doc_home_repo.strip() or repos[0]
    if doc_home not in repos:
        raise RunError(f'doc home repo "{doc_home}" is not one of the run\'s repos ({", ".join(repos)})')
    cwd = request.cwd.strip() or str(base_dir)
    spec = RunSpec(
        run_id=run_id,
        mode=mode,  # type: ignore[arg-type]  # checked against the RunMode literals above
        tickets=tickets,
        repos=repos,
        doc_home_repo=doc_home,
        doc_seed_mode=policy.docs.seed_mode,
        base_branch=request.base_branch.strip() or policy.workspace.base_branch,
        workspace_strategy=strategy or policy.workspace.default_strategy,
        agents=agents,
        policy_path=policy_path,
        dry_run=request.dry_run,
        created_at=now_text(),
        cwd=cwd,
        server_url=server_url,
        workspace_root=str(root),
        workspace_provider=policy.workspace.provider,
        docs_provider=policy.docs.provider,
        tmux_socket=tmux_socket_for(policy.tmux.socket, db_path or base_dir / DEFAULT_DB_PATH),
        session_pattern=policy.tmux.session_pattern,
        policy=redacted_policy(policy),
    )
    from metawsm.runs.tmux import session_name

    steps: list[tuple[str, str]] = []
    slots: list[AgentSlot] = []
    for ticket in tickets:
        workspace = workspace_name(ticket, run_id)
        if spec.docs_provider != "none":
            steps.append((ticket, STEP_VERIFY))
        steps.append((ticket, STEP_WORKSPACE))
        if spec.docs_provider != "none" and spec.doc_seed_mode != "none":
            steps.append((ticket, STEP_DOCS))
        steps.append((ticket, STEP_RUN_FILE))
        for agent in agents:
            steps.append((ticket, f"{STEP_AGENT}:{agent.name}"))
            path = root / workspace / repos[0] if len(repos) == 1 else root / workspace
            slots.append(AgentSlot(agent.name, workspace, session_name(spec.session_pattern, agent.name, workspace),
                                   str(path)))
    return Plan(spec=spec, steps=steps, slots=slots, brief=brief)
