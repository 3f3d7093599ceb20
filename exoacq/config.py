"""Configuration: one TOML file for the daemon and its instruments.

An instrument is a named group of devices serving one method::

    [instruments.nta]                      # the instrument's name
    method = "nta"
    [instruments.nta.devices.laser]        # role = a device, by driver
    driver = "obis"
    port = "/dev/ttyACM0"
    [instruments.nta.settings]             # the method's settings for it
    [instruments.nta.simulation]           # the sample its simulated devices see

Units are part of every key name (``power_mw``, ``exposure_ms``). Validation
is pydantic's, in two stages: the file's shape here, then each device's keys
by its driver and each instrument's settings by its method (both plugins).
:func:`load_config` turns every report into lines that name the key, the
value and what is allowed, so that the daemon refuses a bad file at start.
"""
from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from exoacq.errors import ConfigError
from exoacq.registry import Registry, installed
from exoacq.textfile import read_text_file

Endpoint = Annotated[str, Field(pattern=r"^(tcp|ipc|inproc)://.+$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DaemonConfig(_Section):
    control: Endpoint = "tcp://127.0.0.1:5555"
    results: Endpoint = "tcp://127.0.0.1:5556"
    frames: Endpoint = "tcp://127.0.0.1:5557"
    #: None: the user's state directory (``~/.local/state/exoacq``).
    data_dir: Path | None = None
    #: CurveZMQ keys (exoacq.security; `exoacq keys init`), needed when a socket binds off loopback.
    #: None: the user's config directory (``~/.config/exoacq/keys``).
    keys_dir: Path | None = None
    #: Prometheus endpoint (exoacq.metrics): HOST:PORT or "off"; no authentication, so loopback only
    #: unless metrics_allow_remote.
    metrics: str = "127.0.0.1:9464"
    metrics_allow_remote: bool = False

    @model_validator(mode="after")
    def _distinct_endpoints(self) -> "DaemonConfig":
        """The daemon binds each of its sockets: two at one endpoint cannot both bind (a port "*" is chosen
        by the system at bind time, a different one for each)."""
        named = {"control": self.control, "results": self.results, "frames": self.frames}
        for a, b in (("control", "results"), ("control", "frames"), ("results", "frames")):
            if named[a] == named[b] and not named[a].endswith(":*"):
                raise ValueError(f"{a} and {b} are both {named[a]}: each socket needs its own endpoint")
        return self

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else Path(platformdirs.user_state_dir("exoacq"))


class DeviceConfig(_Section):
    """One device: its driver, whether it is simulated, and the driver's own keys."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    driver: str
    #: true: the driver's simulated twin is started and the real driver talks to it.
    simulated: bool = False
    _driver: Any = PrivateAttr(None)
    _options: Any = PrivateAttr(None)

    @property
    def plugin(self) -> Any:
        """The :class:`exoacq.registry.Driver`."""
        return self._driver

    @property
    def options(self) -> Any:
        """The driver's validated options (its ``DriverOptions`` model)."""
        return self._options

    def driver_keys(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InstrumentConfig(_Section):
    method: str
    description: str = ""
    devices: dict[Name, DeviceConfig] = {}
    settings: dict[str, Any] = {}
    simulation: dict[str, Any] = {}
    _method: Any = PrivateAttr(None)
    _settings: Any = PrivateAttr(None)
    _simulation: Any = PrivateAttr(None)

    @property
    def plugin(self) -> Any:
        """The :class:`exoacq.methods.Method`."""
        return self._method

    @property
    def options(self) -> Any:
        """The method's validated settings."""
        return self._settings

    @property
    def sample(self) -> Any:
        """The method's validated simulation section."""
        return self._simulation

    @property
    def simulated(self) -> bool:
        return any(d.simulated for d in self.devices.values())


class Config(_Section):
    daemon: DaemonConfig = DaemonConfig()
    instruments: dict[Name, InstrumentConfig] = {}


#: Where ``calibrations/`` ships (a source checkout or an editable install).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_file(path: Path | str, relative_to: Path | None, what: str = "file") -> Path:
    """A file a configuration names (a calibration, gates): an absolute path as given; a relative
    one beside the configuration file, then in the project root; the first that exists wins."""
    path = Path(path)
    if path.is_absolute():
        if not path.exists():
            raise ConfigError(f"{what} {path} not found")
        return path
    candidates = [base / path for base in (relative_to, PROJECT_ROOT) if base is not None]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise ConfigError(f"{what} {path} not found (looked in: {', '.join(str(c) for c in candidates)})")
    return found


def load_toml_model(path: Path | str, model: type[BaseModel], what: str) -> Any:
    """A TOML file validated by a pydantic model (a calibration, a bead standard); a one-line
    ConfigError names the file and the first bad key: ``calibration PATH: result.volume_nl: ...``."""
    try:
        data = tomllib.loads(read_text_file(path))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not a TOML text file (not UTF-8 at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{what} {path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None


def example_text() -> str:
    """The commented example configuration (several instruments)."""
    return resources.files("exoacq").joinpath("config_example.toml").read_text(encoding="utf-8")


# -- error reports -------------------------------------------------------------------------
def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return list(model.model_fields)
        ann = field.annotation
        candidates = (ann, *getattr(ann, "__args__", ()))
        sub = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            args = getattr(ann, "__args__", ())  # dict[str, Model]: the key is a name, the value a model
            sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is None:
                return []
        model = sub
    return list(model.model_fields)


def describe_validation(exc: ValidationError, source: str, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per problem: the key (with ``prefix``), the value and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = prefix + (".".join(str(p) for p in loc) or "(top level)")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean '{near[0]}'? units are part of the key name)" if near else ""
            lines.append(f"{source}: unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "string_pattern_mismatch" and "tcp|ipc" in msg:
                msg = "must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///run/exoacq/control"
            elif err["type"] == "string_pattern_mismatch":
                msg = "must be a name of letters, digits, - and _ (starting with a letter)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"{source}: {key}{shown}: {msg}")
    return lines


def validate_section(model: type[BaseModel], data: dict[str, Any], source: str, prefix: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_validation(exc, source, model, prefix))) from None


# -- loading ---------------------------------------------------------------------------
def parse_config(data: dict[str, Any], source: str = "configuration", *, registry: Registry | None = None,
                 relative_to: Path | None = None, simulated: bool = False) -> Config:
    """Validate a configuration's data, drivers' keys and methods' settings included.

    ``simulated`` switches every device to its simulated twin (a device
    without one is replaced by what its method simulates in that role).
    """
    config = validate_section(Config, data, source, "")
    registry = registry or installed()
    problems: list[str] = []
    for name, instrument in config.instruments.items():
        try:
            resolve_instrument(name, instrument, registry, source, relative_to, simulated=simulated)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return config


def resolve_instrument(name: str, instrument: InstrumentConfig, registry: Registry, source: str,
                       relative_to: Path | None, *, simulated: bool = False) -> None:
    """Check one instrument against its method's roles and its drivers' options."""
    prefix = f"instruments.{name}"
    try:
        method = registry.method(instrument.method)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {prefix}.method = {instrument.method!r}: {exc}") from None
    instrument._method = method
    problems: list[str] = []
    unknown = sorted(set(instrument.devices) - set(method.roles))
    if unknown:
        problems.append(f"{source}: {prefix}.devices: unknown role(s) {', '.join(unknown)} for method "
                        f"{method.name}; its roles: {', '.join(method.roles)}")
    for role, spec in method.roles.items():
        device = instrument.devices.get(role)
        if device is None:
            if spec.required:
                problems.append(f"{source}: {prefix}.devices.{role} is missing: method {method.name} needs a "
                                f"{' or '.join(spec.kinds)} ({spec.description})")
            continue
        if simulated and not device.simulated:
            substitute = _simulated_twin(method, role, device, registry)
            if substitute is not device:
                instrument.devices[role] = device = substitute
            device.simulated = True
        try:
            driver = registry.driver(device.driver)
        except ConfigError as exc:
            problems.append(f"{source}: {prefix}.devices.{role}.driver = {device.driver!r}: {exc}")
            continue
        if driver.kind not in spec.kinds:
            problems.append(f"{source}: {prefix}.devices.{role}.driver = {device.driver!r} is a {driver.kind}; "
                            f"the {role} of method {method.name} must be a {' or '.join(spec.kinds)}")
            continue
        if device.simulated and driver.simulator is None and not driver.simulation_only:
            problems.append(f"{source}: {prefix}.devices.{role}: driver {driver.name!r} has no simulated twin")
        if not device.simulated and driver.simulation_only:
            problems.append(f"{source}: {prefix}.devices.{role}: driver {driver.name!r} is a simulation: "
                            "set simulated = true")
        try:
            device._options = validate_section(driver.options, device.driver_keys(), source,
                                               f"{prefix}.devices.{role}.")
            device._driver = driver
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        instrument._settings = validate_section(method.settings_model, instrument.settings, source,
                                                f"{prefix}.settings.")
        instrument._simulation = validate_section(method.simulation_model, instrument.simulation, source,
                                                  f"{prefix}.simulation.")
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    method.prepare(instrument, relative_to, source)


def _simulated_twin(method: Any, role: str, device: DeviceConfig, registry: Registry) -> DeviceConfig:
    """The device itself if its driver has a simulated twin, else the method's simulation of the role."""
    try:
        driver = registry.driver(device.driver)
    except ConfigError:
        return device  # reported as an unknown driver by the caller
    if driver.simulator is not None or driver.simulation_only:
        return device
    substitute = method.simulated_instrument()["devices"].get(role)
    if substitute is None:
        raise ConfigError(f"device {role} (driver {device.driver!r}) has no simulated twin")
    return DeviceConfig.model_validate(substitute)


def load_config(path: Path | str | None = None, *, simulated: bool = False,
                registry: Registry | None = None) -> Config:
    """Read and validate a configuration file.

    None: one simulated instrument per installed method (``exoacq daemon --simulated``).
    """
    registry = registry or installed()
    if path is None:
        return parse_config(simulated_config_data(registry), "simulated instruments", registry=registry,
                            simulated=True)
    source = str(path)
    try:
        text = read_text_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not a TOML text file (not UTF-8 at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source, registry=registry, relative_to=Path(path).resolve().parent,
                        simulated=simulated)


def simulated_config_data(registry: Registry) -> dict[str, Any]:
    """One simulated instrument per installed method, named after the method."""
    instruments = {}
    for name, method in sorted(registry.methods.items()):
        try:
            instruments[name] = method.simulated_instrument()
        except NotImplementedError:
            continue
    return {"instruments": instruments}
