"""Results of a sample measured elsewhere, entered by the operator: protein, western blot, TEM.

The cross-method report (exoacq.web.report) needs what exoacq's instruments do
not measure: the protein concentration (for the particles-per-microgram purity
ratio), the western blot markers and the TEM images and morphology. They are
kept per sample under ``<data_dir>/samples/<folder>/``:

* ``info.json``: the validated entry, with who entered it and when;
* ``images/<name>``: TEM images (PNG, JPEG or TIFF, recognised by their magic
  bytes, at most 20 MB each), named by exoacq (``tem-01-<sha256 prefix>.png``),
  never by the uploaded file's name.

The folder is a slug of the sample name plus a hash of the whole name
(``msc-ev-lot-42-3f2a9c1b0d4e``): nothing of the user's text reaches a path
except letters, digits and dashes. Every file is written atomically (a
temporary file in the same folder, fsync, ``os.replace``), so a reader never
sees half an entry.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError

#: Western blot markers asked by default: tetraspanins (transmembrane), cytosolic EV proteins, and
#: calnexin (endoplasmic reticulum) as the marker expected to be absent from EVs.
WESTERN_BLOT_MARKERS = ("CD9", "CD63", "CD81", "TSG101", "Alix", "calnexin")
WESTERN_BLOT_RESULTS = ("positive", "negative", "not tested")
PROTEIN_ASSAYS = ("BCA", "Bradford", "micro-BCA", "other")
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGES = 50
MAX_MORPHOLOGY_CHARS = 2000
MAX_NOTES_CHARS = 4000
MAX_SAMPLE_CHARS = 200
MAX_EXTRA_MARKERS = 30
FIELDS = ("protein_ug_per_ml", "protein_assay", "western_blot", "tem", "notes")
#: Image types by their first bytes: (magic, media type, file extension).
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png", "png"), (b"\xff\xd8\xff", "image/jpeg", "jpg"),
               (b"II*\x00", "image/tiff", "tif"), (b"MM\x00*", "image/tiff", "tif"))
_IMAGE_NAME = re.compile(r"tem-\d{2,3}-[0-9a-f]{12}\.(png|jpg|tif)")


def image_type(data: bytes) -> tuple[str, str] | None:
    """(media type, extension) of a PNG, JPEG or TIFF image from its magic bytes; None otherwise."""
    return next(((media, ext) for magic, media, ext in IMAGE_MAGIC if data.startswith(magic)), None)


def sample_folder(sample: str) -> str:
    """A safe folder name for a sample: a slug of its name (letters, digits, dashes) and a hash of all of it."""
    slug = re.sub(r"[^a-z0-9]+", "-", sample.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(sample.encode("utf-8")).hexdigest()[:12]
    return f"{slug}-{digest}" if slug else digest


def check_sample(sample: Any) -> str:
    """The sample name as the daemon accepts it (1-200 characters, not only spaces)."""
    if not isinstance(sample, str) or not sample.strip() or len(sample) > MAX_SAMPLE_CHARS:
        raise ExoacqError(f"sample {sample!r}: give the sample's name (1-{MAX_SAMPLE_CHARS} characters)",
                          code="bad_request")
    return sample


def empty_info(sample: str) -> dict[str, Any]:
    """A sample with nothing entered yet."""
    return {"sample": sample, "protein_ug_per_ml": None, "protein_assay": None,
            "western_blot": {marker: "not tested" for marker in WESTERN_BLOT_MARKERS},
            "tem": {"morphology": "", "images": [], "image_files": {}}, "notes": "",
            "entered_by": None, "entered": None}


def _bad(message: str) -> ExoacqError:
    return ExoacqError(message, code="bad_request")


def _protein(value: Any) -> float | None:
    """Protein concentration in ug/mL: a finite number > 0 (a form's text is read as a number), or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise _bad(f"protein_ug_per_ml = {value!r}: give the protein concentration in ug/mL, a number > 0, or null")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(f"protein_ug_per_ml = {value!r}: give the protein concentration in ug/mL, a number > 0, "
                   "or null") from None
    if not math.isfinite(number) or number <= 0:
        raise _bad(f"protein_ug_per_ml = {value!r}: a protein concentration is a finite number > 0 (ug/mL), or null")
    return number


def _assay(value: Any, protein: float | None) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if protein is not None:
            raise _bad(f"protein_assay: name the assay of the protein concentration ({', '.join(PROTEIN_ASSAYS)})")
        return None
    canonical = {a.lower(): a for a in PROTEIN_ASSAYS}
    if not isinstance(value, str) or value.strip().lower() not in canonical:
        raise _bad(f"protein_assay = {value!r}: one of {', '.join(PROTEIN_ASSAYS)}")
    return canonical[value.strip().lower()]


def _western_blot(value: Any) -> dict[str, str]:
    """{marker: positive | negative | not tested}: the six default markers always, others as named."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad(f"western_blot = {value!r}: give an object {{marker: {' | '.join(WESTERN_BLOT_RESULTS)}}}")
    known = {m.lower(): m for m in WESTERN_BLOT_MARKERS}
    blot = {marker: "not tested" for marker in WESTERN_BLOT_MARKERS}
    extra = 0
    for name, result in value.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 40 or not name.isprintable():
            raise _bad(f"western_blot marker {name!r}: a marker's name is 1-40 printable characters")
        marker = known.get(name.strip().lower(), name.strip())
        if marker not in known.values():
            extra += 1
            if extra > MAX_EXTRA_MARKERS:
                raise _bad(f"western_blot: at most {MAX_EXTRA_MARKERS} markers besides "
                           f"{', '.join(WESTERN_BLOT_MARKERS)}")
        text = result.strip().lower() if isinstance(result, str) else result
        if text not in WESTERN_BLOT_RESULTS:
            raise _bad(f"western_blot {marker} = {result!r}: one of {', '.join(WESTERN_BLOT_RESULTS)}")
        blot[marker] = text
    return blot


def _text(name: str, value: Any, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{name} = {value!r}: give text (at most {limit} characters)")
    if len(value) > limit:
        raise _bad(f"{name}: {len(value)} characters; at most {limit}")
    return value


class SampleStore:
    """Operator-entered results per sample, under ``<data_dir>/samples``.

    ``put`` updates the fields it is given (``protein_ug_per_ml``, ``protein_assay``,
    ``western_blot``, ``tem`` {``morphology``, ``images``}, ``notes``) and keeps the
    others: give a field as null to clear it. Bad input raises ExoacqError
    (code ``bad_request``) with a one-line message naming the field and value.
    """

    def __init__(self, data_dir: Path | str):
        self.root = Path(data_dir) / "samples"
        self._lock = threading.Lock()  # one read-modify-write at a time (this store's, not global)

    def folder(self, sample: str) -> Path:
        return self.root / sample_folder(check_sample(sample))

    def get(self, sample: str) -> dict[str, Any]:
        """The sample's entry (empty fields when nothing was entered)."""
        path = self.folder(sample) / "info.json"
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return empty_info(sample)
        except (OSError, ValueError) as exc:
            raise ExoacqError(f"{path}: cannot read the sample's entry ({exc})", code="bad_file") from None
        info = empty_info(sample)
        info.update({k: stored[k] for k in info if k in stored})
        info["sample"] = sample
        return info

    def put(self, sample: str, info: dict[str, Any], *, operator: str | None = None) -> dict[str, Any]:
        """Validate and store the given fields; return the whole entry, with ``entered_by`` and ``entered`` (UTC)."""
        check_sample(sample)
        if not isinstance(info, dict):
            raise _bad(f"sample info: give an object with {', '.join(FIELDS)}")
        unknown = sorted(set(info) - set(FIELDS) - {"sample", "entered_by", "entered"})
        if unknown:
            raise _bad(f"sample info: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(FIELDS)}")
        with self._lock:
            entry = self.get(sample)
            protein = _protein(info["protein_ug_per_ml"]) if "protein_ug_per_ml" in info else entry["protein_ug_per_ml"]
            assay = info["protein_assay"] if "protein_assay" in info else entry["protein_assay"]
            entry["protein_ug_per_ml"], entry["protein_assay"] = protein, _assay(assay, protein)
            if "western_blot" in info:
                entry["western_blot"] = _western_blot(info["western_blot"])
            if "tem" in info:
                entry["tem"] = self._tem(info["tem"], entry["tem"])
            if "notes" in info:
                entry["notes"] = _text("notes", info["notes"], MAX_NOTES_CHARS)
            return self._write(sample, entry, operator)

    def add_image(self, sample: str, filename: str, data: bytes, *, operator: str | None = None) -> str:
        """Store a TEM image (PNG, JPEG or TIFF by its magic bytes, <= 20 MB), attach it; return its name."""
        check_sample(sample)
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise _bad(f"image {filename!r}: the file is empty")
        if len(data) > MAX_IMAGE_BYTES:
            raise _bad(f"image {filename!r}: {len(data) / 1e6:.1f} MB; at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        kind = image_type(bytes(data[:8]))
        if kind is None:
            raise _bad(f"image {filename!r}: not a PNG, JPEG or TIFF image (by its first bytes)")
        media, ext = kind
        with self._lock:
            entry = self.get(sample)
            images = list(entry["tem"].get("images") or [])
            if len(images) >= MAX_IMAGES:
                raise _bad(f"image {filename!r}: the sample has {len(images)} images already (at most {MAX_IMAGES})")
            digest = hashlib.sha256(data).hexdigest()
            same = next((n for n in images if n.split("-")[2].split(".")[0] == digest[:12]), None)
            if same is not None:
                return same  # the same image again: nothing new
            name = f"tem-{len(images) + 1:02d}-{digest[:12]}.{ext}"
            _atomic_write(self.folder(sample) / "images" / name, bytes(data))
            label = str(filename or "")[:200]
            entry["tem"]["images"] = images + [name]
            entry["tem"].setdefault("image_files", {})[name] = {
                "filename": label if label.isprintable() else repr(label), "media_type": media,
                "bytes": len(data), "sha256": digest, "added": _now(), "added_by": operator}
            self._write(sample, entry, operator)
        return name

    def image_path(self, sample: str, name: str) -> Path:
        """The file of one of the sample's images (ExoacqError ``unknown_file`` when it has no such image)."""
        if not isinstance(name, str) or not _IMAGE_NAME.fullmatch(name) \
                or name not in (self.get(sample)["tem"].get("images") or []):
            raise ExoacqError(f"sample {sample!r} has no image {name!r}", code="unknown_file")
        path = self.folder(sample) / "images" / name
        if not path.is_file():
            raise ExoacqError(f"sample {sample!r}: image {name} is listed but its file is missing", code="unknown_file")
        return path

    def images(self, sample: str) -> dict[str, bytes]:
        """The sample's attached images, by name, in their order (for the report)."""
        out = {}
        for name in self.get(sample)["tem"].get("images") or []:
            try:
                out[name] = self.image_path(sample, name).read_bytes()
            except ExoacqError:
                continue
        return out

    # -- helpers ------------------------------------------------------------------------------
    def _tem(self, value: Any, stored: dict[str, Any]) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _bad(f"tem = {value!r}: give an object {{morphology: text, images: [names]}}")
        unknown = sorted(set(value) - {"morphology", "images", "image_files"})
        if unknown:
            raise _bad(f"tem: unknown field(s) {', '.join(map(str, unknown))}; known: morphology, images")
        tem = dict(stored)
        if "morphology" in value:
            tem["morphology"] = _text("tem.morphology", value["morphology"], MAX_MORPHOLOGY_CHARS)
        if "images" in value:  # keep, drop or reorder stored images; new ones come through add_image
            images = value["images"] or []
            have = list(stored.get("images") or [])
            if not isinstance(images, list) or any(not isinstance(n, str) for n in images):
                raise _bad(f"tem.images = {images!r}: give a list of the sample's image names")
            missing = [n for n in images if n not in have]
            if missing:
                raise _bad(f"tem.images: no image {missing[0]!r} for this sample (upload it first)")
            tem["images"] = list(dict.fromkeys(images))
            tem["image_files"] = {n: f for n, f in (stored.get("image_files") or {}).items() if n in tem["images"]}
        return tem

    def _write(self, sample: str, entry: dict[str, Any], operator: str | None) -> dict[str, Any]:
        entry["sample"], entry["entered_by"], entry["entered"] = sample, operator, _now()
        _atomic_write(self.folder(sample) / "info.json",
                      json.dumps(entry, indent=1, ensure_ascii=False).encode("utf-8"))
        return entry


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
