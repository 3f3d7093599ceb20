"""The one check of the free text a client sends (a sample name, an approval's comment): a line break or a
terminal escape sequence in it would forge lines in the tables and in the audit trail's display."""
from __future__ import annotations

import unicodedata
from typing import Any

from exoacq.errors import ProtocolError


def check_free_text(value: Any, what: str, *, max_chars: int, allow_empty: bool = False) -> str:
    """``value`` as a str of at most ``max_chars`` characters, not only spaces (unless ``allow_empty`` and
    empty), without control characters (Unicode category Cc: line breaks, tabs, ESC, NUL); else ProtocolError."""
    if not isinstance(value, str) or len(value) > max_chars or (not value.strip() and not (allow_empty and not value)):
        raise ProtocolError(f"{what} = {value!r}: must be a text of 1 to {max_chars} characters, not only spaces")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ProtocolError(f"{what} = {value[:80]!r}: must not hold control characters (line breaks, tabs, "
                            "escape sequences)")
    return value
