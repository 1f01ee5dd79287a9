"""Implementations from outside the repository, selected with --impl like the built-in ones:

    --impl pkg.module:name              import pkg.module, take `name` (a dotted path is followed)
    --impl path/to/file.py:name         load a file, take `name`
    --impl NAME                         an installed plugin: entry point NAME in group dlkern.impls
    --impl mine=pkg.module:name         any of these, labelled "mine" in the tables

The object taken may be
- a callable with an op's functional signature (the keyword arguments of the registry's torch
  reference: softmax(input, dim), linear(input, weight, bias), ...): it covers every op in the run
  whose arguments it accepts;
- a mapping from op name to such callables;
- a factory, a callable whose parameters are exactly (spec, device): it is called per op and
  device with the registry entry and the device string, and returns the callable, or raises
  bench.impls.Unavailable (or returns None) to refuse that op with a reason.

A callable (or the mapping or factory it came from) may carry a `dtypes` attribute, the dtype
names it computes in (`fn.dtypes = ("float32",)`): rows at other dtypes (bench.layers --dtype)
are then skipped with that reason. Without one it runs at every dtype, and one it cannot
compute in fails its check (FAILED, with the error).

Such an implementation is gated, timed and reported exactly like dlkern's own, by bench.layers
per op and by bench.models in the layers of the kinds it covers (covering). A mistake in
loading it (module or file not found, attribute missing, not callable, a factory with the wrong
parameters) is a ValueError naming the --impl value, which the command lines print as one line
before anything runs (exit 2); an op it does not cover is a skipped row with the reason, and a
run in which it covers no op at all is refused up front the same way.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping

from dlkern import registry
from dlkern.registry import OpSpec

from . import impls as impls_mod

ENTRY_POINT_GROUP = "dlkern.impls"
_registered: set[str] = set()        # the --impl values register_external registered
FACTORY_PARAMS = ["spec", "device"]


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plugins: name -> entry point in ENTRY_POINT_GROUP."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def installed_line() -> str:
    """--list's line of installed plugins, each with its target and distribution."""
    eps = entry_points()
    return (f"installed plugins (entry point group {ENTRY_POINT_GROUP}): " +
            (", ".join(f"{n} ({ep.value}"
                       f"{', from ' + ep.dist.name if getattr(ep, 'dist', None) else ''})"
                       for n, ep in sorted(eps.items())) or "none"))


def split_label(value: str) -> tuple[str | None, str]:
    """'mine=pkg.mod:fn' -> ('mine', 'pkg.mod:fn'); 'pkg.mod:fn' -> (None, 'pkg.mod:fn')."""
    label, sep, target = value.partition("=")
    return (label.strip(), target.strip()) if sep else (None, value)


def is_external(value: str) -> bool:
    """Whether an --impl value names an implementation from outside: a label, a file, a module
    path, or an installed plugin (the built-in names and custom:<variant> take precedence)."""
    label, target = split_label(value)
    if label is not None or value in _registered:
        return True
    if impls_mod.is_builtin(target):
        return False
    return ":" in target or target.endswith(".py") or target in entry_points()


def _follow(obj, attr: str, value: str, where: str):
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--impl {value}: {where} has no attribute {attr!r}") from None
    return obj


def _load_file(path: str, attr: str, value: str):
    if not os.path.isfile(path):
        raise ValueError(f"--impl {value}: no such file {path!r}")
    mod_name = "dlkern_impl_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ValueError(f"--impl {value}: loading {path} raised {type(e).__name__}: {e}") from None
    return _follow(module, attr, value, path)


def _load_module(module_name: str, attr: str, value: str):
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ValueError(f"--impl {value}: cannot import {module_name!r}: "
                         f"{type(e).__name__}: {e}") from None
    return _follow(module, attr, value, f"module {module_name!r}")


def load_object(value: str):
    """The object an --impl value names (see the module doc); ValueError naming the value."""
    _, target = split_label(value)
    if not target:
        raise ValueError(f"--impl {value}: nothing after '='")
    eps = entry_points()
    if ":" not in target and not target.endswith(".py"):
        if target not in eps:
            raise ValueError(f"--impl {value}: no implementation or installed plugin (entry point "
                             f"group {ENTRY_POINT_GROUP}) of that name; installed plugins: "
                             f"{', '.join(sorted(eps)) or 'none'}")
        try:
            return eps[target].load()
        except Exception as e:
            raise ValueError(f"--impl {value}: loading plugin {eps[target].value!r} raised "
                             f"{type(e).__name__}: {e}") from None
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"--impl {value}: expected module:name or path/to/file.py:name")
    if where.endswith(".py") or os.sep in where or "/" in where:
        return _load_file(where, attr, value)
    return _load_module(where, attr, value)


def _is_factory(obj) -> bool:
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return params == FACTORY_PARAMS


def signature_problem(fn, spec: OpSpec) -> str | None:
    """Why `fn` cannot be called with `spec`'s keyword arguments (None when it can)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None                      # a builtin without a signature: let the gate decide
    names = list(inspect.signature(spec.ref).parameters)
    try:
        sig.bind(**{n: None for n in names})
    except TypeError as e:
        return f"its signature {sig} does not take {spec.name}'s arguments ({', '.join(names)}): {e}"
    return None


def _short(target: str) -> str:
    """The default label: 'plain_torch_impl:IMPLS' for path/to/plain_torch_impl.py:IMPLS."""
    where, sep, attr = target.rpartition(":")
    if not sep:
        return target
    base = os.path.basename(where)
    return f"{base[:-3] if base.endswith('.py') else base}:{attr}"


def label_for(value: str) -> str:
    """The label an --impl value is shown under: its own (mine=...) or file:name."""
    label, target = split_label(value)
    return label or _short(target)


def make_factory(value: str):
    """Load `value` and return an impls factory (spec, device, arg) -> Impl for it."""
    return factory_for(load_object(value), value, label_for(value), split_label(value)[1])


def covering(value: str, op_names, device: str) -> tuple[dict, dict]:
    """Load `value`; ({op: Impl} for the ops among `op_names` it covers on `device`,
    {op: why not} for the rest). ValueError for a loading mistake."""
    factory = make_factory(value)
    fns, why = {}, {}
    for op in op_names:
        try:
            fns[op] = factory(registry.get(op), device, None)
        except impls_mod.Unavailable as e:
            why[op] = str(e)
    return fns, why


def factory_for(obj, value: str, label: str, source: str):
    """An impls factory (spec, device, arg) -> Impl for a callable, mapping or factory `obj`
    (see the module doc), registered as `value`; ValueError when `obj` is none of them."""
    if isinstance(obj, Mapping):
        bad = [k for k, v in obj.items() if not callable(v)]
        if bad:
            raise ValueError(f"--impl {value}: the mapping's entries for {', '.join(map(str, bad))} "
                             "are not callable")
    elif not callable(obj):
        raise ValueError(f"--impl {value}: {type(obj).__name__} object is not callable, a mapping "
                         "from op name to callables, or a factory (spec, device)")

    def factory(spec: OpSpec, device: str, arg) -> impls_mod.Impl:
        if isinstance(obj, Mapping):
            fn = obj.get(spec.name)
            if fn is None:
                raise impls_mod.Unavailable(f"{label} covers {', '.join(map(str, obj))}, not "
                                            f"{spec.name}")
        elif _is_factory(obj):
            try:
                fn = obj(spec, device)
            except impls_mod.Unavailable:
                raise
            except Exception as e:
                raise impls_mod.Unavailable(f"{label}'s factory raised for {spec.name} on "
                                            f"{device}: {type(e).__name__}: {e}") from None
            if fn is None:
                raise impls_mod.Unavailable(f"{label}'s factory has nothing for {spec.name} on "
                                            f"{device}")
            if not callable(fn):
                raise impls_mod.Unavailable(f"{label}'s factory returned a {type(fn).__name__} for "
                                            f"{spec.name}, not a callable")
        else:
            fn = obj
        why = signature_problem(fn, spec)
        if why:
            raise impls_mod.Unavailable(f"{label}: {why}")
        return impls_mod.Impl(value, label, fn, notes={"source": source},
                              dtypes=declared_dtypes(fn, obj, label))
    return factory


def declared_dtypes(fn, obj, label: str) -> tuple[str, ...] | None:
    """The `dtypes` attribute of the callable (or of the mapping or factory it came from): the
    dtypes it computes in; None when neither declares any (it is run at every dtype)."""
    d = getattr(fn, "dtypes", None)
    if d is None:
        d = getattr(obj, "dtypes", None)
    if d is None:
        return None
    from .workloads import DTYPES
    if isinstance(d, str) or not all(isinstance(x, str) and x in DTYPES for x in d):
        raise impls_mod.Unavailable(f"{label}: its dtypes attribute must list dtype names among "
                                    f"{', '.join(DTYPES)}, got {d!r}")
    return tuple(d)


def register_object(name: str, obj, label: str | None = None) -> None:
    """Register a callable, mapping or factory handed over in Python (bench.api.run) as `name`."""
    impls_mod.register(name, factory_for(obj, name, label or name, "python object"))
    _registered.add(name)


def register_external(values: list[str]) -> None:
    """Load and register every external --impl value (ValueError on the first mistake)."""
    for v in values:
        if is_external(v) and not (v in _registered and impls_mod.is_builtin(v)):
            impls_mod.register(v, make_factory(v))
            _registered.add(v)
