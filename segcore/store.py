"""The LMDB case store written by ``data_prepare`` and read by the training stages.

One LMDB environment (a folder) per dataset. Keys and values:

* ``case/<id>`` -> one record per case (format below);
* ``meta/splits`` -> JSON: ``{"folds": [[id, ...] x 5], "unlabeled": [...], "test": [...],
  "selections": {name: [...]}}`` (``selections`` here only in stores written before selections
  moved to files, below);
* ``meta/format`` -> JSON: ``{"format_version": RECORD_FORMAT_VERSION}``.

Named selections (such as UIF picks) are files next to the LMDB data, ``<store>/selections/
<name>.json`` (a JSON list of ids), each written atomically (temporary file, then rename). They are
not LMDB writes: readers open the environment without locks, so an LMDB write can reuse pages a
running reader still walks, and a UIF pick made while another training run reads the same store
must not touch it. A re-run of ``data_prepare`` that changes nothing writes nothing either.

Record format (version 1), little-endian::

    b"SEGR" | uint32 format version | uint32 header length H | H bytes UTF-8 JSON header
    | zero padding to a multiple of 64 | array payloads, each starting at a multiple of 64

The JSON header holds the case metadata plus ``"arrays": {name: {"dtype", "shape",
"offset"}}`` with offsets from the start of the record. Arrays are C-ordered ``(z, y, x)``
in the canonical orientation: ``coarse_image`` / ``fine_image`` as raw HU int16,
``coarse_label`` / ``fine_label`` as uint8 (labeled cases only). Metadata keys:

* ``id``, ``split`` (``labeled`` | ``unlabeled`` | ``test``), ``format_version``, ``config_hash``;
* ``image_path``, ``label_path`` (relative to the data root; ``label_path`` may be null);
* ``geometry``: the original grid (``size``, ``spacing``, ``origin``, ``direction``, ITK order);
* ``reorientation``: ``axes_zyx``, ``flips_zyx`` (see :mod:`segcore.volumes.geometry`);
* ``canonical_shape`` ``(z, y, x)`` and ``canonical_spacing`` ``(z, y, x)`` mm;
* ``crop_box_canonical``: ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open) of the fine crop in
  canonical voxels; ``crop_box_original``: the same box in the original file's voxel indices,
  ``[[x0, x1], [y0, y1], [z0, z1]]`` (half-open, ITK axis order); ``crop_source``: ``labels`` |
  ``coarse_model`` | ``body_heuristic``; ``crop_note``: why the body outline was used although a
  coarse model was given (it found no organ), else null; ``coarse_weights_sha256``: the coarse
  checkpoint consulted for the crop, else null;
* ``labels_present``: organ ids present in the full-resolution labels.

Readers open the environment read-only and lock-free, lazily, once per process, so a
:class:`CaseStore` can be handed to DataLoader workers.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

RECORD_FORMAT_VERSION = 1
COARSE_IMAGE, COARSE_LABEL, FINE_IMAGE, FINE_LABEL = "coarse_image", "coarse_label", "fine_image", "fine_label"
"""The array names of a record (labels only for labeled and test cases)."""
MAGIC = b"SEGR"
ALIGNMENT = 64
CASE_PREFIX = "case/"
SPLITS_KEY = b"meta/splits"
SELECTIONS_DIR = "selections"
_SELECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
FORMAT_KEY = b"meta/format"
_HEADER = struct.Struct("<4sII")
_INITIAL_MAP_SIZE = 1 << 30


@dataclass(frozen=True)
class CaseMeta:
    """The metadata of a record, as the module docstring lists it (``data_prepare`` builds one per
    case; :meth:`as_record` is what the JSON header holds, ``format_version`` included)."""

    id: str
    split: str
    config_hash: str
    image_path: str
    label_path: str | None
    geometry: dict[str, Any]
    reorientation: dict[str, list]
    canonical_shape: list[int]
    canonical_spacing: list[float]
    crop_box_canonical: list[list[int]]
    crop_box_original: list[list[int]]
    crop_source: str
    crop_note: str | None
    coarse_weights_sha256: str | None
    labels_present: list[int]

    def as_record(self) -> dict[str, Any]:
        return {"format_version": RECORD_FORMAT_VERSION, **asdict(self)}


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def encode_record(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise metadata and ``(z, y, x)`` arrays into one record (format in the module docstring)."""
    descriptors, offset = {}, 0
    # The header length depends on the offsets it lists, so lay out payloads after a fixed bound.
    header_room = _aligned(_HEADER.size + len(json.dumps(meta)) + 128 * (len(arrays) + 1))
    offset = header_room
    for name, array in arrays.items():
        descriptors[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        offset = _aligned(offset + array.nbytes)
    header = json.dumps({**meta, "arrays": descriptors}).encode()
    if _HEADER.size + len(header) > header_room:
        raise ValueError("record header larger than its reserved room")
    record = bytearray(offset)
    record[: _HEADER.size] = _HEADER.pack(MAGIC, RECORD_FORMAT_VERSION, len(header))
    record[_HEADER.size : _HEADER.size + len(header)] = header
    for name, array in arrays.items():
        start = descriptors[name]["offset"]
        record[start : start + array.nbytes] = np.ascontiguousarray(array).tobytes()
    return bytes(record)


def decode_header(record: bytes | memoryview) -> dict[str, Any]:
    """The JSON header of a record (metadata plus array descriptors)."""
    magic, version, length = _HEADER.unpack_from(record, 0)
    if magic != MAGIC:
        raise ValueError("not a case record")
    if version != RECORD_FORMAT_VERSION:
        raise ValueError(f"record format {version}, this code reads {RECORD_FORMAT_VERSION}: re-run data_prepare")
    return json.loads(bytes(record[_HEADER.size : _HEADER.size + length]))


def decode_arrays(record: bytes | memoryview, header: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read-only numpy views of a record's arrays (no copy)."""
    arrays = {}
    for name, descriptor in header["arrays"].items():
        dtype = np.dtype(descriptor["dtype"])
        count = int(np.prod(descriptor["shape"], dtype=np.int64))
        flat = np.frombuffer(record, dtype=dtype, count=count, offset=descriptor["offset"])
        arrays[name] = flat.reshape(descriptor["shape"])
    return arrays


class CaseStore:
    """Read access to a case store; safe to pickle into DataLoader worker processes.

    The environment is opened on first use in each process, read-only and without locks,
    and one read transaction is kept open, so :meth:`arrays` returns views straight into
    LMDB's memory map: no copy, read-only, valid while the store is open. Copy an array
    (``np.array(a)``) to keep it past :meth:`close`.

    Example:
        >>> store = CaseStore("dataset/prepared.lmdb")
        >>> image = store.arrays("FLARE22_Tr_0001")[COARSE_IMAGE]   # int16 (z, y, x), raw HU
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise FileNotFoundError(f"{self.path}: no case store here (run data_prepare first)")
        self._pid: int | None = None
        self._env: lmdb.Environment | None = None
        self._txn: lmdb.Transaction | None = None

    def _transaction(self) -> lmdb.Transaction:
        if self._pid != os.getpid():  # a forked worker must not reuse the parent's handle
            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, max_readers=512)
            self._txn = self._env.begin(buffers=True)
            self._pid = os.getpid()
        return self._txn

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_pid": None, "_env": None, "_txn": None}

    def close(self) -> None:
        """Close the environment; arrays handed out before become invalid."""
        if self._env is not None and self._pid == os.getpid():
            self._txn.abort()
            self._env.close()
        self._pid, self._env, self._txn = None, None, None

    def _record(self, case_id: str) -> memoryview:
        record = self._transaction().get(f"{CASE_PREFIX}{case_id}".encode())
        if record is None:
            raise KeyError(f"{self.path}: no case {case_id!r}")
        return record

    def ids(self, split: str | None = None) -> list[str]:
        """Sorted case ids, optionally only those of one split (``labeled``, ``unlabeled``, ``test``)."""
        prefix = CASE_PREFIX.encode()
        cursor = self._transaction().cursor()
        ids = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                ids.append(key[len(prefix) :].decode())
        if split is not None:
            ids = [case_id for case_id in ids if self.meta(case_id)["split"] == split]
        return ids

    def __contains__(self, case_id: str) -> bool:
        return self._transaction().get(f"{CASE_PREFIX}{case_id}".encode()) is not None

    def __len__(self) -> int:
        return len(self.ids())

    def meta(self, case_id: str) -> dict[str, Any]:
        """A case's metadata (the record header; ``arrays`` describes the stored arrays)."""
        return decode_header(self._record(case_id))

    def arrays(self, case_id: str) -> dict[str, np.ndarray]:
        """A case's arrays as read-only zero-copy views: ``coarse_image``, ``fine_image`` (int16 HU)
        and, for labeled cases, ``coarse_label``, ``fine_label`` (uint8)."""
        record = self._record(case_id)
        return decode_arrays(record, decode_header(record))

    def splits(self) -> dict[str, Any]:
        """The split lists (see the module docstring); empty lists before the first complete run."""
        raw = self._transaction().get(SPLITS_KEY)
        return (
            json.loads(bytes(raw)) if raw is not None else {"folds": [], "unlabeled": [], "test": [], "selections": {}}
        )

    def selection(self, name: str) -> list[str]:
        """The ids of a named selection (e.g. a UIF pick written by :func:`write_selection`)."""
        path = _selection_path(self.path, name)
        if path.is_file():
            return list(json.loads(path.read_text()))
        legacy = self.splits().get("selections", {})  # stores written before selections were files
        if name not in legacy:
            known = sorted({p.stem for p in (self.path / SELECTIONS_DIR).glob("*.json")} | set(legacy))
            raise KeyError(f"{self.path}: no selection named {name!r} (stored: {', '.join(known) or 'none'})")
        return list(legacy[name])

    def fold(self, index: int) -> tuple[list[str], list[str]]:
        """``(train_ids, validation_ids)`` of labeled cases for cross-validation fold ``index``."""
        folds = self.splits()["folds"]
        if not 0 <= index < len(folds):
            raise ValueError(f"{self.path}: fold {index} does not exist (the store has {len(folds)} folds)")
        train = sorted(case_id for i, fold in enumerate(folds) if i != index for case_id in fold)
        return train, sorted(folds[index])


class StoreWriter:
    """Single-writer access: each case goes in with one transaction, so no half record ever exists.

    The map grows (doubling) whenever a write does not fit.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self.path), map_size=_INITIAL_MAP_SIZE, max_dbs=0)
        with self._env.begin() as txn:
            existing = txn.get(FORMAT_KEY)
        if existing is not None and json.loads(existing)["format_version"] != RECORD_FORMAT_VERSION:
            raise ValueError(f"{self.path}: store of another record format; write a new one or use --force")
        if existing is None:  # opening an existing store writes nothing
            self._put(FORMAT_KEY, json.dumps({"format_version": RECORD_FORMAT_VERSION}).encode())

    def _put(self, key: bytes, value: bytes) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(max(self._env.info()["map_size"] * 2, len(value) * 4))

    def put_case(self, meta: CaseMeta | dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Store one case (metadata must hold ``id``) atomically, replacing any older record."""
        meta = meta.as_record() if isinstance(meta, CaseMeta) else meta
        self._put(f"{CASE_PREFIX}{meta['id']}".encode(), encode_record(meta, arrays))

    def stored_config_hash(self, case_id: str) -> str | None:
        """The config hash of a stored case, or None when the case is not stored."""
        with self._env.begin(buffers=True) as txn:
            record = txn.get(f"{CASE_PREFIX}{case_id}".encode())
            return None if record is None else decode_header(record)["config_hash"]

    def read_splits(self) -> dict[str, Any]:
        """The stored split lists, or an empty mapping."""
        with self._env.begin() as txn:
            raw = txn.get(SPLITS_KEY)
        return json.loads(raw) if raw is not None else {}

    def put_splits(self, splits: dict[str, Any]) -> None:
        """Replace the split lists (no write when they are unchanged)."""
        if self.read_splits() != json.loads(json.dumps(splits)):
            self._put(SPLITS_KEY, json.dumps(splits, sort_keys=True).encode())

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _selection_path(store: Path, name: str) -> Path:
    if not _SELECTION_NAME.fullmatch(name):
        raise ValueError(f"selection name {name!r}: use letters, digits, '_', '.', '-' (at most 128)")
    return Path(store) / SELECTIONS_DIR / f"{name}.json"


def write_selection(store: str | os.PathLike, name: str, ids: list[str]) -> Path:
    """Store (or replace) a named selection of case ids as ``<store>/selections/<name>.json``,
    atomically and without touching the LMDB data (see the module docstring)."""
    from segcore.runtime.files import write_text_atomic

    path = _selection_path(Path(store), name)
    path.parent.mkdir(exist_ok=True)
    write_text_atomic(path, json.dumps(list(ids)))
    return path
