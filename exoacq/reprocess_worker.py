"""A re-processing in a process of its own: ``python -m exoacq.reprocess_worker``.

The daemon re-analyses stored runs (``reprocess``) away from its own
interpreter, so that an analysis (trackpy's linking is pure Python) never
competes with a live acquisition for the GIL. The job comes as one JSON object
on stdin: ``{"method", "record", "overrides", "output_dir"}``; the new result
document goes to stdout as JSON (exit 0), or one line on stderr says why not
(exit 2 for an error the method reports, 1 for a bug). No pickle: plain JSON.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from exoacq.bus import dumps
from exoacq.errors import ExoacqError
from exoacq.registry import installed


def main() -> int:
    try:
        job = json.loads(sys.stdin.read())
        method = installed().method(job["method"])
        output_dir = Path(job["output_dir"])
        output_dir.mkdir(parents=True, exist_ok=True)
        document = method.reprocess(job["record"], job["overrides"], output_dir)
        if not isinstance(document, dict):
            raise TypeError(f"{method.name}.reprocess returned {type(document).__name__}, not a document")
    except ExoacqError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot write {job.get('output_dir')}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug in the hook: the daemon records it with the version
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return 1
    sys.stdout.buffer.write(dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
