"""Generators of malformed and hostile control requests (hypothesis strategies) for
tests/test_fuzz_control.py: each makes only requests the daemon must refuse, as a list of frames.

Strategies are module-level objects, built once: building one inside a draw costs hypothesis a
validation each time (and made the fuzz test several times slower).
"""
from __future__ import annotations

import json

from hypothesis import strategies as st

from exoacq.daemon import Daemon
from exoacq.flow.plugin import CONTROLS as FLOW_CONTROLS

MiB = 1024 * 1024
#: The simulated daemon's instruments, each named after its method.
INSTRUMENTS = ("nta", "dls", "flow")
COMMANDS = sorted(name.removeprefix("_cmd_") for name in dir(Daemon) if name.startswith("_cmd_"))
NO_PARAMETERS = ("ping", "status")

# -- hostile values -----------------------------------------------------------------------------------
LONE_SURROGATES = ["\ud800", "a\udfffb", "\udc80" * 3]
HOSTILE_STRINGS = [
    "", " ", "\x00", "NaN", "nan", "inf", "-Infinity", "1e999", "-1", "0", "true", "null", "None",
    "../../etc/passwd", "../../../../../../etc/shadow", "/etc/passwd", "/dev/zero", "/dev/urandom", "/dev/stdin",
    "/proc/self/environ", "/proc/self/mem", "/tmp", ".", "..", "~", "~root/.ssh/id_rsa", "C:\\Windows\\win.ini",
    "calibrations/../../../etc/passwd", "a" * 5000, "nta\x00", "NTA", " nta", "nta ", "*", "%s%s%n", "{0.__class__}",
    "'; DROP TABLE runs; --", "\u202enta", "\U0001F52C" * 50, *LONE_SURROGATES,
]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=6)


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for k in range(depth):
        value = [value] if k % 2 else {"a": value}
    return value


def long_string(length: int) -> str:
    return ("x" * 97 + "\u00e9\u4e2d\U0001F52C")[: 100] * (length // 100)


hostile_scalars = st.one_of(
    st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.sampled_from([0, -1, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 10 ** 400, -(10 ** 400), 1e308, -1e-320, 0.0, -0.0]),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]), st.floats(), st.booleans(), st.none())
hostile_values = st.one_of(
    hostile_scalars, json_values,
    st.builds(nested, st.integers(min_value=2, max_value=900), hostile_scalars),
    st.builds(long_string, st.integers(min_value=90_000, max_value=110_000)),
    st.lists(hostile_scalars, max_size=5), st.dictionaries(st.text(max_size=8), hostile_scalars, max_size=4))
#: Names that no command takes as a parameter (extra keys make any request invalid).
unknown_keys = st.one_of(st.sampled_from(["__class__", "__init__", "self", "kwargs", "fuzz", "", "command ",
                                          "run-id", "Run_id", "\x00", "\ud800", "a" * 1000]),
                         st.text(min_size=1, max_size=20).map(lambda s: "zz_" + s))
not_an_instrument = st.one_of(st.sampled_from([s for s in HOSTILE_STRINGS if s not in INSTRUMENTS]),
                              st.text(max_size=20).filter(lambda s: s not in INSTRUMENTS),
                              st.integers(), st.lists(st.sampled_from(INSTRUMENTS), max_size=3),
                              st.dictionaries(st.sampled_from(INSTRUMENTS), st.booleans(), min_size=1, max_size=2),
                              st.booleans(), st.floats())


def encode(request: object) -> bytes:
    """JSON as Python writes it: NaN and Infinity literals included (not JSON: to be refused too)."""
    return json.dumps(request, allow_nan=True).encode("utf-8", "surrogatepass")


def looks_valid(payload: bytes) -> bool:
    """Whether a random payload happens to be a JSON object with a command string (then it is not counted)."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("command"), str)


class Frames(list):
    """A message's frames; shown shortened when hypothesis reports a failing example."""

    def __repr__(self) -> str:
        return describe(self)


def plain(payload: bytes) -> Frames:
    """As ``ControlClient`` frames a request: an empty delimiter, then the payload."""
    return Frames([b"", payload])


def describe(frames: list[bytes]) -> str:
    return "[" + ", ".join(repr(f[:300]) + (f"... ({len(f)} bytes)" if len(f) > 300 else "") for f in frames) + "]"


# -- the generators ---------------------------------------------------------------------------------------------
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc",
                b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80"]
DEEP_OPENERS = [b"[", b'{"a":', b'{"command": "ping", "x": [']
any_command = st.sampled_from(COMMANDS)
booleans = st.booleans()


def choice(*options):
    return st.sampled_from(options)


@st.composite
def not_json(draw) -> Frames | None:
    kind = draw(choice("bytes", "utf8", "truncated", "deep", "text", "numbers"))
    if kind == "bytes":
        payload = draw(st.binary(max_size=2000))
    elif kind == "utf8":  # a request that would be valid but for one invalid UTF-8 sequence
        command = draw(any_command).encode()
        bad = draw(st.sampled_from(INVALID_UTF8))
        payload = {"command": b'{"command": "' + command + bad + b'"}',
                   "key": b'{"command": "' + command + b'", "' + bad + b'": 1}',
                   "value": b'{"command": "' + command + b'", "instrument": "nta' + bad + b'"}',
                   "after": b'{"command": "' + command + b'"}' + bad}[draw(choice("command", "key", "value", "after"))]
    elif kind == "truncated":  # a valid request cut short, or with trailing garbage
        full = encode({"command": draw(any_command), "instrument": "nta"})
        payload = full[: draw(st.integers(min_value=0, max_value=len(full) - 1))] if draw(booleans) \
            else full + draw(choice(b"x", b"}", b",", b" {}", b"\x00"))
    elif kind == "deep":  # nesting deeper than any parser's recursion (the daemon's too)
        opener = draw(st.sampled_from(DEEP_OPENERS))
        depth = draw(st.integers(min_value=900, max_value=(MiB - 64) // (2 * len(opener))))
        payload = opener * depth + draw(choice(b"", b"1", b"]" * depth))
    elif kind == "text":
        payload = draw(st.text(max_size=200)).encode("utf-8")
    else:
        payload = draw(choice(b"NaN", b"-Infinity", b"1e99999", b"9" * 5000, b"0x10", b"'ping'",
                              b"{'command': 'ping'}", b"", b" ", b"\x00" * 100))
    return None if looks_valid(payload) else plain(payload)


not_a_dict = hostile_values.filter(lambda v: not isinstance(v, dict))
not_a_string = hostile_values.filter(lambda v: not isinstance(v, str))
no_command = st.dictionaries(st.text(max_size=10).filter(lambda k: k != "command"), hostile_values, max_size=4)
some_keys = st.dictionaries(unknown_keys, json_values, max_size=2)
near_1_mib = st.integers(min_value=MiB - 4096, max_value=MiB - 16)


@st.composite
def bad_request_shape(draw) -> Frames:
    """JSON that is not an object, or an object without a command string."""
    kind = draw(st.sampled_from(["not_object", "no_command", "command_not_string"] * 10 + ["big"]))
    if kind == "not_object":
        return plain(encode(draw(not_a_dict)))
    if kind == "no_command":
        return plain(encode(draw(no_command)))
    if kind == "command_not_string":
        return plain(encode({"command": draw(not_a_string), **draw(some_keys)}))
    return plain(encode(["x" * (draw(near_1_mib) - 6)]))  # up to 1 MiB with the delimiter frame


unknown_names = st.one_of(
    st.sampled_from(HOSTILE_STRINGS + ["_cmd_ping", "__init__", "__class__", "shutdown", "serve", "_on_control",
                                       "request_stop", "PING", "Status", "ping ", " status", "status\n"]),
    st.text(max_size=30), st.builds(long_string, st.integers(min_value=100, max_value=110_000)))
other_keys = st.dictionaries(st.text(max_size=10).filter(lambda k: k != "command"), json_values, max_size=3)


@st.composite
def unknown_command(draw) -> Frames:
    command = draw(unknown_names)
    if command in COMMANDS:
        command += "?"
    return plain(encode({**draw(other_keys), "command": command}))


extra_keys = st.dictionaries(unknown_keys.filter(lambda k: k != "command"), hostile_values, min_size=1, max_size=3)


def with_extra_keys(draw, request: dict) -> dict:
    return {**draw(extra_keys), **request}


#: Settable (device, setting) of the simulated NTA instrument, and values far outside any of their ranges.
SETTABLE = {"laser": ["power_mw"], "pump": ["rate_ul_min"], "camera": ["exposure_ms", "gain"],
            "temperature": ["setpoint_c"]}
out_of_range = st.one_of(st.floats(max_value=-1e-3), st.floats(min_value=1e4),
                         st.sampled_from([float("nan"), float("inf"), float("-inf"), 10 ** 400, -(10 ** 400), 2 ** 63,
                                          -1, 1e308]),
                         st.integers(max_value=-1), st.integers(min_value=10 ** 4))
not_a_number = hostile_values.filter(lambda v: not isinstance(v, (int, float)) or isinstance(v, bool))
bad_value = st.one_of(out_of_range, not_a_number)
set_devices = st.sampled_from(list(SETTABLE))
set_settings = {device: st.sampled_from(names) for device, names in SETTABLE.items()}
not_a_device = hostile_values.filter(lambda v: v not in SETTABLE if isinstance(v, str) else True)
not_a_setting = {device: hostile_values.filter(lambda v, d=device: v not in SETTABLE[d] if isinstance(v, str) else True)
                 for device in SETTABLE}
wrong_instrument = st.one_of(not_an_instrument, choice("dls", "flow"))


@st.composite
def bad_set(draw) -> dict:
    device = draw(set_devices)
    setting = draw(set_settings[device])
    kind = draw(choice("instrument", "no_instrument", "device", "setting", "value", "missing", "extra"))
    request = {"instrument": "nta", "device": device, "setting": setting, "value": draw(bad_value)}
    if kind == "instrument":
        request["instrument"] = draw(wrong_instrument)
        request["value"] = 1.0
    elif kind == "no_instrument":  # several instruments: which one?
        del request["instrument"]
    elif kind == "device":
        request["device"] = draw(not_a_device)
    elif kind == "setting":
        request["setting"] = draw(not_a_setting[device])
    elif kind == "missing":
        request.pop(draw(choice("device", "setting")))
        request["value"] = 1.0
    elif kind == "extra":
        request = with_extra_keys(draw, {**request, "value": 1.0})
    return request


def _short_text(value: object, most: int) -> bool:
    """A text of 1 to ``most`` characters (what the handlers take for names and reasons)."""
    return isinstance(value, str) and 0 < len(value) <= most


bad_limit = st.one_of(hostile_values.filter(
    lambda v: not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000)),
    st.integers(min_value=10 ** 6 + 1, max_value=10 ** 30))
#: run_file paths that leave the run's folder, are no regular file, or name none of its files.
bad_run_path = st.one_of(hostile_values, st.sampled_from([
    "../../audit.jsonl", "../catalog.sqlite", "a/../../x", "./../x", "tracks.csv/x", "tracks.csv\x00",
    "//etc/passwd", r"\\server\share", "no-such-file.csv", "x" * 4000, "/".join(["a"] * 2000)]))
bad_version = st.one_of(hostile_values, st.integers(min_value=2, max_value=10 ** 30))
any_instrument = st.one_of(st.sampled_from(INSTRUMENTS), not_an_instrument)
not_a_bool = hostile_values.filter(lambda v: not isinstance(v, bool))
bad_preview = st.one_of(
    st.fixed_dictionaries({"on": not_a_bool}, optional={"instrument": any_instrument}),
    st.fixed_dictionaries({"instrument": not_an_instrument}, optional={"on": booleans}),
    st.just({"on": True}), st.just({}))  # several instruments: which one?
ten = st.integers(0, 9)
#: The operator name a client may state with any request (exoacq.audit): 1-64 printable characters.
bad_operator = hostile_values.filter(lambda v: v is not None and not (
    _short_text(v, 64) and v.isprintable() and v == v.strip()))


def hostile_parameters(run_id: str) -> st.SearchStrategy:
    """A known command (other than acquire) with parameters that make it invalid; ``run_id`` is a run that exists."""
    some_run_id = st.one_of(st.just(run_id), hostile_values)
    bad_stop = st.fixed_dictionaries({}, optional={"run_id": some_run_id, "instrument": any_instrument})
    commands = st.sampled_from([c for c in COMMANDS if c != "acquire"])

    @st.composite
    def strategy(draw) -> Frames:
        command = draw(commands)
        if command in NO_PARAMETERS:
            request = with_extra_keys(draw, {})
        elif command == "runs":
            request = {"limit": draw(bad_limit)}
        elif command in ("run", "bluesky", "reprocess", "select_version", "approve"):
            args = {"run_id": draw(some_run_id)}
            if command == "approve":
                args["comment"] = draw(hostile_values)
            if command in ("run", "select_version"):
                args["version"] = draw(bad_version)
            if command == "reprocess":
                args["overrides"] = draw(hostile_values)
                args["reason"] = draw(hostile_values)
            if args["run_id"] == run_id:  # the run exists: something else must be wrong
                if command in ("run", "select_version") and (args["version"] is None or args["version"] == 1):
                    args["version"] = 0
                if command == "reprocess" and (args["overrides"] is None or isinstance(args["overrides"], dict)) \
                        and (args["reason"] is None or _short_text(args["reason"], 200)):
                    args["reason"] = ""
                if command == "bluesky":
                    args = with_extra_keys(draw, args)
                if command == "approve" and (args["comment"] is None or isinstance(args["comment"], str)):
                    args["comment"] = ["not", "a", "text"]
            request = {k: v for k, v in args.items() if k != "run_id" or draw(ten)}  # sometimes no run_id at all
        elif command in ("run_files", "run_file"):  # a file outside the run's folder, or none
            args = {"run_id": draw(some_run_id)}
            if command == "run_file":
                args["path"] = draw(bad_run_path)
                if draw(ten) == 0:
                    args["length"] = draw(bad_limit)
            elif args["run_id"] == run_id:
                args = with_extra_keys(draw, args)
            request = {k: v for k, v in args.items() if k != "run_id" or draw(ten)}
        elif command == "stop":  # nothing runs: every stop is refused
            request = draw(bad_stop)
        elif command == "preview":
            request = draw(bad_preview)
        elif command == "settings":
            kind = draw(choice("none", "bad", "extra"))  # none: several instruments, which one?
            request = ({} if kind == "none" else {"instrument": draw(not_an_instrument)} if kind == "bad"
                       else with_extra_keys(draw, {"instrument": draw(st.sampled_from(INSTRUMENTS))}))
        elif command == "set":
            request = draw(bad_set())
        else:  # a command added since this test was written: an unknown parameter is always refused
            request = with_extra_keys(draw, {})
        if draw(ten) == 0:  # whatever else, an operator name that is none
            request = {**request, "operator": draw(bad_operator)}
        return plain(encode({**request, "command": command}))

    return strategy()


SOP_GARBAGE = st.one_of(
    st.text(max_size=300), st.sampled_from(HOSTILE_STRINGS),
    st.builds(long_string, st.integers(min_value=256 * 1024 + 100, max_value=300_000)),  # over the SOP size limit
    st.sampled_from([
        "[[steps]]\n", "name = 'x'\n[[steps]]\nkind = 'capture'\n", "[[steps]]\ncapture = {count = -1}\n",
        "method = 'dls'\n", "steps = 1\n", "[[steps]]\nkind = 'capture'\ncount = 1e999\nduration_s = nan\n",
        "[[steps]]\nkind = 'capture'\ncount = 100000\nduration_s = 3600\n", "a = [[[[[[[[[[[[1]]]]]]]]]]]]\n",
        "CAPTURE -1\n", "SETTEMP 1000\nCAPTURE 10\n", "REPEAT 100000\nCAPTURE 60\n", "LASERON\nLASERON\n",
        "SYRINGELOAD 1000\nCAPTURE 1\n", "DELAY -5\n", "PRIME\n" * 1000, "\x00\x00", "x = \"\\ud800\"\n",
        "include = '/etc/passwd'\n", "[[steps]]\nkind = '../../etc/passwd'\n"]),
    hostile_values.filter(lambda v: not isinstance(v, str) and v is not None))
not_a_number_nor_none = not_a_number.filter(lambda v: v is not None)
#: Values each acquire parameter must not have (the methods' validate_request refuses them; None means "default").
BAD_PARAMETER = {
    "duration_s": st.one_of(not_a_number_nor_none, st.floats(max_value=0.0), st.floats(min_value=3600.001),
                            st.sampled_from([float("nan"), float("inf"), 10 ** 400])),
    "captures": st.one_of(not_a_number_nor_none, st.integers(max_value=0), st.integers(min_value=101),
                          st.floats(allow_nan=True), st.just(True)),
    "runs": st.one_of(not_a_number_nor_none, st.integers(max_value=0), st.integers(min_value=101)),
    "dilution": st.one_of(not_a_number_nor_none, st.floats(max_value=0.999), st.floats(min_value=1.001e9),
                          st.just(float("nan"))),
    "sample": st.one_of(hostile_values.filter(lambda v: v is not None and not _short_text(v, 200)),
                        st.builds(long_string, st.integers(min_value=300, max_value=110_000))),
    "blank": hostile_values.filter(lambda v: v is not None and not isinstance(v, bool)),
    "blank_run": st.one_of(hostile_values.filter(lambda v: v is not None and not _short_text(v, 100)),
                           st.builds(long_string, st.integers(min_value=200, max_value=5000))),
    "bead_check": st.one_of(st.sampled_from(HOSTILE_STRINGS), hostile_values.filter(lambda v: v is not None),
                            st.sampled_from(["calibrations/nta/simulated-camera.toml", "calibrations/nta",
                                             "pyproject.toml", "calibrations/nta/beads-100nm.toml\x00"])),
    "angle_deg": st.one_of(not_a_number_nor_none, st.floats(max_value=0.0), st.floats(min_value=180.0),
                           st.just(float("nan"))),
    "control": hostile_values.filter(lambda v: v is not None and v not in FLOW_CONTROLS
                                     if isinstance(v, str) else v is not None),
    "controls": hostile_values.filter(lambda v: v is not None and v != {}),
}
ALLOWED = {"nta": ["duration_s", "captures", "dilution", "sample", "blank", "blank_run", "bead_check"],
           "dls": ["duration_s", "runs", "angle_deg", "dilution", "sample"],
           "flow": ["duration_s", "dilution", "sample", "control", "controls"]}
ALLOWED_KEYS = {method: st.sampled_from(keys) for method, keys in ALLOWED.items()}
GOOD = {"duration_s": 0.5, "captures": 1, "runs": 1, "dilution": 10.0, "sample": "fuzz", "blank": False}
methods = st.sampled_from(INSTRUMENTS)  # each simulated instrument is named after its method
OTHER = {method: st.sampled_from([m for m in INSTRUMENTS if m != method]) for method in INSTRUMENTS}
not_a_method = hostile_values.filter(lambda v: v not in INSTRUMENTS if isinstance(v, str) else v is not None)
not_an_instrument_nor_none = not_an_instrument.filter(lambda v: v is not None)


@st.composite
def hostile_acquire(draw) -> Frames:
    """An acquire request that must be refused: a bad method, instrument or SOP, or one bad parameter
    (with the others valid, so that the bad one is what the validation meets)."""
    method = draw(methods)
    kind = draw(choice("method", "instrument", "sop", "parameter", "parameter", "parameter", "unknown"))
    request: dict = {"method": method, "instrument": method,
                     **{k: GOOD[k] for k in ALLOWED[method] if k in GOOD and draw(booleans)}}
    if kind == "method":
        if draw(booleans):  # another method than the instrument's
            request["method"] = draw(OTHER[method])
        else:  # no method at all
            request["method"] = draw(not_a_method)
            if draw(booleans):
                del request["instrument"]
    elif kind == "instrument":
        request["instrument"] = draw(st.one_of(not_an_instrument_nor_none, OTHER[method]))
    elif kind == "sop":
        request["sop"] = draw(SOP_GARBAGE)
        for key in ("duration_s", "captures"):
            request.pop(key, None)
    elif kind == "parameter":
        key = draw(ALLOWED_KEYS[method])
        request[key] = draw(BAD_PARAMETER[key])
    else:
        request = with_extra_keys(draw, request)
    return plain(encode({**request, "command": "acquire"}))


envelope_frames = st.lists(st.one_of(st.just(b""), st.binary(max_size=64),
                                     st.sampled_from([encode({"command": "acquire", "method": "nta"}),
                                                      encode({"command": "preview", "instrument": "nta", "on": True}),
                                                      encode({"command": "ping"}), b"\xff\xfe", b"\x00" * 32])),
                           max_size=6)


def multi_frame(run_id: str) -> st.SearchStrategy:
    """A malformed request with extra frames before it (empty ones, garbage, valid requests)."""
    malformed = st.one_of(not_json(), bad_request_shape(), unknown_command(), hostile_parameters(run_id),
                          hostile_acquire()).filter(lambda f: f is not None)

    @st.composite
    def strategy(draw) -> Frames:
        last = draw(malformed)[-1][: MiB // 2]  # cut: still malformed, and the message stays under 1 MiB
        before = draw(envelope_frames)
        if not before or draw(booleans):
            last = draw(choice(b"", last))  # an empty last frame is malformed too
        if not before:
            before = [b""] * draw(st.integers(min_value=2, max_value=5))
        return Frames([*before, last])

    return strategy()
