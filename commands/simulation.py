"""Mini-simulations as declarative specs: model-written code never runs in a browser.

A spec names parameters (sliders with ranges), state variables with initial values, one
update expression per state variable (applied every `dt` for `steps` steps), and what to
plot. Expressions are a small language parsed with Python's `ast` and checked node by node:
numbers, the names the spec declares (parameters, state, `t`, `dt`) and the constants `pi`
and `e`, `+ - * / ** %`, unary minus, and calls of a few math functions. Nothing else
parses: no attributes, subscripts, comparisons, lambdas, strings or keywords. The client
evaluates the same language; :func:`run` here is the reference evaluator the tests use
(and the validator's check that the default run stays finite).

    {"title": str, "description": str,
     "parameters": [{"name", "label", "min", "max", "default", "step"?, "unit"?}],
     "state": [{"name", "initial": expr}],
     "update": {state_name: expr, ...},
     "dt": float, "steps": int,
     "plot": {"x": "t" | state name, "y": [state names], "x_label", "y_label"}}
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

MAX_PARAMETERS = 8
MAX_STATE = 8
MAX_STEPS = 5000
MAX_EXPRESSION_CHARS = 240
MAX_DEPTH = 24
NAME = re.compile(r"[a-z][a-z0-9_]{0,23}")
CONSTANTS = {"pi": math.pi, "e": math.e}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "abs": abs,
    "min": min,
    "max": max,
    "atan2": math.atan2,
}
RESERVED = frozenset({"t", "dt", *CONSTANTS, *FUNCTIONS})
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
    ast.Mod: lambda a, b: a % b,
}


class SpecError(ValueError):
    """The spec is not one this module accepts; the message names the field."""


def parse_expression(text: str, names: frozenset[str], where: str) -> ast.Expression:
    """`text` as an expression tree of the safe language, or SpecError naming `where`."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{where}: must be a non-empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise SpecError(f"{where}: longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise SpecError(f"{where}: not an expression: {text!r}") from None
    _check(tree.body, names, where, 0)
    return tree


def _check(node: ast.AST, names: frozenset[str], where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise SpecError(f"{where}: nested too deeply")
    match node:
        case ast.Constant(value=bool()):
            raise SpecError(f"{where}: only numbers are allowed, not {node.value!r}")
        case ast.Constant(value=int() | float()):
            return
        case ast.Name(id=name) if name in names or name in CONSTANTS:
            return
        case ast.Name(id=name):
            raise SpecError(f"{where}: unknown name {name!r}")
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            _check(left, names, where, depth + 1)
            _check(right, names, where, depth + 1)
        case ast.UnaryOp(op=ast.USub() | ast.UAdd(), operand=operand):
            _check(operand, names, where, depth + 1)
        case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]) if fn in FUNCTIONS:
            if not 1 <= len(args) <= 2:
                raise SpecError(f"{where}: {fn}() takes one or two arguments")
            for arg in args:
                _check(arg, names, where, depth + 1)
        case _:
            raise SpecError(f"{where}: {type(node).__name__} is not allowed")


def evaluate(tree: ast.Expression, env: Mapping[str, float]) -> float:
    """The value of a checked expression (ArithmeticError/ValueError on a math domain)."""

    def ev(node: ast.AST) -> float:
        match node:
            case ast.Constant(value=int() | float() as value):
                return float(value)
            case ast.Name(id=name):
                return env[name] if name in env else CONSTANTS[name]
            case ast.BinOp(left=left, op=op, right=right):
                return _BINARY[type(op)](ev(left), ev(right))
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return -ev(operand)
            case ast.UnaryOp(operand=operand):
                return ev(operand)
            case ast.Call(func=ast.Name(id=fn), args=args):
                return float(FUNCTIONS[fn](*[ev(a) for a in args]))
        raise SpecError(f"cannot evaluate {type(node).__name__}")

    return ev(tree.body)


def _number(obj: Mapping[str, Any], key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(f"{where}.{key}: must be a finite number")
    return float(value)


def _text(obj: Mapping[str, Any], key: str, where: str, limit: int, required: bool = True) -> str:
    value = obj.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value.strip()):
        raise SpecError(f"{where}.{key}: must be a non-empty string")
    return value[:limit]


def _name(value: Any, where: str, taken: set[str]) -> str:
    if not isinstance(value, str) or NAME.fullmatch(value) is None or value in RESERVED:
        raise SpecError(f"{where}: must be a lower-case identifier, not reserved; got {value!r}")
    if value in taken:
        raise SpecError(f"{where}: {value!r} is declared twice")
    taken.add(value)
    return value


def validate_spec(obj: Any) -> dict[str, Any]:
    """The spec, normalised; SpecError naming the first field that is wrong."""
    if not isinstance(obj, Mapping):
        raise SpecError("spec: must be a JSON object")
    taken: set[str] = set()
    raw_params = obj.get("parameters")
    if not isinstance(raw_params, list) or not 1 <= len(raw_params) <= MAX_PARAMETERS:
        raise SpecError(f"parameters: must be a list of 1 to {MAX_PARAMETERS}")
    parameters: list[dict[str, Any]] = []
    for i, p in enumerate(raw_params):
        where = f"parameters[{i}]"
        if not isinstance(p, Mapping):
            raise SpecError(f"{where}: must be an object")
        lo, hi, default = (_number(p, k, where) for k in ("min", "max", "default"))
        if not lo < hi or not lo <= default <= hi:
            raise SpecError(f"{where}: needs min < max and min <= default <= max")
        step = _number(p, "step", where) if "step" in p else (hi - lo) / 100
        if step <= 0:
            raise SpecError(f"{where}.step: must be positive")
        parameters.append(
            {
                "name": _name(p.get("name"), f"{where}.name", taken),
                "label": _text(p, "label", where, 60),
                "min": lo,
                "max": hi,
                "default": default,
                "step": step,
                "unit": _text(p, "unit", where, 20, required=False),
            }
        )
    raw_state = obj.get("state")
    if not isinstance(raw_state, list) or not 1 <= len(raw_state) <= MAX_STATE:
        raise SpecError(f"state: must be a list of 1 to {MAX_STATE}")
    state_names = [
        _name(s.get("name") if isinstance(s, Mapping) else None, f"state[{i}].name", taken)
        for i, s in enumerate(raw_state)
    ]
    param_names = frozenset(p["name"] for p in parameters)
    initial_names: frozenset[str] = param_names | {"t", "dt"}
    all_names: frozenset[str] = frozenset(taken) | {"t", "dt"}
    state = []
    for i, (s, name) in enumerate(zip(raw_state, state_names, strict=True)):
        initial = s.get("initial", "0")
        initial = str(initial) if isinstance(initial, int | float) else initial
        parse_expression(initial, initial_names, f"state[{i}].initial")
        state.append({"name": name, "initial": initial})
    update = obj.get("update")
    if not isinstance(update, Mapping) or set(update) != set(state_names):
        raise SpecError("update: must give exactly one expression per state variable")
    for name, expr in update.items():
        parse_expression(expr, all_names, f"update.{name}")
    dt, steps = _number(obj, "dt", "spec"), obj.get("steps")
    if not 0 < dt <= 10:
        raise SpecError("spec.dt: must be in (0, 10]")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise SpecError(f"spec.steps: must be a whole number from 1 to {MAX_STEPS}")
    plot = obj.get("plot")
    if not isinstance(plot, Mapping):
        raise SpecError("plot: must be an object")
    x, ys = plot.get("x", "t"), plot.get("y")
    if x != "t" and x not in state_names:
        raise SpecError("plot.x: must be t or a state variable")
    if not isinstance(ys, list) or not ys or any(y not in state_names for y in ys):
        raise SpecError("plot.y: must be a non-empty list of state variables")
    spec = {
        "title": _text(obj, "title", "spec", 120),
        "description": _text(obj, "description", "spec", 600, required=False),
        "parameters": parameters,
        "state": state,
        "update": {name: update[name] for name in state_names},
        "dt": dt,
        "steps": steps,
        "plot": {
            "x": x,
            "y": list(ys),
            "x_label": _text(plot, "x_label", "plot", 60, required=False),
            "y_label": _text(plot, "y_label", "plot", 60, required=False),
        },
    }
    try:
        run(spec, steps=min(steps, 200))
    except (ArithmeticError, ValueError) as e:
        raise SpecError(f"update: the default run fails: {e}") from None
    return spec


def run(
    spec: Mapping[str, Any], params: Mapping[str, float] | None = None, steps: int | None = None
) -> list[dict[str, float]]:
    """The reference evaluation: every state after each step (t included)."""
    names = frozenset(
        [p["name"] for p in spec["parameters"]] + [s["name"] for s in spec["state"]] + ["t", "dt"]
    )
    env: dict[str, float] = {p["name"]: p["default"] for p in spec["parameters"]}
    env.update(params or {})
    env.update(t=0.0, dt=float(spec["dt"]))
    for s in spec["state"]:
        env[s["name"]] = evaluate(parse_expression(s["initial"], names, "initial"), env)
    updates = {k: parse_expression(v, names, k) for k, v in spec["update"].items()}
    rows = []
    for _ in range(steps if steps is not None else spec["steps"]):
        new = {k: evaluate(tree, env) for k, tree in updates.items()}
        if not all(math.isfinite(v) for v in new.values()):
            raise ValueError("a state variable is no longer finite")
        env.update(new)
        env["t"] += env["dt"]
        rows.append({k: env[k] for k in ["t", *updates]})
    return rows
