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
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["RecordsInit", "describe", "describe_or_mark", "build", "build_factory", "model_kwargs", "class_path",
           "check_class_path", "resolve_component", "check_component_entries", "ModelFileError", "allowed_callables",
           "resolve_callable"]


class ModelFileError(ValueError):
    """What a model file holds (its config, or a component's stored state) cannot be built or loaded.

    The message is one line that names the field and, once known, the file (``source``): loaders that know the
    file pass it, and a caller that learns it later adds it with :meth:`with_source`.

    Attributes:
        reason: what is wrong, naming the field (without the file).
        source: the model file, or ``None`` when not known yet.
    """

    def __init__(self, reason: str, source: str | os.PathLike | None = None) -> None:
        self.reason = (str(reason).splitlines() or [""])[0]
        self.source = None if source is None else str(source)
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{self.source!r}: {self.reason}" if self.source else self.reason

    def with_source(self, source: str | os.PathLike | None) -> ModelFileError:
        """Name the file in the message if it does not name one yet; returns ``self``."""
        if self.source is None and source is not None:
            self.source = str(source)
            self.args = (self._text(),)
        return self


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
#: torch classes a model config may name, by argument: the optimiser and scheduler factories
_TORCH_FACTORIES = {"optimizer": "torch.optim.", "lr_scheduler": "torch.optim.lr_scheduler."}


def check_class_path(path: Any, name: str, prefixes: Sequence[str] = ("colddiff.",), allow: Sequence[str] = (),
                     kind: str = f"{_COMPONENTS} and the torch optimisers and schedulers") -> str:
    """Refuse a class path from a file's config unless it is under one of ``prefixes`` or listed in ``allow``.

    This is checked on the string, before anything is imported: importing a module can run its code.
    """
    if not isinstance(path, str) or not CLASS_PATH.fullmatch(path):
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
    if not isinstance(path, str) or not CLASS_PATH.fullmatch(path):
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


def _check_arguments(cls: type, init_args: Mapping[str, Any], name: str, path: str,
                     source: str | os.PathLike | None) -> None:
    """Refuse arguments ``cls`` does not take, and missing required ones, naming the field (before building)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no introspectable signature: the constructor itself checks
        return
    parameters = signature.parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = [n for n, p in parameters.items()
                    if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        unknown = sorted(set(init_args) - set(accepted))
        if unknown:
            raise ModelFileError(f"{name}.init_args: {path} takes no argument {', '.join(map(repr, unknown))} "
                                 f"(its arguments: {', '.join(accepted) or 'none'})", source)
    try:
        signature.bind(**init_args)
    except TypeError as err:
        raise ModelFileError(f"{name}.init_args: {path} cannot be built: {err}", source) from err


def build(value: Any, name: str = "config", allow: Sequence[str] = (),
          source: str | os.PathLike | None = None) -> Any:
    """Instantiate ``{"class_path", "init_args"}`` dicts recursively; other values (and objects) pass through.

    Args:
        value: a config value from a file.
        name: the field, for error messages (``network``, ``degradation.init_args.x`` ...).
        allow: class paths trusted beyond colddiff's components.
        source: the file the config came from, named in errors.

    Raises:
        ModelFileError: (a ``ValueError``) one line naming the field (and ``source``): a class outside the
            allow-list, ``init_args`` that is not a mapping, an argument the class does not take or a missing one,
            or a value its constructor refuses (e.g. ``num_steps: "ten"``).
    """
    if isinstance(value, Mapping) and "class_path" in value:
        if value.get(NOT_RECORDED):
            raise ModelFileError(
                f"{name} ({value['class_path']}) was not recorded in this checkpoint because it was built in Python "
                f"from a class that does not record its init arguments; pass it explicitly, e.g. "
                f"ColdDiffusion.load_from_checkpoint(path, {name}=...)", source
            )
        try:
            cls = resolve_component(value["class_path"], name, allow=allow)
        except ValueError as err:
            raise ModelFileError(str(err), source) from err
        raw = value.get("init_args")
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise ModelFileError(f"{name}.init_args: expected a mapping of arguments, got {type(raw).__name__} "
                                 f"{_short(raw)}", source)
        bad_keys = [k for k in raw if not isinstance(k, str)]
        if bad_keys:
            raise ModelFileError(f"{name}.init_args: argument names must be strings, got {_short(bad_keys)}", source)
        _check_arguments(cls, raw, name, value["class_path"], source)
        init_args = {k: build(v, f"{name}.init_args.{k}", allow, source) for k, v in raw.items()}
        try:
            with allowed_callables(allow):  # paths in allow are also functions a component may import by name
                return cls(**init_args)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            if isinstance(err, ModelFileError):
                raise err.with_source(source) from None
            detail = (str(err).splitlines() or [type(err).__name__])[0]
            raise ModelFileError(f"{name} ({value['class_path']}) cannot be built from the file's config: "
                                 f"{detail}", source) from err
    if isinstance(value, list):
        return [build(v, f"{name}[{i}]", allow, source) for i, v in enumerate(value)]
    return value


def build_factory(value: Any, name: str, source: str | os.PathLike | None = None) -> Any:
    """An optimiser or scheduler factory (``params -> Optimizer``, ``optimizer -> scheduler``) from its config.

    Only classes of ``torch.optim`` (for ``optimizer``) or ``torch.optim.lr_scheduler`` (for ``lr_scheduler``) are
    allowed.  ``None`` stays ``None``.  Errors are :class:`ModelFileError` naming the field (and ``source``).
    """
    if value is None:
        return None
    if not (isinstance(value, Mapping) and "class_path" in value):
        raise ModelFileError(f"{name}: expected a config with class_path, got {type(value).__name__}", source)
    base = torch.optim.Optimizer if name == "optimizer" else torch.optim.lr_scheduler.LRScheduler
    try:
        cls = resolve_component(value["class_path"], name, base=base, kind=f"classes of {_TORCH_FACTORIES[name]}*",
                                prefixes=(_TORCH_FACTORIES[name],))
    except ValueError as err:
        raise ModelFileError(str(err), source) from err
    raw = value.get("init_args")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise ModelFileError(f"{name}.init_args: expected a mapping of arguments, got {_short(raw)}", source)
    return functools.partial(cls, **dict(raw))


#: entries of a model config that, when present, must be components (``{class_path, init_args}``), and whether
#: ``null`` is allowed for them (a model without a prior, or with its degradation's default objective)
_COMPONENT_KEYS = {"degradation": False, "network": False, "prior": True, "objective": True}


def check_component_entries(config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                            source: str | os.PathLike | None = None) -> None:
    """Refuse component entries (degradation, network, prior, objective) that are not ``{class_path, init_args}``
    mappings (or null where allowed), in one line naming the field (and ``source``); missing entries are the model
    constructor's to report."""
    overrides = overrides or {}
    for key, nullable in _COMPONENT_KEYS.items():
        if key in overrides or key not in config:
            continue
        value = config[key]
        if not (isinstance(value, Mapping) and "class_path" in value) and not (nullable and value is None):
            raise ModelFileError(f"{key}: expected a component config {{class_path, init_args}}"
                                 f"{' or null' if nullable else ''}, got {type(value).__name__} {_short(value)}",
                                 source)


def model_kwargs(config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                 allow: Sequence[str] = (), source: str | os.PathLike | None = None) -> dict[str, Any]:
    """Constructor arguments of a model from its recorded config (checkpoint hyper-parameters or an export).

    Components are built with :func:`build` (colddiff components, or class paths in ``allow``), the optimiser and
    scheduler with :func:`build_factory`; entries starting with ``_`` (Lightning's bookkeeping) are ignored;
    ``overrides`` replace recorded entries (and are never built from strings).

    Args:
        config: the recorded config: a mapping of the model's arguments.
        overrides: arguments that replace recorded ones.
        allow: class paths trusted beyond colddiff's components.
        source: the model file, named in errors.

    Raises:
        ModelFileError: one line naming the field (and ``source``): a config that is not a mapping, a
            ``degradation``, ``network`` or ``prior`` entry that is not a ``{class_path, init_args}`` mapping (a
            string, a list ...; ``prior`` may be null), or any error of :func:`build` / :func:`build_factory`.
    """
    if not isinstance(config, Mapping):
        raise ModelFileError(f"the model config must be a mapping of the model's arguments (degradation, network, "
                             f"...), got {type(config).__name__} {_short(config)}", source)
    bad_keys = [k for k in config if not isinstance(k, str)]
    if bad_keys:
        raise ModelFileError(f"the model config's argument names must be strings, got {_short(bad_keys)}", source)
    overrides = dict(overrides or {})
    check_component_entries(config, overrides, source)
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_") or key in overrides:
            continue
        kwargs[key] = build_factory(value, key, source) if key in _TORCH_FACTORIES else \
            build(value, key, allow, source)
    kwargs.update(overrides)
    return kwargs
