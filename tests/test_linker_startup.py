"""What a new process pays before it links: trackpy is imported only where linking needs it, and its
numba subnet solver is loaded from numba's cache instead of compiled again (exoacq.nta.analysis)."""
from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys, time
import exoacq.nta.analysis as analysis
imported_with_module = "trackpy" in sys.modules
t0 = time.perf_counter()
analysis.warm_up_linker()
from trackpy.linking import subnetlinker
solver = subnetlinker._numba_subnet_norecur
stats = solver.stats
print(json.dumps({"trackpy_with_module": imported_with_module, "cache": type(solver._cache).__name__,
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "signatures": len(solver.signatures), "seconds": time.perf_counter() - t0}))
"""


def _probe() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_trackpy_is_imported_where_linking_needs_it_and_its_solver_comes_from_numbas_cache():
    first, second = _probe(), _probe()
    for probe in (first, second):
        # the offline analysis imports trackpy in a background thread; importing exoacq.nta.analysis must not
        assert probe["trackpy_with_module"] is False
        assert probe["signatures"] >= 1  # the numba solver is compiled (a 6 x 6 subnet was linked)
    # the venv's site-packages is writable here: the first process compiled or loaded it, the second loaded it
    assert second["cache"] == "FunctionCache"
    assert second["hits"] >= 1 and second["misses"] == 0, second
