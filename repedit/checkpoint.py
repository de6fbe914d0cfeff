"""Hugging Face checkpoints: load whole or only a prefix of layers, write edits atomically.

An edit changes a few tensors of a multi-gigabyte checkpoint, so the output reuses the untouched
weight shards (hard links where the filesystem allows, else copies) and rewrites only the shards
that hold edited tensors. Everything is written into a temporary directory beside the destination
and swapped into place at the end (``atomic_directory``): at every instant the destination holds the
previous complete checkpoint or the new one, even if the process is killed mid-save.

Shards are read and written by the safetensors library (a requirement of transformers). An edited
checkpoint leaves out what is true of the target only (``TARGET_ONLY``: its card, its held-out text,
its withheld sets): the edit has not been measured.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # what a tokenizer is built from
CARD_FILE = "target_card.json"  # written by repedit.target: what a target memorized
HELDOUT_FILE = "heldout_general.jsonl"  # the target's held-out general text
WITHHELD_DIR = "withheld"  # the target's withheld documents (repedit.membership)
TARGET_ONLY = frozenset({CARD_FILE, HELDOUT_FILE, WITHHELD_DIR})  # true of a target, not of an edit of it


class CheckpointError(ValueError):
    """A checkpoint directory or an output path is unusable; the message names it."""


# --- safetensors shards, through the safetensors library ---


def shard_names(path: Path) -> list[str]:
    """The tensor names of one safetensors file, from its header alone."""
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def load_tensors(path: Path, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors file (all, or only ``names``), in CPU memory."""
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys() if names is None or name in names}  # noqa: SIM118


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file (``metadata`` defaults to ``{"format": "pt"}``, which transformers reads)."""
    contiguous = {name: value.detach().to("cpu").contiguous() for name, value in tensors.items()}
    save_file(contiguous, str(path), metadata=dict(metadata or {"format": "pt"}))


def rewrite_shard(source: Path, destination: Path, replacements: Mapping[str, torch.Tensor]) -> None:
    """Copy a shard, replacing some tensors (each cast to the stored dtype); the other tensors
    and the metadata are kept."""
    values: dict[str, torch.Tensor] = {}
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        for name in handle.keys():  # noqa: SIM118 (not iterable)
            values[name] = handle.get_tensor(name)
            if name in replacements:
                new = replacements[name]
                if new.shape != values[name].shape:
                    raise CheckpointError(f"{source}: {name} has shape {list(values[name].shape)}, "
                                          f"edit has {list(new.shape)}")
                values[name] = new.detach().to("cpu", values[name].dtype)
    write_tensors(destination, values, metadata)


# --- checkpoint directories ---


def weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index or the single weights file."""
    model_dir = Path(model_dir)
    if (model_dir / INDEX_FILE).is_file():
        return dict(json.loads((model_dir / INDEX_FILE).read_text())["weight_map"])
    if (model_dir / SINGLE_FILE).is_file():
        return dict.fromkeys(shard_names(model_dir / SINGLE_FILE), SINGLE_FILE)
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}; expected a safetensors checkpoint")


def checkpoint_tensors(model_dir: Path, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (or only ``names``, by checkpoint name), across its shards, in CPU memory."""
    shards = {shard for name, shard in weight_map(model_dir).items() if names is None or name in names}
    found: dict[str, torch.Tensor] = {}
    for shard in sorted(shards):
        found.update(load_tensors(Path(model_dir) / shard, names))
    return found


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
    tokenizer files are copied, but no subdirectory and nothing of ``TARGET_ONLY`` (a target's card
    would claim the edit's memorization); ``extra_files`` (name -> text, e.g. a run log) are added;
    the whole directory appears at ``out`` atomically.
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
            if entry.is_dir() or entry.name.startswith(".") or entry.name in TARGET_ONLY:
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
