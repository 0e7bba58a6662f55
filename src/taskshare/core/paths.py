"""File names from arbitrary text (benchmark specs with paths, task names, method names).

Every file name taskshare derives from user text goes through `safe_name`, so a 110-character folder
path as a task name still gives a name far below the 255-byte limit of common file systems.
"""
from __future__ import annotations

import hashlib

MAX_NAME = 80  # characters of a generated file-name component (ext4/xfs/btrfs allow 255 bytes)


def safe_name(text: str, max_len: int = MAX_NAME) -> str:
    """`text` as one file-name component: [A-Za-z0-9._-] kept, the rest '_', no leading dot; over `max_len`
    characters, a prefix plus the first 10 hex digits of the text's sha1 (long texts stay distinct)."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in text).lstrip(".") or "_"
    if len(name) <= max_len:
        return name
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{name[:max_len - 11]}-{digest}"
