"""An emulated New Era NE-1000 syringe pump serving its RS-232 protocol on a pseudo-terminal.

It answers the command set of the NE-1000 user manual (Publication #1200-01),
"RS-232 Communications": Basic mode (``[<address>] <command> CR``, spaces and
control characters ignored, any case; replies ``STX <address> <status> [<data>]
ETX``), Safe mode (``STX <length> <command data> <CRC-16 CCITT> ETX`` both ways,
entered with ``SAF <n>``, left with ``SAF 0``; a Safe-mode packet is understood
in Basic mode too, as the manual's ``(0x2)(0x8)SAF0(0x55)(0x43)(0x3)`` needs),
network addresses and ``*`` system commands, the status prompts, the alarms
(``A?R`` after a power cut, ``A?S`` motor stall, ``A?T`` Safe-mode time out,
sent unprompted in Safe mode) and the errors ``?``, ``?NA``, ``?OOR``, ``?COM``.
Give :attr:`NE1000Simulator.port` to :class:`exoacq.drivers.ne1000.NE1000Pump`
or to any program written from the manual.

The plunger moves in (simulated) time: while running, the dispensed volume grows
at the rate; with a target volume (``VOL``) the pump stops by itself (status
``S``) when the phase has moved it. ``clock`` may be replaced by a test.

Transcript: ``("rx", command)`` with the command text as received (control
characters removed), ``("tx", reply)`` with the reply packet's data between the
framing, e.g. ``("tx", "00S")`` for ``b"\\x0200S\\x03"`` on the wire; an unprompted
Safe-mode alarm is a ``tx`` entry with no ``rx`` before it.

Readings of the manual made here (it leaves them open): an address-less command
is taken by the pump whatever its address; a command with an invalid parameter
gets ``?OOR``, a query-only command given a parameter ``?NA``; a stall or a
Safe-mode time out pauses the program (``RUN`` after acknowledging resumes it);
the pumping program has one phase (``PHN 1``, ``FUN RAT``); ``DIA`` keeps the
target volume's number and rate and clears the dispensed volumes; ``VOL UL|ML``
keeps the number; the beeps of ``BUZ 1 <n>`` last 0.5 s each; a dispensed volume
beyond 4 digits reads 9999.
"""
from __future__ import annotations

import binascii
import os
import re
import select
import time
from collections.abc import Callable

from exoacq.drivers.ne1000 import (BAUD_RATES, COMMANDS, DIAMETER_MM, ETX, MAX_NUMBER, MOVING,
                                   RATE_UNITS, ROUNDING, STX, VOLUME_UNITS, number,
                                   rate_limits_ul_min, volume_units_for)
from exoacq.drivers.serial_sim import PtySimulator

_MNEMONICS = sorted((c.mnemonic for c in COMMANDS.values() if not c.mnemonic.startswith("*")),
                    key=len, reverse=True)
_SYSTEM = sorted((c.mnemonic[1:] for c in COMMANDS.values() if c.mnemonic.startswith("*")),
                 key=len, reverse=True)
_TRIGGERS = COMMANDS["trigger"].syntax.strip("[]").replace(" ", "").split("|")
_QUERY_ONLY = {"DIS", "VER", "PUR", "STP"}
_BEEP_S = 0.5
_STX, _ETX, _CR = STX.encode(), ETX.encode(), b"\r"


class _Err(Exception):
    def __init__(self, reply: str):
        self.reply = reply


def _float(text: str) -> float:
    """A ``<float>`` parameter: at most 4 digits, at most 3 after the point."""
    if not re.fullmatch(r"\d+\.?\d*|\.\d+", text):
        raise _Err("?OOR")
    whole, _, decimals = text.partition(".")
    if len(whole.lstrip("0")) + len(decimals) > 4 or len(decimals) > 3:
        raise _Err("?OOR")
    return float(text)


def _on_off(text: str) -> bool:
    if text not in ("0", "1"):
        raise _Err("?OOR")
    return text == "1"


def crc16(data: bytes) -> int:
    """The Safe-mode checksum: 16-bit CCITT CRC (XModem), initial value 0."""
    return binascii.crc_hqx(data, 0)


class NE1000Simulator(PtySimulator):
    """An NE-1000 pump on a pty. ``with NE1000Simulator() as sim: NE1000Pump(sim.port)``.

    Factory state: B-D 1 mL syringe (4.699 mm), 10 uL/min, infuse, no target
    volume, stopped, Basic mode, address ``address``. ``reset_alarm=True``
    starts with the power-up alarm ``A?R`` pending, as a pump just switched on.
    Fault injection: :meth:`stall`, :meth:`power_cycle`, ``silent``, :meth:`unplug`;
    ``ttl_inputs`` holds the levels of the TTL input pins.
    """

    name = "ne1000"

    def __init__(self, *, address: int = 0, model: str = "1000", firmware: str = "3.928",
                 diameter_mm: float = 4.699, reset_alarm: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.model = model
        self.firmware = firmware
        self.clock = clock
        self.ttl_inputs: dict[int, int] = {2: 0, 3: 0, 4: 0, 6: 0}
        self._address = address
        self._baud = 19200
        self._pairing = ""  # DUAL or RECP: only "*" commands are answered
        self._safe_timeout_s = 0
        self._safe_deadline: float | None = None
        self._diameter_mm = diameter_mm
        self._volume_units = volume_units_for(diameter_mm)
        self._infused_ul = self._withdrawn_ul = 0.0
        self._alarm = "R" if reset_alarm else ""
        self._flags = {"AL": False, "PF": False, "LOC": False, "BP": True, "DIN": False,
                       "ROM": False}
        self._trigger = "FT"
        self._ttl_output = 0
        self._buzzer_until = 0.0  # clock time; inf: on until BUZ 0
        self._clear_program()

    # -- public view of the pump -----------------------------------------------
    @property
    def status(self) -> str:
        """The prompt character now: I, W, S, P or X."""
        with self._lock:
            self._advance()
            return self._status

    @property
    def running(self) -> bool:
        return self.status in MOVING

    @property
    def infused_ul(self) -> float:
        with self._lock:
            self._advance()
            return self._infused_ul

    @property
    def withdrawn_ul(self) -> float:
        with self._lock:
            self._advance()
            return self._withdrawn_ul

    @property
    def dispensed_ul(self) -> float:
        """Infused minus withdrawn, uL."""
        with self._lock:
            self._advance()
            return self._infused_ul - self._withdrawn_ul

    @property
    def rate_ul_min(self) -> float:
        with self._lock:
            return self._rate * RATE_UNITS[self._rate_units]

    @property
    def diameter_mm(self) -> float:
        return self._diameter_mm

    @property
    def safe_mode(self) -> bool:
        return self._safe_timeout_s > 0

    @property
    def ttl_output(self) -> int:
        """The level of TTL output pin 5 (``OUT 5 <level>``)."""
        return self._ttl_output

    def stall(self) -> None:
        """The motor stalls: the plunger stops (program paused) and ``A?S`` is pending."""
        with self._lock:
            self._advance()
            if self._status in MOVING:
                self._status = "P"
            self._alarm = "S"

    def power_cycle(self) -> None:
        """Power is cut and comes back: stopped, ``A?R`` pending; settings kept (non-volatile)."""
        with self._lock:
            self._advance()
            self._status, self._phase_ul, self._alarm = "S", 0.0, "R"

    # -- emulated pump -------------------------------------------------------------
    def _clear_program(self) -> None:
        """Program memory at the factory: one RAT phase, 10 uL/min, infuse, no target."""
        self._rate, self._rate_units = 10.0, "UM"
        self._volume = 0.0
        self._direction = "INF"
        self._status = "S"
        self._phase_ul = 0.0
        self._since = self.clock()

    def _rate_now(self) -> float:
        if self._status == "X":
            return rate_limits_ul_min(self._diameter_mm)[1]
        return self._rate * RATE_UNITS[self._rate_units]

    def _target_ul(self) -> float:
        return self._volume * VOLUME_UNITS[self._volume_units]

    def _advance(self) -> None:
        """Move the plunger from the last update to now; stop at the target volume."""
        now = self.clock()
        elapsed, self._since = max(0.0, now - self._since), now
        if self._status not in MOVING:
            return
        moved = self._rate_now() * elapsed / 60.0
        target = self._target_ul()
        if self._status != "X" and target > 0 and self._phase_ul + moved >= target:
            moved, self._status = max(0.0, target - self._phase_ul), "S"
            self._phase_ul = target
        else:
            self._phase_ul += moved
        infusing = self._direction == "INF"
        if infusing:
            self._infused_ul += moved
        else:
            self._withdrawn_ul += moved

    def _moving_status(self) -> str:
        return "I" if self._direction == "INF" else "W"

    def _check_rate(self, rate_ul_min: float) -> None:
        low, high = rate_limits_ul_min(self._diameter_mm)
        if not low * (1 - ROUNDING) <= rate_ul_min <= high * (1 + ROUNDING):
            raise _Err("?OOR")

    def _volume_text(self, volume_ul: float) -> str:
        """A dispensed volume as displayed: 4 digits, held at 9999 beyond that."""
        return number(min(volume_ul / VOLUME_UNITS[self._volume_units], MAX_NUMBER))

    # -- commands ----------------------------------------------------------------------
    def _do(self, mnemonic: str, arg: str) -> str:
        """Execute one command; returns the reply data ("" for status only)."""
        pumping = self._status in MOVING
        if mnemonic in _QUERY_ONLY and arg:
            raise _Err("?NA")
        if mnemonic == "DIA":
            if not arg:
                return number(self._diameter_mm)
            value = _float(arg)
            if self._status != "S":
                raise _Err("?NA")
            if not DIAMETER_MM[0] <= value <= DIAMETER_MM[1]:
                raise _Err("?OOR")
            self._diameter_mm = value
            self._volume_units = volume_units_for(value)
            self._infused_ul = self._withdrawn_ul = 0.0
            return ""
        if mnemonic == "RAT":
            if not arg:
                return number(self._rate) + self._rate_units
            match = re.fullmatch(r"([\d.]+)(UM|MM|UH|MH)?", arg)
            if not match:
                raise _Err("?OOR")
            value, units = _float(match[1]), match[2] or self._rate_units
            if pumping and units != self._rate_units:
                raise _Err("?NA")  # rate units cannot be changed while pumping
            self._check_rate(value * RATE_UNITS[units])
            self._rate, self._rate_units = value, units
            return ""
        if mnemonic == "VOL":
            if not arg:
                return number(self._volume) + self._volume_units
            if pumping:
                raise _Err("?NA")
            if arg in VOLUME_UNITS:
                self._volume_units = arg
            else:
                self._volume = _float(arg)
            return ""
        if mnemonic == "DIR":
            if not arg:
                return self._direction
            if arg not in ("INF", "WDR", "REV"):
                raise _Err("?OOR")
            if pumping and (self._status == "X" or self._target_ul() > 0):
                raise _Err("?NA")  # only while pumping continuously
            new = arg if arg != "REV" else ("WDR" if self._direction == "INF" else "INF")
            self._direction = new
            if pumping:
                self._status = self._moving_status()
            return ""
        if mnemonic == "RUN":
            if arg and (not arg.isdigit() or not 1 <= int(arg) <= 41):
                raise _Err("?OOR")
            if arg and int(arg) != 1:
                raise _Err("?NA")  # the emulated program has one phase
            if self._status == "P":
                self._status = self._moving_status()
            elif self._status == "S":
                self._check_rate(self._rate * RATE_UNITS[self._rate_units])
                self._phase_ul = 0.0
                self._status = self._moving_status()
            elif self._status == "X":
                raise _Err("?NA")
            return ""
        if mnemonic == "PUR":
            if self._status not in "SP":
                raise _Err("?NA")
            self._status = "X"
            return ""
        if mnemonic == "STP":
            if self._status in "IW":
                self._status = "P"
            elif self._status in "PX":
                self._status, self._phase_ul = "S", 0.0
            return ""
        if mnemonic == "DIS":
            units = self._volume_units
            return (f"I{self._volume_text(self._infused_ul)}"
                    f"W{self._volume_text(self._withdrawn_ul)}{units}")
        if mnemonic == "CLD":
            if arg == "INF":
                self._infused_ul = 0.0
            elif arg == "WDR":
                self._withdrawn_ul = 0.0
            else:
                raise _Err("?OOR")
            return ""
        if mnemonic == "PHN":
            if not arg:
                return "01"
            if not arg.isdigit() or not 1 <= int(arg) <= 41:
                raise _Err("?OOR")
            if int(arg) != 1:
                raise _Err("?NA")
            return ""
        if mnemonic == "FUN":
            if not arg:
                return "RAT"
            if arg != "RAT":
                raise _Err("?NA")
            return ""
        if mnemonic == "SAF":
            if not arg:
                return str(self._safe_timeout_s)
            if not arg.isdigit() or int(arg) > 255:
                raise _Err("?OOR")
            self._safe_timeout_s = int(arg)
            return ""
        if mnemonic in self._flags:
            if not arg:
                return "1" if self._flags[mnemonic] else "0"
            self._flags[mnemonic] = _on_off(arg)
            return ""
        if mnemonic == "TRG":
            if not arg:
                return self._trigger
            if arg not in _TRIGGERS:
                raise _Err("?OOR")
            self._trigger = arg
            return ""
        if mnemonic == "IN":
            if not arg.isdigit() or int(arg) not in self.ttl_inputs:
                raise _Err("?OOR")
            return str(self.ttl_inputs[int(arg)])
        if mnemonic == "OUT":
            if len(arg) != 2 or arg[0] != "5":
                raise _Err("?OOR")
            self._ttl_output = int(_on_off(arg[1]))
            return ""
        if mnemonic == "BUZ":
            now = self.clock()
            if not arg:
                return "1" if now < self._buzzer_until else "0"
            if arg == "0":
                self._buzzer_until = 0.0
            elif arg == "1":
                self._buzzer_until = float("inf")
            elif arg[0] == "1" and arg[1:].isdigit() and 1 <= int(arg[1:]) <= 99:
                self._buzzer_until = now + _BEEP_S * int(arg[1:])
            else:
                raise _Err("?OOR")
            return ""
        if mnemonic == "VER":
            return f"NE{self.model}V{self.firmware}"
        if mnemonic == "ADR":
            if not arg:
                return f"{self._address:02d}"
            match = re.fullmatch(r"(\d{1,2})(?:B(\d+))?(DUAL|RECP)?", arg)
            if not match or (match[2] and int(match[2]) not in BAUD_RATES):
                raise _Err("?OOR")
            self._address = int(match[1])
            self._baud = int(match[2]) if match[2] else (19200 if match[3] else self._baud)
            self._pairing = match[3] or ""
            return ""
        if mnemonic == "RESET":
            if arg:
                raise _Err("?NA")
            self._clear_program()
            self._address, self._pairing, self._safe_timeout_s = 0, "", 0
            self._safe_deadline = None
            return ""
        raise _Err("?")

    def reply(self, command: str) -> list[str]:
        """The reply data for one received command (no answer: not for this pump)."""
        text = "".join(c for c in command if c.isprintable() and not c.isspace()).upper()
        system = text.startswith("*")
        if system:
            text = text[1:]
        else:
            digits = re.match(r"\d{0,2}", text)[0]  # type: ignore[index]
            if (digits and int(digits) != self._address) or self._pairing:
                return []
            text = text[len(digits):]
        self._advance()
        if self._alarm:  # any command acknowledges the alarm, and is not carried out
            alarm, self._alarm = self._alarm, ""
            return [f"{self._address:02d}A?{alarm}"]
        data = ""
        if text:
            names = _SYSTEM if system else _MNEMONICS
            mnemonic = next((m for m in names if text.startswith(m)), None)
            if mnemonic is None and system:  # "*" also overrides the address of normal commands
                mnemonic = next((m for m in _MNEMONICS if text.startswith(m)), None)
            if mnemonic is None:
                data = "?"
            else:
                try:
                    data = self._do(mnemonic, text[len(mnemonic):])
                except _Err as err:
                    data = err.reply
        return [f"{self._address:02d}{self._status}{data}"]

    # -- framing -----------------------------------------------------------------------
    def encode(self, reply: str) -> bytes:
        """One reply in Basic mode: STX, data, ETX."""
        return _STX + reply.encode("ascii") + _ETX

    def encode_safe(self, reply: str) -> bytes:
        """One reply in Safe mode: STX, length, data, CRC-16 (high, low), ETX."""
        data = reply.encode("ascii")
        return _STX + bytes([len(data) + 4]) + data + crc16(data).to_bytes(2, "big") + _ETX

    def _frame(self, replies: list[str]) -> bytes:
        framer = self.encode_safe if self._safe_timeout_s else self.encode
        return b"".join(framer(reply) for reply in replies)

    def _take(self, buffer: bytes) -> tuple[tuple[str, bytes] | None, bytes]:
        """The next complete packet in ``buffer``: ("basic"|"safe", bytes), and the rest."""
        while buffer:
            if buffer[:1] == _STX:
                if len(buffer) < 2 or len(buffer) < 1 + max(buffer[1], 1):
                    return None, buffer  # wait for the rest of the packet
                end = 1 + max(buffer[1], 1)
                return ("safe", buffer[:end]), buffer[end:]
            stx, cr = buffer.find(_STX), buffer.find(_CR)
            if self._safe_timeout_s or (stx >= 0 and (cr < 0 or stx < cr)):
                if stx < 0:
                    return None, b""  # not a packet: line noise
                buffer = buffer[stx:]
                continue
            if cr < 0:
                return None, buffer
            return ("basic", buffer[:cr]), buffer[cr + 1:]
        return None, buffer

    def _handle(self, kind: str, packet: bytes) -> bytes:
        """Record and answer one packet (the lock is held)."""
        if kind == "basic":
            command = "".join(c for c in packet.decode("ascii", errors="replace")
                              if c.isprintable()).strip()
            valid = True
        else:
            data = packet[2:-3]
            command = data.decode("ascii", errors="replace")
            valid = (len(packet) >= 5 and packet[1] == len(packet) - 1 and packet[-1:] == _ETX
                     and crc16(data) == int.from_bytes(packet[-3:-1], "big"))
            if not valid:
                command = f"{command} (invalid packet {packet!r})"
        self._transcript.append(("rx", command))
        if self.silent:
            return b""
        was_safe = self._safe_timeout_s
        if valid:
            replies = self.reply(command)
        else:
            self._advance()
            replies = [f"{self._address:02d}{self._status}?COM"]
        if not self._safe_timeout_s:
            self._safe_deadline = None
        elif valid and (kind == "safe" or not was_safe):  # a valid packet restarts the timer
            self._safe_deadline = time.monotonic() + self._safe_timeout_s
        self._transcript.extend(("tx", reply) for reply in replies)
        return self._frame(replies)

    def _time_out(self) -> bytes:
        """Safe mode: no valid packet in time. Pause pumping, send the alarm unprompted."""
        self._safe_deadline = None  # off until the next valid packet
        if self.silent or not self._safe_timeout_s:
            return b""
        self._advance()
        if self._status in MOVING:
            self._status = "P"
        self._alarm = "T"
        reply = f"{self._address:02d}A?T"
        self._transcript.append(("tx", reply))
        return self._frame([reply])

    def _serve(self) -> None:
        """The base class's loop, with packet framing instead of lines: Basic-mode
        commands end with CR, Safe-mode packets are counted by their length byte;
        and the Safe-mode communications time out."""
        master, wake = self._fds[0], self._fds[2]
        buffer = b""
        while True:
            deadline = self._safe_deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([master, wake], [], [], timeout)
            if wake in ready:
                return
            out = b""
            if master not in ready:
                with self._lock:
                    out = self._time_out()
            else:
                try:
                    buffer += os.read(master, 4096)
                except OSError:
                    return
                while True:
                    item, buffer = self._take(buffer)
                    if item is None:
                        break
                    with self._lock:
                        out += self._handle(*item)
            if out:
                try:
                    os.write(master, out)
                except OSError:
                    return
