"""A headless chromium for the console's browser tests and ``exoacq bench realtime --console``.

We drive Debian's own ``chromium`` (``/usr/bin/chromium``, or the executable named by
``$EXOACQ_CHROMIUM``) through Playwright; Playwright's downloaded browsers are never
used. ``make install`` installs the Debian package where apt is usable.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError

DEFAULT_CHROMIUM = "/usr/bin/chromium"

#: No sandbox: CI and containers run as root, where chromium's sandbox refuses to start.
#: The rest keep a test browser quiet and offline: no GPU, no QUIC, no first-run pages,
#: no background fetches, component updates or sync.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> Path | None:
    """The chromium executable to drive: ``$EXOACQ_CHROMIUM``, else /usr/bin/chromium, else
    ``chromium`` on the PATH; None when there is none."""
    named = os.environ.get("EXOACQ_CHROMIUM")
    if named:
        return Path(named) if os.access(named, os.X_OK) else None
    if os.access(DEFAULT_CHROMIUM, os.X_OK):
        return Path(DEFAULT_CHROMIUM)
    found = shutil.which("chromium")
    return Path(found) if found else None


def chromium_problem() -> str | None:
    """Why a headless chromium cannot be driven here (one line), or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        named = os.environ.get("EXOACQ_CHROMIUM")
        if named:
            return f"$EXOACQ_CHROMIUM={named} is not an executable file"
        return (f"no chromium at {DEFAULT_CHROMIUM} nor on the PATH (`apt-get install chromium`, "
                "which `make install` does where apt is usable)")
    return None


def launch_chromium(playwright: Any, **options: Any) -> Any:
    """A headless chromium launched by ``playwright`` (sync or async API: the result is its
    ``Browser``, or an awaitable of it). Playwright gives every launch a fresh, temporary
    user-data directory (removed on close), so no profile carries over between runs.
    ``options`` go to ``browser_type.launch`` (e.g. ``timeout``)."""
    executable = chromium_path()
    if executable is None:
        raise ExoacqError(chromium_problem() or "no chromium", code="no_browser")
    return playwright.chromium.launch(executable_path=str(executable), headless=True,
                                      args=list(CHROMIUM_ARGS), **options)
