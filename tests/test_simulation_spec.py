"""The simulation spec's expression language: only arithmetic on declared names."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.providers import BeatBrief
from commands.providers.media import build_simulation
from commands.simulation import SpecError, evaluate, parse_expression, run, validate_spec

NAMES = frozenset({"x", "v", "k", "t", "dt"})
BRIEF = BeatBrief("physics", "springs", "ug", 2, "concept", "Restoring force", {}, "")

HOSTILE = [
    "__import__('os').system('id')",
    "x.__class__",
    "open('/etc/passwd')",
    "(lambda: 1)()",
    "[1, 2][0]",
    "x if x else v",
    "x < v",
    "'a' * 3",
    "exec('1')",
    "sin(x, v, k)",
    "sqrt(x=1)",
    "y + 1",
    "True + 1",
    "x; v",
    "x := 1",
    "{x: 1}",
    "f'{x}'",
    "x" + "+x" * 200,
    "-" * 30 + "x",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_anything_but_arithmetic_is_refused(text: str) -> None:
    with pytest.raises(SpecError):
        parse_expression(text, NAMES, "update.x")


def test_arithmetic_and_math_functions_evaluate() -> None:
    tree = parse_expression("x + v*dt - (k/2)**2 % 3 + sin(pi*t) + max(abs(-x), e)", NAMES, "u")
    env = {"x": 1.0, "v": 2.0, "k": 4.0, "t": 0.5, "dt": 0.1}
    expected = 1 + 2 * 0.1 - (4 / 2) ** 2 % 3 + math.sin(math.pi * 0.5) + max(1.0, math.e)
    assert evaluate(tree, env) == pytest.approx(expected)


def test_the_offline_oscillator_is_valid_and_runs() -> None:
    spec = build_simulation(BRIEF, "")
    assert validate_spec(spec) == spec
    trace = run(spec)
    assert len(trace) == spec["steps"]
    assert abs(trace[-1]["x"]) < 1  # damped


def _broken(change: Any) -> dict[str, Any]:
    spec = copy.deepcopy(build_simulation(BRIEF, ""))
    change(spec)
    return spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["parameters"][0].update(min=5, max=1), "parameters[0]"),
        (lambda s: s["parameters"][0].update(name="dt"), "parameters[0].name"),
        (lambda s: s["parameters"][1].update(name="k"), "parameters[1].name"),
        (lambda s: s["update"].pop("v"), "update"),
        (lambda s: s["update"].update(x="x + y"), "update.x"),
        (lambda s: s.update(steps=10**6), "spec.steps"),
        (lambda s: s["plot"].update(y=["k"]), "plot.y"),
        (lambda s: s["state"][0].update(initial="v"), "state[0].initial"),
        (lambda s: s["update"].update(v="v + 1e308 * 1e308"), "update"),
    ],
)
def test_invalid_specs_name_their_field(change: Any, field: str) -> None:
    with pytest.raises(SpecError, match=f"^{re.escape(field)}"):
        validate_spec(_broken(change))


@given(st.floats(0.5, 20), st.floats(0.1, 5), st.floats(0, 2))
def test_any_parameter_setting_in_range_runs_finite(k: float, m: float, c: float) -> None:
    spec = build_simulation(BRIEF, "")
    for row in run(spec, {"k": k, "m": m, "c": c}, steps=300):
        assert all(math.isfinite(value) for value in row.values())
