"""Atomic file writes and safetensors checkpoints (no pickle, ever)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted or failing write leaves ``path`` untouched (the old file or no file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain(value: Any) -> Any:
    """``value`` with every mapping (a config section included) as a dict and every tuple as a list:
    what :mod:`json` writes."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` (:func:`plain`) as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(plain(data), handle, indent=2, sort_keys=False)
        handle.write("\n")


# -- checkpoints ------------------------------------------------------------------------------------
# A checkpoint is one safetensors file: the module's tensors, plus header metadata with the scl
# version and a JSON "spec" (class name and constructor arguments, nested for sub-modules). Loading
# rebuilds the module from the spec with classes registered here, then loads the tensors; nothing
# is ever unpickled.

_MODULES: dict[str, type] = {}
FORMAT = "scl-checkpoint/1"


def register_module(cls: type) -> type:
    """Allow :func:`load` to rebuild ``cls`` (it must have a ``config()`` method whose values are
    JSON data or sub-modules). Usable as a class decorator; registering a different class under a
    taken name is an error."""
    from scl.errors import ConfigError

    name = cls.__name__
    if name in _MODULES and _MODULES[name] is not cls:
        raise ConfigError(f"a module class named {name!r} is already registered for checkpoints")
    if not callable(getattr(cls, "config", None)):
        raise ConfigError(f"{name} needs a config() method to be saved and rebuilt")
    _MODULES[name] = cls
    return cls


def _spec(module: Any) -> dict[str, Any]:
    from scl.errors import CheckpointError

    cls = type(module)
    if _MODULES.get(cls.__name__) is not cls:
        raise CheckpointError(
            f"{cls.__name__} cannot be rebuilt from a checkpoint (not an scl module); save it with "
            "scl.save(module, path) and load with scl.load(path, into=module) instead"
        )

    def encode(value: Any) -> Any:
        import torch.nn as nn

        if isinstance(value, nn.Module):
            return {"__module__": _spec(value)}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise CheckpointError(
            f"{cls.__name__}.config() holds a {type(value).__name__}, which a checkpoint cannot store"
        )

    return {"class": cls.__name__, "config": encode(module.config())}


def _build(spec: dict[str, Any]) -> Any:
    from scl.errors import CheckpointError

    def decode(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"__module__"}:
            return _build(value["__module__"])
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    name = spec.get("class") if isinstance(spec, dict) else None
    if name not in _MODULES:
        raise CheckpointError(
            f"the checkpoint names class {name!r}, which scl does not know "
            f"(known: {sorted(_MODULES)})"
        )
    cls = _MODULES[name]
    config = decode(spec.get("config", {}))
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    return cls(**config)


def save(module: Any, path: str | os.PathLike[str]) -> Path:
    """Save an scl module (or any module's weights) as safetensors with JSON metadata, atomically.

    scl modules (layers, selections, obfuscators, the pipelines' networks) can then be rebuilt by
    :func:`load` without their code being called from the file; any other ``nn.Module`` saves its
    weights only and loads with ``load(path, into=module)``.
    """
    import torch.nn as nn
    from safetensors.torch import save as save_bytes

    from scl._version import __version__
    from scl.errors import CheckpointError

    if not isinstance(module, nn.Module):
        raise CheckpointError(f"scl.save needs an nn.Module, but got {type(module).__name__}")
    spec = None
    if _MODULES.get(type(module).__name__) is type(module):
        try:
            spec = _spec(module)
        except CheckpointError:
            # e.g. an Obfuscator whose pre-layers are plain torch modules: weights only, loaded
            # with scl.load(path, into=module)
            spec = None
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    metadata = {"format": FORMAT, "scl_version": __version__, "spec": json.dumps(spec)}
    data = save_bytes(state, metadata=metadata)
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The tensors and the spec of a checkpoint (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from scl.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    raw = path.read_bytes()
    try:
        tensors = load_bytes(raw)
        metadata = _header_metadata(raw)
    except (SafetensorError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a safetensors checkpoint ({exc}); scl never unpickles files "
            "(e.g. from torch.save): re-save the weights with scl.save"
        ) from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file but not an scl checkpoint "
            f"(format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        spec = json.loads(metadata.get("spec", "null"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(path)!r} has an unreadable spec: {exc}") from exc
    return tensors, spec


def _header_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte length, then JSON)."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    return header.get("__metadata__", {}) or {}


def load(path: str | os.PathLike[str], *, into: Any = None, map_location: str = "cpu") -> Any:
    """Load a checkpoint written by :func:`save`.

    Without ``into`` the module is rebuilt from the checkpoint's spec (scl modules only); with
    ``into`` the weights are loaded into that module. Either way the tensor names and shapes must
    match exactly.
    """
    from scl.errors import CheckpointError

    tensors, spec = read_checkpoint(path)
    if into is None:
        if spec is None:
            raise CheckpointError(
                f"{str(path)!r} holds the weights of a non-scl module; pass the module to fill: "
                "scl.load(path, into=module)"
            )
        into = _build(spec)
    state = into.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise CheckpointError(
            f"{str(path)!r} does not match {type(into).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, value in tensors.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{str(path)!r}: tensor {key!r} has shape {tuple(value.shape)} but "
                f"{type(into).__name__} expects {tuple(state[key].shape)}"
            )
    into.load_state_dict({k: v.to(map_location) for k, v in tensors.items()})
    return into.to(map_location)
