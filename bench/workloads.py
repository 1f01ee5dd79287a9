"""Workloads: which (op, case) rows a run times.

The suites of docs/workloads.md are not listed here: each op's registry entry tags its
benchmark cases with the suites they belong to, so an op that lands is benchmarked without an
edit to the harness. This module only selects rows (by suite and op) and reads user shape files.

Shape files (`--shapes FILE`), one row per problem; "shape" is the op's main input shape and the
other columns are the op's parameters (see `python -m bench.layers --list`):

    CSV:   op,name,shape,params
           softmax,wide rows,64x8192,dim=-1
           softmax,,1024x512,dim=0;kind=hard
    TOML:  [[row]]
           op = "softmax"
           name = "wide rows"        # optional; default: the shape and parameters
           shape = [64, 8192]        # or "64x8192"
           dim = -1
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch

from dlkern import registry
from dlkern.registry import Case, OpSpec

# The suites of docs/workloads.md, in report order. Ops may tag cases with further suites of their own
# (softmax has "softmax": larger and non-last-dim cases); `--suite all` takes every suite.
STANDARD_SUITES = ("layers", "linear-sweep", "tensorgrad")
DEFAULT_SUITES = ("layers", "tensorgrad")
USER_SUITE = "user"
# The dtypes --dtype takes, by torch's names; a row's inputs are made in float32 and rounded to its
# dtype (dlkern.testing.inputs_at).
DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class Row:
    """One problem to check and time: an op's case at a dtype, and the selected suites it
    appears in."""
    spec: OpSpec
    case: Case
    suites: tuple[str, ...]
    dtype: str = "float32"

    @property
    def op(self) -> str:
        return self.spec.name

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.spec.name, self.case.name, self.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def parse_dtypes(text: str, prog: str = "bench.layers") -> list[str]:
    """'float32,bfloat16' -> ['float32', 'bfloat16']; ValueError naming the unknown ones."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise ValueError(f"{prog}: --dtype: expected some of {', '.join(DTYPES)}, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{prog}: --dtype: a dtype is listed twice: {text!r}")
    return names


def at_dtypes(rows: list[Row], dtypes: list[str]) -> list[Row]:
    """Every row at every dtype: each dtype its own set of rows, in the order given."""
    return [replace(r, dtype=d) for d in dtypes for r in rows]


def known_suites() -> list[str]:
    extra = sorted({s for spec in registry.ops() for c in spec.bench_cases for s in c.suites}
                   - set(STANDARD_SUITES))
    return list(STANDARD_SUITES) + extra


def select(suites: Iterable[str], ops: Iterable[str] | None = None) -> list[Row]:
    """The registry's bench cases in any of `suites` (and of `ops`, when given), each once, in
    suite order then registry order."""
    suites = list(suites)
    unknown = [s for s in suites if s not in known_suites()]
    if unknown:
        raise ValueError(f"bench.layers: unknown suite {', '.join(unknown)}; known: "
                         f"{', '.join(known_suites())}, all")
    specs = _specs(ops)
    rows: dict[tuple, Row] = {}
    for suite in suites:
        for spec in specs:
            for case in spec.bench_cases:
                if suite not in case.suites:
                    continue
                k = (spec.name, case.name)
                if k in rows:
                    rows[k] = Row(spec, case, rows[k].suites + (suite,))
                else:
                    rows[k] = Row(spec, case, (suite,))
    return list(rows.values())


def _specs(ops: Iterable[str] | None) -> list[OpSpec]:
    if not ops:
        return registry.ops()
    out = []
    for name in ops:
        try:
            out.append(registry.get(name))
        except KeyError:
            raise ValueError(f"bench.layers: --ops: no op named {name!r}; registered: "
                             f"{', '.join(s.name for s in registry.ops())}") from None
    return out


# ---- user shape files ----------------------------------------------------------------------

def parse_shape(text: Any, where: str) -> tuple[int, ...]:
    """'128x64' / '128,64' / [128, 64] / 128 -> (128, 64)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return (text,)
    if isinstance(text, (list, tuple)):
        items = list(text)
    elif isinstance(text, str):
        t = text.strip().strip("()[]").replace(",", "x").replace("×", "x")
        items = [p.strip() for p in t.split("x") if p.strip()] if t else []
    else:
        raise ValueError(f"{where}: shape must be like 128x64 or a list of ints, got {text!r}")
    try:
        dims = tuple(int(p) for p in items)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: shape must be like 128x64 or a list of ints, got {text!r}") \
            from None
    if any(d < 0 for d in dims):
        raise ValueError(f"{where}: shape has a negative size: {text!r}")
    return dims


def parse_value(text: str) -> Any:
    """A CSV parameter value: int, float, bool, a shape (3x3) or a string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if "x" in low and all(p.strip().isdigit() for p in low.split("x")):
        return tuple(int(p) for p in low.split("x"))
    return t


def _row_from(op: str, name: str | None, params: dict, where: str) -> Row:
    try:
        spec = registry.get(op)
    except KeyError:
        raise ValueError(f"{where}: no op named {op!r}; registered: "
                         f"{', '.join(s.name for s in registry.ops())}") from None
    if "shape" in params:
        params["shape"] = parse_shape(params["shape"], where)
    try:
        spec.check_params(params)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not name:
        rest = " ".join(f"{k}={v}" for k, v in params.items() if k != "shape")
        name = "x".join(map(str, params.get("shape", ()))) + (f" {rest}" if rest else "")
    return Row(spec, Case(name, params, suites=(USER_SUITE,)), (USER_SUITE,))


def load_shapes(path: str) -> list[Row]:
    """Rows from a CSV or TOML shape file (format in the module doc); errors name file and line."""
    if not os.path.exists(path):
        raise ValueError(f"bench.layers: --shapes: no such file {path!r}")
    rows: list[Row] = []
    if path.endswith(".toml"):
        import tomllib
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: not valid TOML: {e}") from None
        entries = data.get("row")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: expected one or more [[row]] tables")
        for i, entry in enumerate(entries):
            where = f"{path}: row {i + 1}"
            entry = dict(entry)
            op = entry.pop("op", None)
            if not op:
                raise ValueError(f"{where}: missing 'op'")
            name = entry.pop("name", None)
            rows.append(_row_from(op, name, entry, where))
    elif path.endswith(".csv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "op" not in reader.fieldnames:
                raise ValueError(f"{path}: expected a header line with columns op,name,shape,params")
            for line in reader:
                where = f"{path}: line {reader.line_num}"
                op = (line.get("op") or "").strip()
                if not op or op.startswith("#"):
                    continue
                params: dict[str, Any] = {}
                if (line.get("shape") or "").strip():
                    params["shape"] = line["shape"]
                for item in (line.get("params") or "").split(";"):
                    if not item.strip():
                        continue
                    if "=" not in item:
                        raise ValueError(f"{where}: parameter {item.strip()!r} is not key=value")
                    k, v = item.split("=", 1)
                    params[k.strip()] = parse_value(v)
                rows.append(_row_from(op, (line.get("name") or "").strip(), params, where))
    else:
        raise ValueError(f"bench.layers: --shapes: {path!r} must end in .csv or .toml")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
