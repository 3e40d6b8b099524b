"""Reading pickled training checkpoints (diffusion_policy .ckpt, robomimic .pth) without their frameworks.

Unpickling can run arbitrary code, so nothing is unpickled unless the caller
opted in (``trust_pickle``). What a file *is* can still be told safely:
``sniff_torch_pickle`` walks the pickle opcodes of a torch zip archive without
executing them.

diffusion_policy pickles its hydra config as an OmegaConf ``DictConfig``. We
map every omegaconf class to a stub while unpickling and rebuild plain
dicts/lists from the stubs' state, so neither omegaconf nor hydra is needed;
``${...}`` interpolations (including the ``eval`` resolver's arithmetic) are
resolved here without ``eval``.
"""
from __future__ import annotations

import ast
import operator
import pickle
import pickletools
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError

TRUST_HINT = ("pickle files can run arbitrary code when loaded; pass --trust-pickle (trust_pickle=True) "
              "only for checkpoints you trust")


class _OmegaStub:
    """Stands in for any omegaconf class; keeps the pickled state."""

    omega_name = ""

    def __init__(self, *args, **kwargs) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STUBS: dict[str, type] = {}


def _stub(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STUBS:
        _STUBS[key] = type(name, (_OmegaStub,), {"omega_name": name})
    return _STUBS[key]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "omegaconf" or module.startswith("omegaconf."):
            return _stub(module, name)
        try:
            return super().find_class(module, name)
        except ModuleNotFoundError as e:
            raise CheckpointError(f"the checkpoint pickles an object of {module}.{name}, and the module "
                                  f"{e.name!r} is not installed here (pip install {e.name.split('.')[0]})") from e


_PICKLE_MODULE = types.ModuleType("dp_runtime_unpickle")
_PICKLE_MODULE.Unpickler = _Unpickler
_PICKLE_MODULE.load = lambda f, **kw: _Unpickler(f, **kw).load()
_PICKLE_MODULE.__dict__.update({k: getattr(pickle, k) for k in ("UnpicklingError", "HIGHEST_PROTOCOL")})


def load_torch_pickle(path: Path, trust_pickle: bool, what: str) -> Any:
    """torch.load a trusted pickle checkpoint onto the CPU; truncated/corrupt files get a CheckpointError."""
    if not trust_pickle:
        raise CheckpointError(f"{path} is a {what} checkpoint (a pickle); {TRUST_HINT}")
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the {what} checkpoint, the file is truncated or "
                              f"corrupt ({type(e).__name__}: {e})") from e


def sniff_torch_pickle(path: Path) -> set[str]:
    """Strings in the top-level pickle of a torch zip checkpoint, read without unpickling.

    Raises CheckpointError when the zip archive is unreadable (a truncated file loses its
    central directory first).
    """
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return set()
            data = z.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint, the file is truncated or "
                              f"corrupt ({e})") from e
    strings = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.add(arg)
    except ValueError:
        pass
    return strings


# -- OmegaConf stubs -> plain data ---------------------------------------------------------------

def to_plain(obj: Any) -> Any:
    """Rebuild plain dicts/lists/values from unpickled omegaconf stubs (interpolations kept as strings)."""
    if isinstance(obj, _OmegaStub):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.omega_name == "DictConfig":
            content = state.get("_content")
            return {str(k): to_plain(v) for k, v in content.items()} if isinstance(content, dict) else content
        if obj.omega_name == "ListConfig":
            content = state.get("_content")
            return [to_plain(v) for v in content] if isinstance(content, list) else content
        return to_plain(state.get("_val"))
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


_REF = re.compile(r"\$\{([^${}:]+)\}")
_EVAL = re.compile(r"\$\{eval:'(.*)'\}", re.S)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arith(expr: str) -> Any:
    """Evaluate +-*/ arithmetic on literals: what diffusion_policy configs use the eval resolver for."""
    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ConfigError(f"unsupported expression in eval resolver: {expr!r}")
    return ev(ast.parse(expr, mode="eval"))


def _lookup(root: dict, path: str) -> Any:
    node: Any = root
    for part in path.strip().split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ConfigError(f"interpolation ${{{path}}} points at nothing in the config")
    return node


def resolve(root: dict, value: Any, depth: int = 0) -> Any:
    """Resolve ``${a.b}`` and ``${eval:'...'}`` interpolations in ``value`` against ``root``."""
    if depth > 20:
        raise ConfigError("interpolations nest too deep (a cycle?)")
    if isinstance(value, dict):
        return {k: resolve(root, v, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(root, v, depth) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    m = _EVAL.fullmatch(value)
    if m:
        inner = _REF.sub(lambda g: repr(resolve(root, _lookup(root, g.group(1)), depth + 1)), m.group(1))
        return _arith(inner)
    m = _REF.fullmatch(value)
    if m:
        return resolve(root, _lookup(root, m.group(1)), depth + 1)
    return _REF.sub(lambda g: str(resolve(root, _lookup(root, g.group(1)), depth + 1)), value)


def plain_config(cfg: Any) -> dict:
    """An unpickled (stubbed) OmegaConf config, as plain data with interpolations left for ``resolve``."""
    plain = to_plain(cfg)
    if not isinstance(plain, dict):
        raise ConfigError(f"checkpoint 'cfg' is a {type(cfg).__name__}, expected an OmegaConf DictConfig")
    return plain
