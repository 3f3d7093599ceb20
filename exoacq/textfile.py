"""Reading the small text files a user names (configurations, calibrations, SOPs, bead standards, key files)
with a size limit: a path such as /dev/zero, or a video given by mistake, must not be read into memory whole
(the daemon reads calibrations and SOPs that clients name)."""
from __future__ import annotations

import errno
from pathlib import Path

#: Larger than any configuration, calibration or SOP file (the example configuration is ~10 KiB).
MAX_TEXT_FILE_BYTES = 1024 * 1024


def read_text_file(path: Path | str, max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """The file's UTF-8 text. Beyond ``max_bytes`` it raises OSError (EFBIG) with a ``strerror`` that says so,
    which the callers' handling of unreadable files reports as it reports any; UnicodeDecodeError as
    ``Path.read_text``."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes // 1024} KiB: not a text file of this kind", str(path))
    return data.decode("utf-8")
