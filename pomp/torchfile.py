"""Read torch files written by other systems without running any code from them.

`torch.save` and `torch.jit.save` both write a zip archive: `<prefix>/data.pkl` (a pickle that
describes the object tree), `<prefix>/data/<key>` (raw tensor storages, little-endian) and, for
TorchScript, `<prefix>/code/` and `<prefix>/constants.pkl`. A pickle is a small program: loading
one normally imports and calls whatever it names (`os.system` as easily as `torch.tensor`).

`read_torch_file` runs the pickle with an unpickler whose `find_class` hands out only:
- pomp's own tensor rebuilder, which views a storage read from the archive as
  `[size] / stride / offset` (bounds checked by `torch.as_strided`);
- plain containers and values (`OrderedDict`, `set`, `frozenset`, `torch.Size`, torch dtypes).
Every other name (an lr scheduler, an optimizer, a TorchScript module class, `os.system`,
`builtins.open`...) becomes an `Opaque` placeholder: an inert object of pomp's own that records
the name it stood for, the arguments it was called with and the state it was given. Nothing the
file names is imported or called, so no code from the file runs.

Why not `torch.load(weights_only=True)`: it refuses the whole file as soon as one object is not
on its allow-list, and an official Dassl/POMP checkpoint holds a pickled `CosineAnnealingLR`
inside its scheduler state. Why not `torch.jit.load` for OpenAI's TorchScript `.pt` files: it
compiles the archive's code and runs its `__setstate__` methods, i.e. code from the file.

Files in torch's pre-1.6 format (`torch.save(..., _use_new_zipfile_serialization=False)`, what
Dassl wrote on old torch versions) are read by the same unpickler: that format is a run of pickles
(magic number, protocol version, system info, the object tree, the storage keys) followed by each
storage as an 8-byte little-endian element count and its raw bytes.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

# Legacy typed-storage class names, as `torch.save` pickles them to encode a storage's dtype.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


# torch dtypes by attribute name (`torch.float16`...), looked up in a fixed table: never `getattr(torch, <file's name>)`
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


class Opaque:
    """An object a file asked for and did not get: the name it stood for and the data it carried.

    Attributes: `target` (`module.name` the pickle named), `args` (what it was called with),
    `state` (what the pickle's BUILD gave it), `items` (appended or set items). Calling an
    instance gives another placeholder of the same target; nothing else happens.
    """

    target = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<{self.target}: not loaded>"


class _StorageType:
    """What the pickle's `torch.<X>Storage` name stands for: only the dtype of a storage."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """A tensor viewing `storage` (a flat tensor read from the archive); hooks and metadata are dropped."""
    if not isinstance(storage, torch.Tensor):
        return Opaque()  # a storage kind pomp does not read
    if not (isinstance(storage_offset, int) and all(isinstance(v, int) for v in (*size, *stride))):
        raise ValueError("malformed tensor record")
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, _new_type, args, _state):
    """Tensor subclasses (e.g. `nn.Parameter` in some versions) come back as plain tensors."""
    return func(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Hands out the allowed names above; every other name becomes an `Opaque` subclass."""

    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        target = f"{module}.{name}"
        if target not in self._placeholders:
            self._placeholders[target] = type("Opaque", (Opaque,), {"target": target})
        return self._placeholders[target]

    def persistent_load(self, pid):
        # ("storage", type, key, location, numel) in zip archives, plus a view record in the legacy format
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage") or self._read_storage is None:
            raise ValueError(f"unknown persistent record {str(pid)[:60]}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise ValueError("unknown storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError("storage views (written by torch before 1.0) are not read")
        return self._read_storage(str(key), storage_type.dtype, numel)


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError("not a torch archive (no single <name>/data.pkl)")
    return pickles[0][: -len("data.pkl")]


def is_torchscript_archive(path: str | Path) -> bool:
    """A `torch.jit.save` archive (it carries `code/` and `constants.pkl` beside `data.pkl`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        try:
            prefix = _archive_prefix(archive)
        except ValueError:
            return False
        names = set(archive.namelist())
        return f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names)


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive)
        names = set(archive.namelist())
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise ValueError("big-endian torch archive")
        storages: dict[str, torch.Tensor] = {}

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key not in storages:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise ValueError(f"storage {key} missing from the archive")
                info = archive.getinfo(entry)
                if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses: refuse zip bombs
                    raise ValueError(f"storage {key} is compressed, which torch never writes")
                storages[key] = torch.frombuffer(bytearray(archive.read(entry)), dtype=torch.uint8) \
                    if info.file_size else torch.empty(0, dtype=torch.uint8)
            raw = storages[key]
            itemsize = torch.empty((), dtype=dtype).element_size()
            if raw.numel() != numel * itemsize:
                raise ValueError(f"storage {key} holds {raw.numel()} bytes, not {numel} x {itemsize}")
            return raw.view(dtype) if numel else torch.empty(0, dtype=dtype)

        with archive.open(f"{prefix}data.pkl") as data:
            return _RestrictedUnpickler(data, read_storage).load()


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


def _read_legacy(path: Path) -> Any:
    """A pre-1.6 torch file: its pickles read by the restricted unpickler, then its storages filled in."""
    file_size = path.stat().st_size
    storages: dict[str, torch.Tensor] = {}

    def allocate(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        # the bytes follow the object tree: tensors view an empty storage that is filled afterwards
        if key not in storages:
            if numel * _itemsize(dtype) > file_size:
                raise ValueError(f"storage {key} claims more bytes than the file holds (cut short?)")
            storages[key] = torch.empty(numel, dtype=dtype)
        elif storages[key].dtype != dtype or storages[key].numel() != numel:
            raise ValueError(f"storage {key} is used with two types or sizes")
        return storages[key]

    with open(path, "rb") as f:
        def plain():
            return _RestrictedUnpickler(f, None).load()

        if plain() != LEGACY_MAGIC:
            raise ValueError("no torch magic number")
        if plain() != LEGACY_PROTOCOL:
            raise ValueError("unknown legacy torch protocol version")
        sys_info = plain()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise ValueError("big-endian torch file")
        tree = _RestrictedUnpickler(f, allocate).load()
        keys = plain()
        if not isinstance(keys, list):
            raise ValueError("malformed storage list")
        for key in map(str, keys):
            if key not in storages:
                raise ValueError(f"storage {key} is listed but no tensor uses it")
            storage = storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise ValueError("the file ends before its tensor data (cut short?)")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel():
                raise ValueError(f"storage {key} holds {numel} elements, not {storage.numel()}")
            nbytes = numel * _itemsize(storage.dtype)
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError("the file ends before its tensor data (cut short?)")
            if nbytes:
                storage.view(torch.uint8).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return tree


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _not_a_torch_file(head: bytes) -> str | None:
    """Why a file that is no torch archive cannot be one, from its first bytes (None: try the legacy format)."""
    if not head:
        return "an empty file (0 bytes)"
    if head[:4] == b"PK\x03\x04":
        return "unreadable torch file (a damaged zip archive: its directory is missing, e.g. the file was cut short)"
    if head[:2] == b"\x1f\x8b":
        return "a gzip-compressed file, not a torch file (unpack it first, e.g. tar xzf)"
    if head[257:262] == b"ustar":
        return "a tar archive (of files, or torch's pre-0.4 format), not a torch file; extract the checkpoint first"
    if head[:1] != b"\x80":  # every pickle torch writes starts with the PROTO opcode
        return "not a readable torch file (neither a torch zip archive nor a pre-1.6 torch file)"
    return None


def read_torch_file(path: str | Path) -> Any:
    """The object tree of a `torch.save` / `torch.jit.save` file: tensors, containers, `Opaque` stand-ins.

    Reads torch's zip archives (torch >= 1.6, TorchScript) and its older pickle-stream format.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: a folder.
        ValueError: `"<path>: <reason>"` in one line for anything unreadable (empty, damaged, cut
            short, compressed, not a torch file).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a torch file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if zipfile.is_zipfile(path):
        try:
            return _read_zip(path)
        except Exception as err:  # zip, pickle and our own checks raise many kinds
            raise ValueError(f"{path}: unreadable torch file ({_first_line(err)})") from None
    with open(path, "rb") as f:
        reason = _not_a_torch_file(f.read(512))
    if reason:
        raise ValueError(f"{path}: {reason}")
    try:
        return _read_legacy(path)
    except Exception as err:  # pickle and our own checks raise many kinds, depending on the damage
        if isinstance(err, (EOFError, pickle.UnpicklingError)) and "ran out of input" in str(err).lower():
            err = ValueError("the file ends early (cut short?)")
        raise ValueError(f"{path}: unreadable pre-1.6 torch file ({_first_line(err)})") from None


def _first_line(err: Exception, limit: int = 120) -> str:
    """The first line of an error message, terminal escape codes removed, cut to `limit` characters."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err)).strip()
    text = "".join(ch for ch in (text.splitlines() or [""])[0] if ch.isprintable()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's modules, by dotted name (`visual.conv1.weight`).

    The archive's module objects come back as `Opaque` placeholders whose state is their attribute
    dict; the walk collects tensors and descends into sub-modules. Parameters, buffers (persistent
    or not) and tensor attributes all appear: the caller keeps the names its model expects.
    """
    root = read_torch_file(path)
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj, prefix: str, depth: int) -> None:
        if depth > 64 or not (isinstance(obj, Opaque) and isinstance(obj.state, dict)):
            return
        for name, value in obj.state.items():
            if not isinstance(name, str):
                continue
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, Opaque) and value.target.startswith("__torch__."):
                walk(value, f"{prefix}{name}.", depth + 1)

    if not (isinstance(root, Opaque) and root.target.startswith("__torch__.")):
        raise ValueError(f"{path}: not a TorchScript module archive")
    walk(root, "", 0)
    return tensors


__all__ = ["Opaque", "is_torchscript_archive", "read_torch_file", "torchscript_tensors"]
