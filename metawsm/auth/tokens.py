"""Who is calling: the operator token, agent tokens and the UI's session cookie.

Three kinds of credential, one :class:`Identity` each resolves to:

* the **operator token** (``mwo_…``): one per daemon, kept in the token file next to the
  database (or given by ``METAWSM_TOKEN``).  It may do everything, and may say in a body which
  ``actor_type`` and ``actor_name`` a write is recorded as.
* **agent tokens** (``mwa_…``): one per agent of a run, put into the agent's session
  environment.  A request made with one *is* that agent: the API records it as
  ``actor_type agent`` with the agent's name, and refuses what an agent may not do.
* the **UI session**: what the browser holds after opening the login link, in two halves that
  only count together: an HttpOnly cookie (``mws_…``; page scripts cannot read it) and a page
  key (``mwk_…``) that the page keeps in its origin's ``localStorage`` and sends as a header
  (or WebSocket subprotocol).  Cookies are not separated by port, so any server on
  ``127.0.0.1:<other port>`` the user visits receives the cookie; it never sees the page key,
  which lives in storage scoped to our exact origin.  Both are HMACs of the operator token, so
  rotating the token logs every browser out without a session table.

Checks are in memory (a dict lookup and one constant-time compare): authentication is on the
path of every request and must not cost a database read.  Agent tokens are persisted as
SHA-256 hashes (``agent_tokens``) so they survive a daemon restart, while their agents keep
running in tmux.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from typing import Literal

import msgspec

from metawsm.clock import now_text
from metawsm.store import Database, write_transaction
from metawsm.store.schema_auth import TABLE

__all__ = ["AGENT_PREFIX", "OPERATOR", "OPERATOR_PREFIX", "SESSION_PREFIX", "Identity", "TokenRegistry",
           "new_operator_token"]

OPERATOR_PREFIX = "mwo_"
AGENT_PREFIX = "mwa_"
SESSION_PREFIX = "mws_"
PAGE_KEY_PREFIX = "mwk_"
_SESSION_CONTEXT = b"metawsm-ui-session-v1"
_PAGE_KEY_CONTEXT = b"metawsm-ui-page-key-v1"


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """The caller of one request, as established by its credential."""

    kind: Literal["operator", "agent"]
    run_id: str = ""
    ticket: str = ""
    agent: str = ""

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

    def describe(self) -> str:
        return f'agent "{self.agent}" of run {self.run_id} ({self.ticket})' if self.is_agent else "the operator"


OPERATOR = Identity(kind="operator")


def new_operator_token() -> str:
    return OPERATOR_PREFIX + secrets.token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenRegistry:
    """The credentials this daemon accepts; thread-safe (API loop and run actors share it)."""

    def __init__(self, db: Database, operator_token: str) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._operator = operator_token
        self._session, self._page_key = self._ui_secrets(operator_token)
        self._agents: dict[str, Identity] = {}  # sha256 of the token -> who it is
        self._load()

    # -- checking -----------------------------------------------------------------------------

    def identify(self, token: str) -> Identity | None:
        """The identity a bearer token stands for, or None when it is not (or no longer) valid."""
        if token.startswith(AGENT_PREFIX):
            return self._agents.get(_digest(token))
        if hmac.compare_digest(token.encode(), self._operator.encode()):
            return OPERATOR
        return None

    def identify_session(self, cookie: str, page_key: str) -> Identity | None:
        """The operator, when the browser shows both halves of its UI session."""
        session, key = self._session, self._page_key
        if cookie and page_key and hmac.compare_digest(cookie.encode(), session.encode()) \
                and hmac.compare_digest(page_key.encode(), key.encode()):
            return OPERATOR
        return None

    @property
    def session_cookie(self) -> str:
        return self._session

    @property
    def page_key(self) -> str:
        return self._page_key

    # -- the operator token -------------------------------------------------------------------

    def replace_operator_token(self, token: str) -> None:
        """Switch to ``token``: the old one and every UI session made from it stop working now."""
        with self._lock:
            self._operator = token
            self._session, self._page_key = self._ui_secrets(token)

    @staticmethod
    def _ui_secrets(token: str) -> tuple[str, str]:
        def mac(context: bytes) -> str:
            return hmac.new(token.encode(), context, hashlib.sha256).hexdigest()

        return SESSION_PREFIX + mac(_SESSION_CONTEXT), PAGE_KEY_PREFIX + mac(_PAGE_KEY_CONTEXT)

    # -- agent tokens -------------------------------------------------------------------------

    def mint_agent_token(self, run_id: str, ticket: str, agent: str) -> str:
        """A new token for one agent of a run; any earlier token of that agent is revoked."""
        token = AGENT_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(token)
        identity = Identity(kind="agent", run_id=run_id, ticket=ticket, agent=agent)
        now = now_text()
        conn = self._db.connect()
        try:
            with write_transaction(conn):
                revoked = [row[0] for row in conn.execute(
                    f"SELECT token_sha256 FROM {TABLE} WHERE run_id = ? AND ticket = ? AND agent_name = ?"
                    " AND revoked_at IS NULL", (run_id, ticket, agent))]
                conn.execute(f"UPDATE {TABLE} SET revoked_at = ? WHERE run_id = ? AND ticket = ? AND agent_name = ?"
                             " AND revoked_at IS NULL", (now, run_id, ticket, agent))
                conn.execute(f"INSERT INTO {TABLE} (token_sha256, run_id, ticket, agent_name, created_at)"
                             " VALUES (?, ?, ?, ?, ?)", (digest, run_id, ticket, agent, now))
        finally:
            conn.close()
        with self._lock:
            agents = dict(self._agents)
            for old in revoked:
                agents.pop(old, None)
            agents[digest] = identity
            self._agents = agents  # replaced whole: readers on other threads never see it half-built
        return token

    def revoke_run(self, run_id: str) -> int:
        """Revoke every token of ``run_id`` (the run was closed or cleaned up); returns how many."""
        conn = self._db.connect()
        try:
            with write_transaction(conn):
                cursor = conn.execute(f"UPDATE {TABLE} SET revoked_at = ? WHERE run_id = ? AND revoked_at IS NULL",
                                      (now_text(), run_id))
                count = cursor.rowcount
        finally:
            conn.close()
        with self._lock:
            self._agents = {digest: who for digest, who in self._agents.items() if who.run_id != run_id}
        return count

    def _load(self) -> None:
        conn = self._db.connect(read_only=True)
        try:
            rows = conn.execute(f"SELECT token_sha256, run_id, ticket, agent_name FROM {TABLE}"
                                " WHERE revoked_at IS NULL").fetchall()
        finally:
            conn.close()
        self._agents = {digest: Identity(kind="agent", run_id=run_id, ticket=ticket, agent=agent)
                        for digest, run_id, ticket, agent in rows}
