"""Standard operating procedures (SOPs): an acquisition written as steps.

Two forms read into the same :class:`Sop`:

* TOML, exoacq's own form: ``name``, ``method``, ``description`` and an array
  of ``[[steps]]`` tables, each naming its kind in ``step`` (temperature, pump,
  laser, capture, wait, analyse, export), units in every key name;
* a NanoSight NTA script: plain text, one command per line, any case (see
  :data:`NANOSIGHT_COMMANDS`); commands exoacq cannot honour are refused by name.

Everything wrong is reported at once, one line per problem naming the source,
the step (1-based) or script line, the key and what is allowed, before
anything moves. The device steps are carried out by :mod:`exoacq.sop_steps`;
capture, analyse and export are the method's.
"""
from __future__ import annotations

import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from exoacq.errors import ProtocolError
from exoacq.textfile import read_text_file

MAX_S = 3600.0               # any duration, timeout or pause
MAX_RATE_UL_MIN = 100_000.0  # 100 mL/min
MAX_VOLUME_UL = 50_000.0     # a 50 mL syringe
MAX_COUNT = 100


def _num(**bounds: float) -> Any:
    return Annotated[float, Field(strict=True, **bounds)]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def _problem(self) -> str | None:
        """A rule across keys that the values break, else None."""
        return None

    @model_validator(mode="after")
    def _check(self) -> _Step:
        if problem := self._problem():
            raise ValueError(problem)
        return self


def _volume_problem(volume_ul: float, rate: float | None, key: str) -> str | None:
    rate_key = key.removesuffix("_ul") + "_rate_ul_min"
    if volume_ul > 0 and rate is None:
        return f"{key} needs {rate_key} (uL/min)"
    if rate is not None and volume_ul == 0:
        return f"{rate_key} is given without {key}"
    if rate is not None and volume_ul / rate * 60.0 > MAX_S:
        return f"{key} = {volume_ul:g} at {rate:g} uL/min takes more than {MAX_S:g} s"
    return None


class TemperatureStep(_Step):
    """Set the sample temperature; done once it stays within ``tolerance_c`` for ``hold_s``."""

    step: Literal["temperature"] = "temperature"
    set_c: _num(gt=0, lt=100)
    tolerance_c: _num(gt=0, le=5) = 0.1
    hold_s: _num(ge=0, le=MAX_S) = 30.0
    timeout_s: _num(gt=0, le=MAX_S) = 900.0

    def _problem(self) -> str | None:
        return (f"hold_s = {self.hold_s:g} must be shorter than timeout_s = {self.timeout_s:g}"
                if self.hold_s >= self.timeout_s else None)


class PumpStep(_Step):
    """Flush ``flush_ul`` at ``flush_rate_ul_min`` (if given), then flow at ``rate_ul_min`` (0: stop)."""

    step: Literal["pump"] = "pump"
    flush_ul: _num(ge=0, le=MAX_VOLUME_UL) = 0.0
    flush_rate_ul_min: _num(gt=0, le=MAX_RATE_UL_MIN) | None = None
    rate_ul_min: _num(ge=0, le=MAX_RATE_UL_MIN) = 0.0

    def _problem(self) -> str | None:
        return _volume_problem(self.flush_ul, self.flush_rate_ul_min, "flush_ul")


class LaserStep(_Step):
    """Laser emission on (at ``power_mw``, then ``warmup_s``) or off."""

    step: Literal["laser"] = "laser"
    on: StrictBool
    power_mw: _num(ge=0, le=10_000) | None = None
    warmup_s: _num(ge=0, le=600) = 0.0

    def _problem(self) -> str | None:
        return "warmup_s applies only with on = true" if self.warmup_s and not self.on else None


class CaptureStep(_Step):
    """``count`` videos of ``duration_s`` (the method's step). Between two, ``advance_ul`` of
    fresh sample at ``advance_rate_ul_min``, then a pause of ``settle_s`` (a continuous flow
    set by a pump step keeps running)."""

    step: Literal["capture"] = "capture"
    count: Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)] = 1
    duration_s: _num(gt=0, le=MAX_S)
    advance_ul: _num(ge=0, le=MAX_VOLUME_UL) = 0.0
    advance_rate_ul_min: _num(gt=0, le=MAX_RATE_UL_MIN) | None = None
    settle_s: _num(ge=0, le=MAX_S) = 0.0

    def _problem(self) -> str | None:
        if self.count == 1 and (self.advance_ul or self.settle_s):
            return "advance_ul and settle_s act between captures; count = 1 has none"
        return _volume_problem(self.advance_ul, self.advance_rate_ul_min, "advance_ul")


class WaitStep(_Step):
    step: Literal["wait"] = "wait"
    seconds: _num(gt=0, le=MAX_S)


class AnalyseStep(_Step):
    step: Literal["analyse"] = "analyse"


class ExportStep(_Step):
    step: Literal["export"] = "export"
    csv: StrictBool = True
    report: StrictBool = True

    def _problem(self) -> str | None:
        return None if self.csv or self.report else "csv and report are both false: nothing to export"


_MODELS = (TemperatureStep, PumpStep, LaserStep, CaptureStep, WaitStep, AnalyseStep, ExportStep)
Step = Annotated[Union[_MODELS], Field(discriminator="step")]  # type: ignore[valid-type]
STEP_MODELS: dict[str, type[_Step]] = {m.model_fields["step"].default: m for m in _MODELS}


def describe_step(step: _Step) -> str:
    """One short line with units, e.g. ``temperature 25 C (+-0.1 C for 30 s)``."""
    if isinstance(step, TemperatureStep):
        return f"temperature {step.set_c:g} C (+-{step.tolerance_c:g} C for {step.hold_s:g} s)"
    if isinstance(step, PumpStep):
        flush = (f"flush {step.flush_ul:g} uL at {step.flush_rate_ul_min:g} uL/min, then "
                 if step.flush_ul else "")
        return f"pump {flush}" + (f"flow {step.rate_ul_min:g} uL/min" if step.rate_ul_min else "stop")
    if isinstance(step, LaserStep):
        power = f" at {step.power_mw:g} mW" if step.power_mw is not None else ""
        warm = f" (warm-up {step.warmup_s:g} s)" if step.warmup_s else ""
        return f"laser on{power}{warm}" if step.on else f"laser off{power}"
    if isinstance(step, CaptureStep):
        between = ([f"advance {step.advance_ul:g} uL at {step.advance_rate_ul_min:g} uL/min"]
                   if step.advance_ul else []) + ([f"settle {step.settle_s:g} s"] if step.settle_s else [])
        gap = f" ({', then '.join(between)} between captures)" if between else ""
        return f"capture {step.count} x {step.duration_s:g} s{gap}"
    if isinstance(step, WaitStep):
        return f"wait {step.seconds:g} s"
    if isinstance(step, ExportStep):
        return "export " + " and ".join(n for n, on in (("CSV", step.csv), ("report", step.report)) if on)
    return "analyse"


class Sop(BaseModel):
    """An SOP: ``steps`` run in order; ``source`` is where it was read from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(strict=True, min_length=1, max_length=200)]
    method: Annotated[str, Field(strict=True, pattern=r"^[a-z][a-z0-9_-]{0,39}$")] | None = None
    description: Annotated[str, Field(strict=True, max_length=4000)] = ""
    steps: Annotated[list[Step], Field(min_length=1, max_length=1000)]
    #: A system-suitability (bead-check) SOP: the bead standard file the result is judged against.
    bead_check: Annotated[str, Field(strict=True, min_length=1, max_length=1000)] | None = None
    #: The run is a buffer blank; or: the blank run to subtract from this sample.
    blank: bool = False
    blank_run: Annotated[str, Field(strict=True, min_length=1, max_length=100)] | None = None
    source: str = "SOP"

    @model_validator(mode="after")
    def _has_capture(self) -> Sop:
        if not self.captures():  # laser off at the end is implied (the daemon does it), not required
            raise ValueError("SOP has no capture step")
        return self

    def captures(self) -> list[CaptureStep]:
        return [s for s in self.steps if isinstance(s, CaptureStep)]

    def total_capture_s(self) -> float:
        """Seconds of video over all capture steps."""
        return sum(s.count * s.duration_s for s in self.captures())

    def required_devices(self) -> set[str]:
        """Device kinds the steps need (registry kinds)."""
        kinds = {"temperature-controller": TemperatureStep, "pump": PumpStep, "laser": LaserStep}
        need = {kind for s in self.steps for kind, model in kinds.items() if isinstance(s, model)}
        return need | ({"pump"} if any(c.advance_ul > 0 for c in self.captures()) else set())

    def flow_ul_min_before(self, index: int) -> float:
        """The continuous pump flow in effect when step ``index`` (0-based) starts."""
        pumps = [s for s in self.steps[:index] if isinstance(s, PumpStep)]
        return pumps[-1].rate_ul_min if pumps else 0.0

    def check_method(self, method: str) -> None:
        """ProtocolError if the SOP names another method."""
        if self.method is not None and self.method != method:
            raise ProtocolError(f"{self.source}: SOP '{self.name}' is for method '{self.method}', "
                                f"not '{method}'", code="bad_sop")

    def describe_steps(self) -> list[str]:
        return [describe_step(s) for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for run settings."""
        return self.model_dump(mode="json")


# -- error lines -----------------------------------------------------------------
_UNITS = (("seconds", " s"), ("_ul_min", " uL/min"), ("_ul", " uL"), ("_mw", " mW"), ("_c", " C"),
          ("_s", " s"))
_KIND = {"float_type": "a number", "int_type": "a whole number", "bool_type": "true or false",
         "string_type": "text", "list_type": "an array", "dict_type": "a table"}


def _allowed(model: type[BaseModel], key: str) -> str:
    """``0 < duration_s <= 3600 s`` from the field's declared bounds."""
    field = model.model_fields.get(key)
    if field is None:
        return ""
    metas = list(field.metadata)
    for arg in getattr(field.annotation, "__args__", ()):
        metas += [m for info in getattr(arg, "__metadata__", ()) for m in getattr(info, "metadata", ())]
    low = next((f"{v:g} {op} " for m in metas for a, op in (("gt", "<"), ("ge", "<="))
                if (v := getattr(m, a, None)) is not None), "")
    high = next((f" {op} {v:g}" for m in metas for a, op in (("lt", "<"), ("le", "<="))
                 if (v := getattr(m, a, None)) is not None), "")
    unit = next((u for suffix, u in _UNITS if key.endswith(suffix)), "")
    return f"{low}{key}{high}{unit}" if low or high else ""


def _describe(err: dict[str, Any], model: type[BaseModel], where: str, keys: tuple) -> str:
    key = ".".join(str(k) for k in keys)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = [k for k in model.model_fields if k not in ("step", "source")]
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'? units are part of the key name)" if near else ""
        return f"{where}: unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}"
    allowed = _allowed(model, key)
    if err["type"] == "missing":
        return f"{where}: {key} is missing" + (f" (allowed: {allowed})" if allowed else "")
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where}: {key} = {value!r} is out of range; allowed: {allowed}"
    if err["type"] in _KIND:
        return f"{where}: {key} = {value!r} must be {_KIND[err['type']]}" + (
            f" ({allowed})" if allowed else "")
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {key} = {value!r}: {message}" if key else f"{where}: {message}"


def _sop_errors(exc: ValidationError, source: str) -> list[str]:
    lines, kinds = [], ", ".join(STEP_MODELS)
    for err in exc.errors():
        loc = tuple(err["loc"])
        if not (loc[:1] == ("steps",) and len(loc) >= 2 and isinstance(loc[1], int)):
            lines.append(_describe(err, Sop, source, loc))
        elif len(loc) > 2:
            where = f"{source}: step {loc[1] + 1} ({loc[2]})"
            lines.append(_describe(err, STEP_MODELS[str(loc[2])], where, loc[3:]))
        elif err["type"] == "union_tag_invalid":
            tag = err["input"].get("step")
            near = difflib.get_close_matches(str(tag), STEP_MODELS, n=1, cutoff=0.5)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            lines.append(f"{source}: step {loc[1] + 1}: unknown step {tag!r}{hint}; steps are: {kinds}")
        else:
            problem = (f"no 'step' key naming its kind ({kinds})" if err["type"] == "union_tag_not_found"
                       else "must be a table of keys ([[steps]])")
            lines.append(f"{source}: step {loc[1] + 1}: {problem}")
    return lines


def _refuse(lines: list[str]) -> ProtocolError:
    return ProtocolError("\n".join(dict.fromkeys(lines)), code="bad_sop")


# -- reading ---------------------------------------------------------------------
_TOML_LINE = re.compile(r"^\s*(\[\[?\s*[\w.\"' -]+\]\]?|[\"']?[A-Za-z_][\w.\"' -]*\s*=)", re.M)


def parse_sop(text: str, source: str = "SOP", *, syringe_ul_min_per_unit: float | None = None) -> Sop:
    """Read an SOP, TOML or NanoSight script (detected); ProtocolError ``bad_sop`` lists
    every problem. ``syringe_ul_min_per_unit`` is a measured calibration of a NanoSight
    syringe pump's speed unit, needed only by scripts that use SYRINGELOAD."""
    if _TOML_LINE.search(text):
        return _parse_toml(text, source)
    return _parse_nanosight(text, source, syringe_ul_min_per_unit)


def load_sop(path: Path | str, *, syringe_ul_min_per_unit: float | None = None) -> Sop:
    """Read an SOP file (UTF-8)."""
    try:
        text = read_text_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProtocolError(f"cannot read SOP file {path} ({reason})", code="bad_sop") from None
    return parse_sop(text, str(path), syringe_ul_min_per_unit=syringe_ul_min_per_unit)


def _parse_toml(text: str, source: str) -> Sop:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _refuse([f"{source}: not valid TOML: {exc}"]) from None
    errors = []
    if data.pop("source", None) is not None:
        errors.append(f"{source}: unknown key 'source'; allowed here: name, method, description, steps")
    data.setdefault("name", Path(source).stem or source)
    try:
        sop = Sop.model_validate({**data, "source": source})
    except ValidationError as exc:
        errors += _sop_errors(exc, source)
    if errors:
        raise _refuse(errors)
    return sop


# -- NanoSight NTA scripts ---------------------------------------------------------
#: Script commands exoacq honours: argument, and what it becomes. REPEAT n runs the
#: block since REPEATSTART n more times, n + 1 in all: that is how NanoSight's standard
#: measurement of five videos is scripted, REPEATSTART / CAPTURE 60 / DELAY 1 / REPEAT 4
#: (REFERENCES.md, "NTA practice"). The NTA 3.x manual itself could not be consulted, so
#: this reading rests on that example; a script NanoSight would read otherwise is wrong here.
NANOSIGHT_COMMANDS: dict[str, tuple[str, str]] = {
    "SETTEMP": ("C", "temperature step, tolerance 0.1 C held 30 s within 900 s (exoacq's defaults)"),
    "CAPTURE": ("s", "one video of that many seconds"),
    "DELAY": ("s", "a wait; between two equal captures, the pause before the second"),
    "REPEATSTART": ("", "start of a repeated block"),
    "REPEAT": ("n", "runs the block since REPEATSTART n more times"),
    "SYRINGELOAD": ("speed", "pump flow; needs syringe_ul_min_per_unit (a measured calibration)"),
    "SYRINGESTOP": ("", "pump stop"),
    "PROCESSBASIC": ("", "analyse"),
    "PROCESSSINGLESETTING": ("", "analyse (one setting for all videos, as exoacq always does)"),
    "EXPORTRESULTS": ("", "export CSV and report"),
}
#: NanoSight commands exoacq refuses, with the reason and what to do instead.
NANOSIGHT_UNSUPPORTED: dict[str, str] = {
    "CAMERALEVEL": "camera level is NanoSight's own brightness scale; set exposure_ms (and gain) "
                   "of [instruments.camera] in the configuration instead",
    "CAMERAGAIN": "camera settings come from [instruments.camera] in the configuration",
    "CAMERASHUTTER": "camera settings come from [instruments.camera] in the configuration",
    "SETFOCUS": "exoacq has no focus drive; focus by hand while previewing",
    "PRIME": "NanoSight primes at its own speed and volume; write a TOML pump step with "
             "flush_ul and flush_rate_ul_min",
    "PLAY": "the live view is the client's preview, not an SOP step",
}
_NO_CALIBRATION = ("SYRINGELOAD is not supported without a calibration: NanoSight's syringe pump "
                   "speed is in the NanoSight software's own units, not uL/min; give a measured "
                   "syringe_ul_min_per_unit, or write the flow as a TOML pump step (rate_ul_min)")
_MAX_EXPANDED = 10_000


class _Op(NamedTuple):
    line: int
    cmd: str
    value: float


def _command(number: int, raw: str, per_unit: float | None) -> tuple[_Op | None, str | None]:
    """One script line: (command, problem); both None for a blank or comment line. A REPEAT
    with a bad count still closes its block (as REPEAT 0) so that one mistake is one line."""
    line = re.split(r"#|//", raw, maxsplit=1)[0].strip()
    if not line or line.startswith(";"):
        return None, None
    word, *args = line.split()
    cmd, given = word.upper(), " ".join(args)
    if cmd in NANOSIGHT_UNSUPPORTED:
        return None, f"{cmd} is not supported: {NANOSIGHT_UNSUPPORTED[cmd]}"
    if cmd not in NANOSIGHT_COMMANDS:
        near = difflib.get_close_matches(cmd, [*NANOSIGHT_COMMANDS, *NANOSIGHT_UNSUPPORTED], 1, 0.7)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return None, (f"{word} is not a NanoSight script command exoacq knows{hint}; "
                      f"it runs {', '.join(NANOSIGHT_COMMANDS)}")
    unit = NANOSIGHT_COMMANDS[cmd][0]
    if not unit:
        return (None, f"{cmd} takes no argument, not '{given}'") if args else (_Op(number, cmd, 0.0), None)
    try:
        value = float(args[0]) if len(args) == 1 else math.nan
    except ValueError:
        value = math.nan
    if cmd == "REPEAT" and not (0 <= value <= _MAX_EXPANDED and value.is_integer()):
        return _Op(number, cmd, 0.0), f"REPEAT takes a whole number of repeats >= 0, not '{given}'"
    if not math.isfinite(value):
        return None, f"{cmd} takes one number ({unit}), not '{given}'"
    if cmd != "SYRINGELOAD":
        return _Op(number, cmd, value), None
    if per_unit is None:
        return None, _NO_CALIBRATION
    if value <= 0:
        return None, "SYRINGELOAD takes a speed > 0; SYRINGESTOP stops the pump"
    return _Op(number, cmd, value * per_unit), None


def _script_ops(text: str, per_unit: float | None) -> tuple[list[_Op], list[tuple[int, str]]]:
    """The commands with repeats expanded, and (line, problem) for every refused line."""
    errors: list[tuple[int, str]] = []
    stack: list[tuple[int, list[_Op]]] = [(0, [])]
    for number, raw in enumerate(text.splitlines(), 1):
        op, problem = _command(number, raw, per_unit)
        if problem:
            errors.append((number, problem))
        if op is None:
            continue
        if op.cmd == "REPEATSTART":
            stack.append((number, []))
        elif op.cmd == "REPEAT" and len(stack) == 1:
            errors.append((number, "REPEAT without REPEATSTART before it"))
        elif op.cmd == "REPEAT":
            block = stack.pop()[1]
            if len(stack[-1][1]) + len(block) * (int(op.value) + 1) > _MAX_EXPANDED:
                return [], errors + [(number, f"the repeats expand to more than {_MAX_EXPANDED} commands")]
            stack[-1][1].extend(block * (int(op.value) + 1))
        else:
            stack[-1][1].append(op)
    errors += [(n, "REPEATSTART without a REPEAT closing it") for n, _ in stack[1:]]
    return stack[0][1], errors


def _gap(ops: list[_Op], j: int, pumping: bool) -> tuple[tuple, int]:
    """What follows a capture from ``ops[j]``: ((advance_ul, rate), settle_s), and where it ends.
    An advance is SYRINGELOAD / DELAY / SYRINGESTOP with the pump stopped before it."""
    advance: tuple = (0.0, None)
    if not pumping and [o.cmd for o in ops[j:j + 3]] == ["SYRINGELOAD", "DELAY", "SYRINGESTOP"]:
        advance, j = (ops[j].value * ops[j + 1].value / 60.0, ops[j].value), j + 3
    settle = 0.0
    while j < len(ops) and ops[j].cmd == "DELAY":
        settle, j = settle + ops[j].value, j + 1
    return (advance, settle), j


def _script_steps(ops: list[_Op]) -> list[tuple[int, type[_Step], dict[str, Any]]]:
    """(line, step model, keys): equal captures separated by the same gap merge into one
    capture step; SYRINGELOAD / DELAY / SYRINGESTOP from a stopped pump is a flush."""
    made: list[tuple[int, type[_Step], dict[str, Any]]] = []
    flow, i = 0.0, 0
    while i < len(ops):
        op, i = ops[i], i + 1
        if op.cmd == "CAPTURE":
            count, gap = 1, None
            while count < MAX_COUNT:
                between, k = _gap(ops, i, flow > 0)
                if k >= len(ops) or ops[k][1:] != op[1:] or gap not in (None, between):
                    break
                count, gap, i = count + 1, between, k + 1
            ((advance, rate), settle) = gap or ((0.0, None), 0.0)
            made.append((op.line, CaptureStep, dict(count=count, duration_s=op.value, advance_ul=advance,
                                                    advance_rate_ul_min=rate, settle_s=settle)))
        elif (op.cmd == "SYRINGELOAD" and flow == 0
              and [o.cmd for o in ops[i:i + 2]] == ["DELAY", "SYRINGESTOP"]):
            made.append((op.line, PumpStep, dict(flush_ul=op.value * ops[i].value / 60.0,
                                                 flush_rate_ul_min=op.value)))
            i += 2
        elif op.cmd in ("SYRINGELOAD", "SYRINGESTOP"):
            flow = op.value if op.cmd == "SYRINGELOAD" else 0.0
            made.append((op.line, PumpStep, dict(rate_ul_min=flow)))
        elif op.cmd in ("SETTEMP", "DELAY"):
            model = TemperatureStep if op.cmd == "SETTEMP" else WaitStep
            made.append((op.line, model, {"set_c" if op.cmd == "SETTEMP" else "seconds": op.value}))
        else:
            made.append((op.line, ExportStep if op.cmd == "EXPORTRESULTS" else AnalyseStep, {}))
    return made


def _parse_nanosight(text: str, source: str, per_unit: float | None) -> Sop:
    ops, refused = _script_ops(text, per_unit)
    errors = [(n, f"{source} line {n}: {problem}") for n, problem in refused]
    steps = []
    for number, model, keys in _script_steps(ops):
        try:
            steps.append(model(**keys))
        except ValidationError as exc:
            at = f"{source} line {number} ({model.model_fields['step'].default})"
            errors += [(number, _describe(e, model, at, tuple(e["loc"]))) for e in exc.errors()]
    if errors:
        raise _refuse([line for _, line in sorted(errors, key=lambda e: e[0])])
    if not steps:
        raise _refuse([f"{source}: SOP has no capture step (no script commands at all)"])
    try:
        return Sop(name="NanoSight script", method="nta", steps=steps, source=source)
    except ValidationError as exc:
        raise _refuse(_sop_errors(exc, source)) from None
