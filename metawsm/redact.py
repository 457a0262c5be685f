"""``redact_url``: a Redis URL with its password masked, safe for logs, errors and health output.

The one implementation: :mod:`metawsm.transport.streams` re-exports it as ``redact_url`` and
:mod:`metawsm.policy` as ``redacted_redis_url``.  A password is masked wherever it sits: in
the userinfo (``redis://user:secret@host``) or in a ``password`` query parameter (any case,
as ``unix://`` URLs carry it).  Host, port, path and the other parameters are kept as
written; a URL that cannot be parsed keeps only its scheme.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"


def redact_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
        hostinfo = parts.netloc.rpartition("@")[2]
    except ValueError:
        # Unparseable: keep only the scheme rather than risk echoing a secret.
        scheme = url.partition("://")[0] if "://" in url else ""
        return f"{scheme}://{MASK}" if scheme else MASK
    netloc = parts.netloc
    if password is not None:
        netloc = f"{username or ''}:{MASK}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            masked = [(k, MASK if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    # Reassembled by hand: urlunsplit would turn ``unix:///path`` into ``unix:/path``.
    text = f"{parts.scheme}:" if parts.scheme else ""
    if netloc or url.startswith(text + "//"):
        text += f"//{netloc}"
    text += parts.path
    if query:
        text += f"?{query}"
    if parts.fragment:
        text += f"#{parts.fragment}"
    return text
