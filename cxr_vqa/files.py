"""Artifacts other users can load: what the project saves is readable by group and others as far as the umask
allows, and a file that exists but cannot be read is named as such, with the fix.

    model.save_pretrained(out)
    share(out)                        # every file under out gets a+r (dirs a+rx), less what the umask masks
    unreadable(out)                   # [] when this user can read every file in out
    write_text_atomic(out / "progress.json", text)   # whole or not at all, as readable as any other file

Why it is needed: safetensors writes through a private temporary file and renames it, so every
`*.safetensors` (adapters, checkpoints, merged and tiny models) lands as 0600 whatever the umask, and
`tempfile.mkstemp` (the LLM reply cache) does the same. A container that runs as another uid, or a colleague on a
shared disk, then cannot load them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

READ = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
READ_SEARCH = READ | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only set: setting it
    to read it back would briefly change it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: str | os.PathLike) -> Path:
    """Add read permission (and search, for directories) for group and others to `path` and, for a directory,
    everything under it, as far as the umask allows. Bits are only added, never removed; links are left alone.
    Returns `path`."""
    root = Path(path)
    allowed = ~current_umask()
    _add_bits(root, allowed)
    if root.is_dir() and not root.is_symlink():
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                _add_bits(Path(folder) / name, allowed)
    return root


def _add_bits(path: Path, allowed: int) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:  # removed meanwhile (a staging folder): nothing to share
        return
    if stat.S_ISLNK(mode):
        return
    wanted = (READ_SEARCH if stat.S_ISDIR(mode) else READ) & allowed | stat.S_IMODE(mode)
    if wanted != stat.S_IMODE(mode):
        with contextlib.suppress(PermissionError):  # someone else's file in our folder: theirs to share
            os.chmod(path, wanted)


def unreadable(path: str | os.PathLike) -> list[Path]:
    """What this user cannot read: the files directly in directory `path`, or the directory itself when it cannot be
    listed, or `path` itself, a file. Empty when everything can be read."""
    root = Path(path)
    if not root.is_dir():
        return [] if os.access(root, os.R_OK) else [root]
    if not os.access(root, os.R_OK | os.X_OK):
        return [root]
    return [p for p in sorted(root.iterdir()) if p.is_file() and not os.access(p, os.R_OK)]


def unreadable_message(file: str | os.PathLike) -> str:
    """One line: this file (or directory) exists, its mode and owner, and how to let this user read it."""
    file = Path(file)
    try:
        info = file.stat()
        owner = f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}"
    except OSError:
        owner = "its mode cannot be read"
    folder = file if file.is_dir() else file.parent
    return (
        f"permission denied: {file} exists but this user (uid {os.getuid()}) cannot read it ({owner}): make it "
        f"readable, e.g. `chmod -R a+rX {folder}` (older versions of this project saved weights as 0600)"
    )


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file beside it and a rename: a reader in another process, or a kill
    halfway, sees the old file or the new one, never half of one. Not fsynced: it guards against killed processes
    (builds and runs are killed and resumed), not power cuts. Returns `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # a name of its own
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600: give it the mode a plain write would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
