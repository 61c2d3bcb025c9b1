"""A Batch's zips, read as an attacker would send them: the directory bounded before `zipfile` parses it, each
member judged by what it declares, then read through a byte cap, so a lying header cannot inflate past it.

    n = declared_entries(path)                # what its end record declares, before zipfile reads the directory
    why = refusal(info, cap)                  # None, or one line: too large, too compressed, a zip in the zip
    data = read_member(archive.open(info), info, cap)  # cap + 1 bytes inflated at most; past its size: BadZipFile

Why: `zipfile.ZipFile` builds an object for every directory entry (a 16 MB zip of 200,000 empty entries cost 104
MiB to list, measured), and `ZipExtFile.read()` inflates whatever the member holds (1,000:1 for zeros). Films
compress 1:1 (PNG, JPEG) to about 5:1 (raw DICOM); `MAX_RATIO` leaves room for blank films and refuses bombs.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import IO

from cxr_vqa.errors import UserError

MAX_RATIO = 100  # declared size / compressed size; deflate's ceiling is ~1,032:1
ZIP_MAGIC = b"PK\x03\x04"
ENTRY_BYTES = 46 + 1024  # a directory entry: 46 bytes and its name, counted as up to 1 KB
END, END64, LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"


def declared_entries(path: str) -> int:
    """The entries a zip's end-of-directory record declares, or more when its directory is larger than that many
    entries need (a record that understates its count); reads the file's last 64 KB only. 0 for a file without the
    record, which `zipfile` then refuses as no zip."""
    try:
        return _declared(path)
    except (OSError, struct.error):  # unreadable: zipfile says so in its own words
        return 0


def _declared(path: str) -> int:
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - (1 << 16) - 22))
        tail = file.read()
        at = tail.rfind(END)
        if at < 0 or at + 22 > len(tail):
            return 0
        entries, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
        locator = tail.rfind(LOCATOR64, 0, at)
        if (entries == 0xFFFF or directory == 0xFFFFFFFF) and locator >= 0:  # zip64: the real numbers are elsewhere
            file.seek(struct.unpack("<Q", tail[locator + 8 : locator + 16])[0])
            record = file.read(56)
            if record[:4] == END64:
                entries, directory = struct.unpack("<QQ", record[32:48])
    return max(entries, directory // ENTRY_BYTES)


def refusal(info: zipfile.ZipInfo, cap: int) -> str | None:
    """Why a member is not read, from what its directory entry declares (one line), or None."""
    if info.filename.lower().endswith(".zip"):
        return "a zip inside the zip: unzip it and upload its films"
    if info.file_size > cap:
        return f"{info.file_size:,} bytes unzipped, over this app's upload limit of {cap:,} bytes"
    if info.file_size > MAX_RATIO * max(info.compress_size, 1) and info.file_size > (1 << 20):
        return (f"compressed {info.file_size / max(info.compress_size, 1):,.0f}:1 (a zip bomb?), over the "
                f"{MAX_RATIO}:1 a film can be; zip the films without it")  # fmt: skip
    return None


def read_member(file: IO[bytes], info: zipfile.ZipInfo, cap: int) -> bytes:
    """The member's bytes, never more than its declared size (at most `cap`) plus one inflated: a member whose data
    runs past what it declared is corrupt (zipfile itself stops at the declared size and fails the CRC)."""
    most = min(info.file_size, cap)
    data = file.read(most + 1)
    if len(data) > most:
        raise zipfile.BadZipFile("inflates past its declared size")
    if data.startswith(ZIP_MAGIC):
        raise UserError("a zip inside the zip: unzip it and upload its films")
    return data
