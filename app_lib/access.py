"""Who may open the app, and over what: the users of Gradio's login (a file, or the environment) and the TLS files of
https, checked before anything loads, each problem in one line that never quotes a password.

    users = read_users("users.txt")                    # [("ana", "..."), ...], or None: no login
    users = read_users(None, {"CXR_VQA_AUTH": "ana:pw1,ben:pw2"})
    check_tls("cert.pem", "key.pem")                   # both or neither; readable, and a key that fits the cert

users.txt holds one `user:password` a line (the password is everything after the first colon, without the spaces
around it; blank lines and lines starting with # are skipped). Keep it readable by the app's user only: the app warns
when others may read it.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from cxr_vqa.errors import UserError

logger = logging.getLogger(__name__)

AUTH_ENV = "CXR_VQA_AUTH"


def read_users(auth_file: str | None, environ=os.environ) -> list[tuple[str, str]] | None:
    """(user, password) pairs for `launch(auth=...)` from `auth_file` or $CXR_VQA_AUTH; None when neither is set."""
    inline = environ.get(AUTH_ENV) or None
    if auth_file and inline:
        raise UserError(f"give the users in --auth-file or in ${AUTH_ENV}, not both")
    if auth_file:
        path = Path(auth_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise UserError(f"--auth-file {auth_file}: cannot read it ({why})") from None
        if path.stat().st_mode & 0o077:
            logger.warning("--auth-file %s may be read by other users: chmod 600 it", auth_file)
        entries = [(f"--auth-file {auth_file} line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
                   if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    elif inline:
        entries = [(f"${AUTH_ENV} entry {n}", part.strip()) for n, part in enumerate(inline.split(","), 1)
                   if part.strip()]  # fmt: skip
    else:
        return None
    users: dict[str, str] = {}
    for where, entry in entries:
        user, sep, password = (part.strip() for part in entry.partition(":"))
        if not (sep and user and password):  # the entry itself is not shown: it may be a password
            raise UserError(f"{where}: expected user:password with neither empty")
        if user in users:
            raise UserError(f"{where}: user {user!r} is given twice")
        users[user] = password
    if not users:
        raise UserError(f"{f'--auth-file {auth_file}' if auth_file else '$' + AUTH_ENV}: no user:password in it")
    return list(users.items())


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both files or neither; readable, and the key the certificate's (a ValueError in one line otherwise)."""
    if (certfile is None) != (keyfile is None):
        raise ValueError("give both --ssl-certfile and --ssl-keyfile, or neither")
    if certfile is None:
        return
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file")
    try:  # an empty password: an encrypted key fails here instead of prompting on the console
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, password=b"")
    except (ssl.SSLError, OSError) as err:
        raise ValueError(
            f"--ssl-certfile/--ssl-keyfile: not a PEM certificate with its unencrypted key ({err})"
        ) from None
