"""The operator token file: ``<database dir>/token``, readable by its owner only.

``serve`` creates it on first start and reuses it afterwards, so the CLI run by the same user
finds the token without being told (it asks the daemon where the file is, then reads it).
The file is created with mode 0600 in one step (``O_CREAT | O_EXCL``), never written with
default permissions and tightened afterwards, and replaced atomically on rotation.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from metawsm.auth.tokens import new_operator_token

TOKEN_ENV = "METAWSM_TOKEN"
TOKEN_FILE_NAME = "token"


class TokenFileError(Exception):
    """The token file cannot be read or written; one line naming the file."""


def token_file_for(db_path: str | Path) -> Path:
    return Path(db_path).absolute().parent / TOKEN_FILE_NAME


def read_token(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TokenFileError(f"token file {path} does not exist") from None
    except OSError as error:
        raise TokenFileError(f"cannot read token file {path}: {error.strerror or error}") from None
    if not text:
        raise TokenFileError(f"token file {path} is empty")
    return text


def load_or_create(path: Path) -> tuple[str, bool]:
    """The operator token in ``path``, creating the file (mode 0600) when absent.

    Returns ``(token, created)``.  A file readable by others is refused: anyone who can read it
    can drive the daemon, so silently using it would hide that.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return _create(path), True
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(f"token file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                             f"run: chmod 600 {path}")
    token = read_token(path)
    return token, False


def _create(path: Path) -> str:
    token = new_operator_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another serve on the same directory created it first
        return read_token(path)
    except OSError as error:
        raise TokenFileError(f"cannot create token file {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def replace(path: Path) -> str:
    """Write a new operator token to ``path`` atomically (mode 0600); return it."""
    token = new_operator_token()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".token.", dir=path.parent)  # mkstemp creates files 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(token + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise TokenFileError(f"cannot write token file {path}: {error.strerror or error}") from None
    return token
