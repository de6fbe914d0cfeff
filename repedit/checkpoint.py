"""Hugging Face checkpoints: load whole or only a prefix of layers, write edits atomically.

An edit changes a few tensors of a multi-gigabyte checkpoint, so the output reuses the untouched
weight shards (hard links where the filesystem allows, else copies) and rewrites only the shards
that hold edited tensors. Everything is written into a temporary directory beside the destination
and swapped into place at the end (``atomic_directory``): at every instant the destination holds the
previous complete checkpoint or the new one, even if the process is killed mid-save.

The safetensors reader/writer here needs only torch and the standard library, so the exported
submission file can carry it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # what a tokenizer is built from
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint directory or an output path is unusable; the message names it."""


# --- safetensors, by its specification: u64 header length, JSON header, raw little-endian bytes ---


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return header, 8 + length


def load_tensors(path: Path, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors file (all, or only ``names``), copied into CPU memory."""
    header, start = read_header(path)
    tensors = {}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for name, info in header.items():
            if name == "__metadata__" or (names is not None and name not in names):
                continue
            begin, end = info["data_offsets"]
            raw = bytearray(data[start + begin : start + end])
            dtype = _DTYPES[info["dtype"]]
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(info["shape"])
    return tensors


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor | bytes], specs: Mapping[str, dict] | None = None,
                  metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file. A value may be raw bytes (copied from another file) described by
    ``specs[name]`` (its ``dtype`` code and ``shape``)."""
    header: dict[str, dict] = {"__metadata__": dict(metadata or {"format": "pt"})}
    payloads = []
    offset = 0
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            raw, dtype, shape = _tensor_bytes(value), _CODES[value.dtype], list(value.shape)
        else:
            raw, dtype, shape = value, specs[name]["dtype"], specs[name]["shape"]  # type: ignore[index]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        payloads.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for raw in payloads:
            handle.write(raw)


def rewrite_shard(source: Path, destination: Path, replacements: Mapping[str, torch.Tensor]) -> None:
    """Copy a shard, replacing some tensors; untouched tensors are copied byte for byte."""
    header, start = read_header(source)
    metadata = header.pop("__metadata__", None)
    values: dict[str, torch.Tensor | bytes] = {}
    with open(source, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for name, info in header.items():
            if name in replacements:
                new = replacements[name]
                if list(new.shape) != info["shape"]:
                    raise CheckpointError(f"{source}: {name} has shape {info['shape']}, edit has {list(new.shape)}")
                values[name] = new.detach().to(_DTYPES[info["dtype"]])
            else:
                begin, end = info["data_offsets"]
                values[name] = data[start + begin : start + end]
        write_tensors(destination, values, header, metadata)


# --- checkpoint directories ---


def weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index or the single weights file."""
    model_dir = Path(model_dir)
    if (model_dir / INDEX_FILE).is_file():
        return dict(json.loads((model_dir / INDEX_FILE).read_text())["weight_map"])
    if (model_dir / SINGLE_FILE).is_file():
        header, _ = read_header(model_dir / SINGLE_FILE)
        return {name: SINGLE_FILE for name in header if name != "__metadata__"}
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}; expected a safetensors checkpoint")


def checkpoint_name(model_dir: Path, name: str, names: Mapping[str, str] | None = None) -> str:
    """The checkpoint's name for a parameter of a loaded model (a base model drops the ``model.``)."""
    names = names if names is not None else weight_map(model_dir)
    for candidate in (name, f"model.{name}"):
        if candidate in names:
            return candidate
    raise CheckpointError(f"{model_dir}: no tensor named {name!r} in the checkpoint")


def check_modules(model_dir: Path, layers: tuple[int, ...], params: tuple[str, ...]) -> None:
    """Each module named in ``params`` exists in each of ``layers``, by the checkpoint's tensor names,
    so that a misspelt ``--params`` fails before the model loads."""
    names = weight_map(model_dir)
    for index in layers:
        prefixes = (f"model.layers.{index}.", f"layers.{index}.")
        inside = [n[len(p):] for n in names for p in prefixes if n.startswith(p)]
        for module in params:
            if not any(n.startswith(module + ".") for n in inside):
                known = sorted({n.rsplit(".", 1)[0] for n in inside})
                raise CheckpointError(f"--params: layer {index} has no module {module!r}; known: {known}")


def check_checkpoint(model_dir: Path, option: str = "--model") -> Path:
    """A checkpoint directory with weights, config and tokenizer, or an error saying which is missing
    (transformers would blame sentencepiece, or fail inside ``generate`` with a stranger tokenizer)."""
    model_dir = Path(model_dir)
    repair_output(model_dir)
    if not model_dir.exists():
        raise CheckpointError(f"{option}: {model_dir}: no such directory")
    if not model_dir.is_dir():
        raise CheckpointError(f"{option}: {model_dir}: is a file; expected a checkpoint directory")
    weight_map(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: no config.json; expected a Hugging Face checkpoint directory")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{model_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer "
                              "with the model (tokenizer.save_pretrained)")
    return model_dir


def check_output_path(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: output path exists and is not a directory")
    return out


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS, the C
    library or the filesystem has no such call, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # glibc before 2.28, or another C library
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _leftovers(out: Path, kind: str) -> list[Path]:
    """``.{out}.{kind}-*`` beside ``out``, newest first: tmp (being written), new (complete, about to
    replace ``out``), old (the previous ``out``, about to be removed)."""
    found = out.parent.glob(f".{out.name}.{kind}-*") if out.parent.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def repair_output(out: Path, clean: bool = False) -> None:
    """Finish or undo a save that was killed: where ``out`` is missing, the newest complete new
    checkpoint takes its place, else the previous one moves back. ``clean`` also removes every
    leftover (done before a save; a reader only restores ``out``)."""
    out = Path(out)
    if not out.exists():
        for candidate in _leftovers(out, "new") + _leftovers(out, "old"):
            os.replace(candidate, out)
            break
    if clean:
        for leftover in _leftovers(out, "tmp") + _leftovers(out, "new") + _leftovers(out, "old"):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it replaces ``out``.

    Where the OS can swap two paths in one step, ``out`` is exchanged with the new directory. Else
    ``out`` moves aside to ``.out.old-*`` and ``.out.new-*`` moves in; a kill between the two renames
    is repaired by ``repair_output`` on the next save or load. On an exception the temporary
    directory is removed and ``out`` is left as it was.
    """
    out = check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    repair_output(out, clean=True)
    tag = uuid.uuid4().hex[:8]
    tmp, new, old = (out.parent / f".{out.name}.{kind}-{tag}" for kind in ("tmp", "new", "old"))
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, new)  # complete: from here on a repair may put it in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        os.replace(new, out)
    elif exchange(new, out):
        shutil.rmtree(new)  # it now holds the previous checkpoint
    else:
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old)


def link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def save_edited(source_dir: Path, out: Path, edits: Mapping[str, torch.Tensor],
                extra_files: Mapping[str, str] | None = None) -> Path:
    """Write ``source_dir`` with ``edits`` (checkpoint tensor name -> new value) applied to ``out``.

    Shards without an edited tensor are hard-linked (or copied); config, generation config and
    tokenizer files are copied; ``extra_files`` (name -> text, e.g. a run log) are added; the whole
    directory appears at ``out`` atomically.
    """
    source_dir = Path(source_dir)
    names = weight_map(source_dir)
    unknown = sorted(set(edits) - set(names))
    if unknown:
        raise CheckpointError(f"{source_dir}: edited tensor(s) not in the checkpoint: {unknown}")
    touched: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in edits.items():
        touched.setdefault(names[name], {})[name] = value
    shards = set(names.values())
    with atomic_directory(out) as tmp:
        for entry in sorted(source_dir.iterdir()):
            if entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name in touched:
                rewrite_shard(entry, tmp / entry.name, touched[entry.name])
            elif entry.name in shards:
                link_or_copy(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)


def load_checkpoint_tokenizer(model_dir: Path):
    """The tokenizer saved with a checkpoint; pad falls back to EOS as the official evaluation does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_config(model_dir: Path):
    """The model config, with a clear error when the directory is not a checkpoint."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    repair_output(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: no config.json; expected a Hugging Face checkpoint directory")
    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)


def _load_kwargs(dtype: torch.dtype, device: str | torch.device) -> dict:
    """``dtype=`` since transformers 4.56 (``torch_dtype=`` before); weights go straight to a GPU."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    kwargs: dict = {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
    if torch.device(device).type == "cuda":
        kwargs["device_map"] = str(device)
    return {"local_files_only": True, "low_cpu_mem_usage": True, **kwargs}


def load_causal_lm(model_dir: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The whole model, from local files only, in eval mode."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    repair_output(model_dir)  # a save killed between two renames
    weight_map(model_dir)  # a clear error before transformers' own
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **_load_kwargs(dtype, device))
    return model.eval()  # already on ``device``: CPU by default, a GPU through device_map


def load_prefix(model_dir: Path, last_layer: int, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu"):
    """The decoder stack with only the embeddings and layers ``0..last_layer``, no head.

    An RMU edit reads layer ``last_layer`` and changes nothing above it, so the rest of a 7B model
    need never be read from disk.
    """
    from transformers import AutoModel

    model_dir = Path(model_dir)
    repair_output(model_dir)
    weight_map(model_dir)
    config = read_config(model_dir)
    if not 0 <= last_layer < config.num_hidden_layers:
        raise CheckpointError(f"{model_dir}: layer {last_layer} out of range 0..{config.num_hidden_layers - 1}")
    config.num_hidden_layers = last_layer + 1
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the skipped upper layers are reported as unused weights
    try:
        model = AutoModel.from_pretrained(str(model_dir), config=config, **_load_kwargs(dtype, device))
    finally:
        logging.set_verbosity(verbosity)
    return model.eval()
