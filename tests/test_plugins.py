"""Methods and drivers are plugins: the daemon core imports none, and a lab's own method runs
through the daemon from a package outside exoacq, found through its entry point."""
from __future__ import annotations

import ast
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT
from exoacq.registry import installed

CORE = sorted((ROOT / "exoacq").glob("*.py"))
METHOD_PACKAGES = ("exoacq.nta", "exoacq.dls", "exoacq.flow")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_daemon_core_imports_no_method_and_no_driver():
    assert {p.name for p in CORE} >= {"daemon.py", "bus.py", "storage.py", "config.py", "cli.py", "instruments.py"}
    offenders = {}
    for path in CORE:
        bad = sorted(name for name in _imports(path)
                     if name.startswith(METHOD_PACKAGES) or name.startswith("exoacq.drivers"))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_methods_and_drivers_are_found_through_entry_points():
    registry = installed()
    assert "nta" in registry.methods
    assert {"obis", "cobolt", "ne1000", "ted4015", "opencv", "video-file", "genicam", "simulated-nta"} <= \
        set(registry.drivers)
    assert registry.broken == {}
    kinds = {name: d.kind for name, d in registry.drivers.items()}
    assert kinds["cobolt"] == "laser" and kinds["ne1000"] == "pump" and kinds["ted4015"] == "temperature-controller"


# A lab's own method: it counts laser-lit "ticks" and reports how many it saw. Written only
# against the public plugin interface (exoacq.methods), like a package of the lab's own.
LAB_METHOD = '''
"""A lab's own method for exoacq: count ticks with the laser on."""
import time

from exoacq.cli_common import add_acquire_options, run_acquisition
from exoacq.errors import ProtocolError
from exoacq.methods import Method, MethodService, Role


class TickService(MethodService):
    def setup(self, run):
        self.instrument.device("laser").set_power_mw(5.0)

    def exec(self, run):
        laser = self.instrument.device("laser")
        laser.set_emission(True)
        lit = 0
        for tick in range(run.settings["ticks"]):
            if run.abort.is_set():
                break
            time.sleep(0.05)
            lit += bool(laser.emission())
            self.context.emit({"event": "tick", "run_id": run.run_id, "tick": tick + 1})
        run.settings["lit"] = lit
        return {"ticks": lit}

    def teardown(self, run):
        self.instrument.device("laser").set_emission(False)

    def on_event(self, status, event):
        if status is not None and event.get("event") == "tick":
            status.data["ticks"] = event["tick"]

    def progress(self, status):
        return {"ticks": status.data.get("ticks", 0), "of": status.run.settings["ticks"]}

    def on_processing(self, status):
        run = status.run
        self.context.finish(status, {"schema": "lab.count.result/1", "run_id": run.run_id, "method": "count",
                                     "sample": run.settings["sample"], "lit_ticks": run.settings["lit"],
                                     "laser_was": self.instrument.describe()["laser"]["settings"]["model"]})


class CountMethod(Method):
    name = "count"
    description = "count laser-lit ticks (a lab's own method)"
    roles = {"laser": Role(("laser",), description="any laser")}
    topics = {"count.progress": "lab.count.progress/1", "count.result": "lab.count.result/1"}

    def validate_request(self, params, instrument=None, sop=None):
        ticks = params.get("ticks", 10)
        if not isinstance(ticks, int) or not 1 <= ticks <= 1000:
            raise ProtocolError(f"ticks = {ticks!r}: must be a whole number from 1 to 1000")
        return {"ticks": ticks, "sample": params.get("sample", "unnamed"), "dilution": params.get("dilution", 1.0)}

    def service(self, instrument, context):
        return TickService(instrument, context)

    def simulated_instrument(self):
        return {"method": "count", "devices": {"laser": {"driver": "cobolt", "simulated": True}}}

    def add_cli(self, verbs):
        p = verbs["acquire"].add_parser("count", help="count ticks")
        p.add_argument("--ticks", type=int, default=10)
        add_acquire_options(p)
        p.set_defaults(func=lambda args: run_acquisition(args, "count", {"ticks": args.ticks}))

    def format_result(self, document):
        return f"{document['lit_ticks']} lit ticks"


METHOD = CountMethod()
'''


@pytest.fixture
def lab_package(tmp_path):
    """The method as an installed distribution outside exoacq: a module and its dist-info with the entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "labcount.py").write_text(textwrap.dedent(LAB_METHOD))
    info = site / "labcount-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labcount\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[exoacq.methods]\ncount = labcount:METHOD\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return env


@pytest.mark.slow
def test_a_labs_own_method_runs_end_to_end_through_the_daemon(tmp_path, lab_package):
    from conftest import RunningDaemon
    from exoacq.bus import ControlClient

    d = RunningDaemon(tmp_path, env=lab_package)
    try:
        with ControlClient(d.control) as client:
            status = client.request("status")
            assert {"nta", "count"} <= set(status["methods"])  # with every other installed method
            assert status["instruments"]["count"]["devices"]["laser"]["driver"] == "cobolt"
        import subprocess
        proc = subprocess.run([sys.executable, "-m", "exoacq", "acquire", "count", "--ticks", "8", "--sample", "lab",
                               "--json", "--control", d.control], capture_output=True, text=True, timeout=60,
                              env=lab_package)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["schema"] == "lab.count.result/1" and result["lit_ticks"] == 8
        assert "-06-" in result["laser_was"]  # the Cobolt model number (glm?), read through the simulator
        with ControlClient(d.control) as client:
            record = client.request("run", run_id=result["run_id"])
            assert (record["state"], record["method"], record["instrument"]) == ("done", "count", "count")
            assert record["result"] == result
            laser = client.request("status")["instruments"]["count"]["devices"]["laser"]["settings"]
            assert laser["emission"] is False
            with pytest.raises(Exception, match="ticks = 0"):
                client.request("acquire", method="count", ticks=0)
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.log.read_text()
