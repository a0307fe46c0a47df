"""Components that remember how they were built, so a model can be described as a config (class_path/init_args).

Checkpoints and exported models store this description instead of pickled objects: they reload with
``weights_only=True`` and rebuild through jsonargparse, the same way LightningCLI configs do.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["RecordsInit", "describe", "describe_or_mark", "build", "build_factory", "model_kwargs", "class_path",
           "check_class_path", "resolve_component", "allowed_callables", "resolve_callable"]


class RecordsInit:
    """Mixin: the outermost ``__init__`` call of an instance records its bound arguments in ``_init_config``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_init", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self, *args: Any, **kw: Any) -> None:
            if "_init_config" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                config = dict(bound.arguments)
                config.pop("self", None)
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD:
                        config.update(config.pop(name, {}))
                    elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                        config.pop(name, None)
                object.__setattr__(self, "_init_config", config)
            init(self, *args, **kw)

        wrapped._records_init = True  # type: ignore[attr-defined]
        cls.__init__ = wrapped  # type: ignore[method-assign]


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    if isinstance(value, RecordsInit):
        return describe(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot describe a value of type {type(value).__name__} in a config: {value!r}")


def describe(obj: Any) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` for a component built by colddiff (recursively)."""
    config = obj.__dict__.get("_init_config") if hasattr(obj, "__dict__") else None
    if config is None:
        raise TypeError(
            f"cannot describe {type(obj).__name__} as a config: it does not record its init arguments. Build the "
            "model from a YAML config (train.py / LightningCLI), or use colddiff's components"
        )
    return {"class_path": class_path(obj), "init_args": {k: _plain(v) for k, v in config.items()}}


NOT_RECORDED = "_not_recorded"


def describe_or_mark(obj: Any) -> dict[str, Any]:
    """:func:`describe`, or a marker naming the class when the object does not record its init arguments."""
    try:
        return describe(obj)
    except TypeError:
        return {"class_path": class_path(obj), NOT_RECORDED: True}


_COMPONENTS = "colddiff components (degradations, networks, priors and their subclasses)"
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
#: torch classes a model config may name, by argument: the optimiser and scheduler factories
_TORCH_FACTORIES = {"optimizer": "torch.optim.", "lr_scheduler": "torch.optim.lr_scheduler."}


def check_class_path(path: Any, name: str, prefixes: Sequence[str] = ("colddiff.",), allow: Sequence[str] = (),
                     kind: str = f"{_COMPONENTS} and the torch optimisers and schedulers") -> str:
    """Refuse a class path from a file's config unless it is under one of ``prefixes`` or listed in ``allow``.

    This is checked on the string, before anything is imported: importing a module can run its code.
    """
    if not isinstance(path, str) or not _CLASS_PATH.fullmatch(path):
        raise ValueError(f"{name}: class_path must be a dotted import path, got {path!r}")
    if path in allow or any(path.startswith(prefix) for prefix in prefixes):
        return path
    raise ValueError(
        f"{name}: refusing to import {path!r} from a file's config: only {kind} can be built from a checkpoint or "
        "export (pass allow=[...] to trust another class explicitly)"
    )


def resolve_component(path: Any, name: str = "config", base: type = RecordsInit, kind: str = _COMPONENTS,
                      prefixes: Sequence[str] = ("colddiff.",), allow: Sequence[str] = ()) -> type:
    """The class at ``path``, which must be under ``prefixes`` (checked before import) and subclass ``base``.

    Configs inside checkpoints and exports are data from files: only classes that opted in as components may be
    built from them (by default colddiff components, :class:`RecordsInit`), never arbitrary callables; a class path
    the caller lists in ``allow`` is trusted explicitly (it must still be a class).  ``kind`` names the allowed
    classes in the error.
    """
    check_class_path(path, name, prefixes, allow, kind)
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{name}: cannot import {path!r} ({err})") from err
    trusted = path in allow and isinstance(cls, type)
    if not trusted and not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{name}: refusing to build {path!r} from a config: only {kind} can be built from a "
                         "checkpoint or export")
    return cls


#: dotted paths of functions trusted in the current context (see :func:`allowed_callables`)
_ALLOWED_CALLABLES: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("colddiff_allowed_callables",
                                                                                    default=frozenset())


@contextlib.contextmanager
def allowed_callables(paths: Iterable[str]) -> Iterator[frozenset[str]]:
    """Trust these dotted paths to functions while building components in this context (nests; thread- and
    task-local).

    Components that take a function by name from a config (:class:`~colddiff.degradations.Transform`'s
    ``function``) resolve a dotted path only if it is listed here, so a file's config cannot make colddiff import
    ``os.system``.  :func:`build` (and so ``ColdDiffusion.load_from_checkpoint(..., allow=[...])``) opens this context
    with its ``allow`` list.
    """
    if isinstance(paths, str):
        raise TypeError(f"allowed_callables takes a list of dotted paths, got the string {paths!r}")
    token = _ALLOWED_CALLABLES.set(_ALLOWED_CALLABLES.get() | frozenset(paths))
    try:
        yield _ALLOWED_CALLABLES.get()
    finally:
        _ALLOWED_CALLABLES.reset(token)


def resolve_callable(path: Any, name: str, allow: Sequence[str] = (),
                     kind: str = "registered names or functions you allow explicitly") -> Callable[..., Any]:
    """The function at dotted ``path``, which must be listed in ``allow`` or in the current
    :func:`allowed_callables` context (checked on the string, before anything is imported).

    ``kind`` says in the error what may be named instead.
    """
    if not isinstance(path, str) or not _CLASS_PATH.fullmatch(path):
        raise ValueError(f"{name}: expected a dotted import path to a function, got {path!r}")
    if path not in allow and path not in _ALLOWED_CALLABLES.get():
        raise ValueError(
            f"{name}: refusing to import {path!r} from a config: only {kind} can be named. To trust this function, "
            f"list it: colddiff.degradations.allowed_callables([{path!r}]) around the build, or "
            f"ColdDiffusion.load_from_checkpoint(path, allow=[{path!r}])"
        )
    module_name, _, attr = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{name}: cannot import {path!r} ({err})") from err
    if not callable(function):
        raise ValueError(f"{name}: {path!r} is not callable (got {type(function).__name__})")
    return function


def build(value: Any, name: str = "config", allow: Sequence[str] = ()) -> Any:
    """Instantiate ``{"class_path", "init_args"}`` dicts recursively; other values (and objects) pass through.

    Paths in ``allow`` are trusted both as classes to build and as functions a component may import by name (see
    :func:`allowed_callables`).
    """
    if isinstance(value, Mapping) and "class_path" in value:
        if value.get(NOT_RECORDED):
            raise ValueError(
                f"{name} ({value['class_path']}) was not recorded in this checkpoint because it was built in Python "
                f"from a class that does not record its init arguments; pass it explicitly, e.g. "
                f"ColdDiffusion.load_from_checkpoint(path, {name}=...)"
            )
        cls = resolve_component(value["class_path"], name, allow=allow)
        init_args = {k: build(v, f"{name}.{k}", allow) for k, v in (value.get("init_args") or {}).items()}
        with allowed_callables(allow):
            return cls(**init_args)
    if isinstance(value, list):
        return [build(v, f"{name}[{i}]", allow) for i, v in enumerate(value)]
    return value


def build_factory(value: Any, name: str) -> Any:
    """An optimiser or scheduler factory (``params -> Optimizer``, ``optimizer -> scheduler``) from its config.

    Only classes of ``torch.optim`` (for ``optimizer``) or ``torch.optim.lr_scheduler`` (for ``lr_scheduler``) are
    allowed.  ``None`` stays ``None``.
    """
    if value is None:
        return None
    if not (isinstance(value, Mapping) and "class_path" in value):
        raise ValueError(f"{name}: expected a config with class_path, got {type(value).__name__}")
    base = torch.optim.Optimizer if name == "optimizer" else torch.optim.lr_scheduler.LRScheduler
    cls = resolve_component(value["class_path"], name, base=base, kind=f"classes of {_TORCH_FACTORIES[name]}*",
                            prefixes=(_TORCH_FACTORIES[name],))
    init_args = dict(value.get("init_args") or {})
    return functools.partial(cls, **init_args)


def model_kwargs(config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                 allow: Sequence[str] = ()) -> dict[str, Any]:
    """Constructor arguments of a model from its recorded config (checkpoint hyper-parameters or an export).

    Components are built with :func:`build` (colddiff components, or class paths in ``allow``), the optimiser and
    scheduler with :func:`build_factory`; entries starting with ``_`` (Lightning's bookkeeping) are ignored;
    ``overrides`` replace recorded entries (and are never built from strings).
    """
    overrides = dict(overrides or {})
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_") or key in overrides:
            continue
        kwargs[key] = build_factory(value, key) if key in _TORCH_FACTORIES else build(value, key, allow)
    kwargs.update(overrides)
    return kwargs
