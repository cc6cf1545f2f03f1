"""The bit-width integer linear program (HAWQ-V3 / OHQ form), solved by scipy's HiGHS `milp`.

Binary x[l, k]: layer l takes choice k = (w_bits, a_bits).

    minimize    sum_lk s[l,k] x[l,k]  +  eps * sum_lk cycles[l,k] x[l,k] / sum(cycles)
    subject to  sum_k x[l,k] = 1                                  one choice per layer
                sum_lk cycles[l,k] x[l,k] <= cycles_budget        (and weight bytes, BOPs)
                sum_{k: a_k = a} x[l,k] = sum_{k: a_k = a} x[l',k] for tied layers l, l' and
                                                                  every activation width a
                x[l,k] = 0 where a choice is not allowed
The eps term (1e-9 of the total sensitivity scale) breaks ties between equally sensitive
assignments towards fewer cycles, so results are reproducible.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

BUDGETS = {"cycles_budget": "cycles", "weight_bytes_budget": "weight_bytes",
           "bops_budget": "bops"}
_SLACK = 1e-9  # relative: a budget equal to an achievable total is feasible


class InfeasibleBudget(ValueError):
    """No assignment meets a budget; `smallest` is that budget's smallest feasible value (None
    when the budgets together, not one alone, are infeasible)."""

    def __init__(self, message: str, budget: str | None, smallest: float | None):
        super().__init__(message)
        self.budget, self.smallest = budget, smallest


def _table(value, name: str, shape) -> np.ndarray | None:
    if value is None:
        return None
    a = np.array(value, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"BitwidthProblem.{name} has shape {a.shape}; it needs (layers, choices)"
                         f" = {shape}.")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"BitwidthProblem.{name} must be finite and >= 0.")
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class BitwidthProblem:
    """One program: L layers, K candidate (w_bits, a_bits) choices, (L, K) tables."""

    layers: tuple[str, ...]
    choices: tuple[tuple[int, int], ...]
    sensitivity: np.ndarray
    cycles: np.ndarray
    weight_bytes: np.ndarray | None = None
    bops: np.ndarray | None = None
    ties: tuple[tuple[str, ...], ...] = ()
    allowed: np.ndarray | None = None

    def __post_init__(self):
        layers = tuple(str(n) for n in self.layers)
        choices = tuple(tuple(int(b) for b in c) for c in self.choices)
        if not layers or not choices:
            raise ValueError("BitwidthProblem needs at least one layer and one choice.")
        if len(set(layers)) != len(layers) or len(set(choices)) != len(choices):
            raise ValueError("BitwidthProblem: layer names and choices must be unique.")
        if any(len(c) != 2 for c in choices):
            raise ValueError(f"BitwidthProblem.choices={self.choices!r}: use (w_bits, a_bits).")
        shape = (len(layers), len(choices))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "choices", choices)
        for name in ("sensitivity", "cycles", "weight_bytes", "bops"):
            object.__setattr__(self, name, _table(getattr(self, name), name, shape))
        if self.sensitivity is None or self.cycles is None:
            raise ValueError("BitwidthProblem needs sensitivity and cycles tables.")
        known = set(layers)
        ties = tuple(tuple(str(n) for n in group) for group in self.ties)
        for group in ties:
            unknown = [n for n in group if n not in known]
            if unknown:
                raise ValueError(f"BitwidthProblem.ties names unknown layers {unknown}.")
        object.__setattr__(self, "ties", ties)
        allowed = np.ones(shape, bool) if self.allowed is None else np.array(self.allowed, bool)
        if allowed.shape != shape:
            raise ValueError(f"BitwidthProblem.allowed has shape {allowed.shape}; it needs "
                             f"{shape}.")
        empty = [layers[i] for i in np.flatnonzero(~allowed.any(axis=1))]
        if empty:
            raise ValueError(f"BitwidthProblem.allowed leaves layers {empty} no choice.")
        allowed.flags.writeable = False
        object.__setattr__(self, "allowed", allowed)


@dataclass(frozen=True)
class Assignment:
    """The program's solution: a choice per layer and the totals it reaches."""

    choice: dict[str, tuple[int, int]]
    index: np.ndarray
    sensitivity: float
    cycles: float
    weight_bytes: float | None
    bops: float | None
    solve_seconds: float
    problem: BitwidthProblem = field(repr=False)

    def table(self) -> str:
        p = self.problem
        rows = [("layer", "w_bits", "a_bits", "cycles", "sensitivity")]
        for i, (name, k) in enumerate(zip(p.layers, self.index)):
            w, a = p.choices[k]
            rows.append((name, str(w), str(a), f"{p.cycles[i, k]:,.0f}",
                         f"{p.sensitivity[i, k]:.3g}"))
        rows.append(("total", "", "", f"{self.cycles:,.0f}", f"{self.sensitivity:.3g}"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)

    __str__ = table


def uniform(problem: BitwidthProblem, choice: tuple[int, int]) -> float:
    """Total cycles when every layer takes `choice`."""
    choice = tuple(choice)
    if choice not in problem.choices:
        raise ValueError(f"choice {choice} is not among {problem.choices}")
    return float(problem.cycles[:, problem.choices.index(choice)].sum())


def _constraints(problem: BitwidthProblem, budgets: dict[str, float]) -> list:
    n_l, n_k = problem.sensitivity.shape
    n = n_l * n_k
    rows, cols = np.repeat(np.arange(n_l), n_k), np.arange(n)
    one_each = coo_matrix((np.ones(n), (rows, cols)), shape=(n_l, n))
    out = [LinearConstraint(one_each, 1, 1)]
    for name, value in budgets.items():
        table = getattr(problem, BUDGETS[name]).reshape(1, -1)
        out.append(LinearConstraint(table, -np.inf, value * (1 + _SLACK) + 1e-9))
    index = {name: i for i, name in enumerate(problem.layers)}
    widths = sorted({a for _, a in problem.choices})
    data, r, c = [], [], []
    row = 0
    for group in problem.ties:
        for left, right in itertools.pairwise(group):
            for a in widths:
                for k, (_, ak) in enumerate(problem.choices):
                    if ak == a:
                        data += [1.0, -1.0]
                        r += [row, row]
                        c += [index[left] * n_k + k, index[right] * n_k + k]
                row += 1
    if row:
        out.append(LinearConstraint(coo_matrix((data, (r, c)), shape=(row, n)), 0, 0))
    return out


def _milp(problem: BitwidthProblem, objective: np.ndarray, budgets: dict[str, float]):
    upper = problem.allowed.reshape(-1).astype(float)
    return milp(objective, constraints=_constraints(problem, budgets),
                integrality=np.ones(objective.size), bounds=Bounds(0, upper))


def _check_budgets(budgets: dict[str, float | None], problem: BitwidthProblem) -> dict:
    out = {}
    for name, value in budgets.items():
        if value is None:
            continue
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r}: use a positive finite number.")
        if getattr(problem, BUDGETS[name]) is None:
            raise ValueError(f"{name} given but the problem has no {BUDGETS[name]} table.")
        out[name] = float(value)
    return out


def solve(problem: BitwidthProblem, *, cycles_budget: float | None = None,
          weight_bytes_budget: float | None = None,
          bops_budget: float | None = None) -> Assignment:
    """The least-sensitive assignment within the budgets (absolute totals); raises
    InfeasibleBudget naming the smallest feasible value of the budget that cannot be met."""
    budgets = _check_budgets({"cycles_budget": cycles_budget,
                              "weight_bytes_budget": weight_bytes_budget,
                              "bops_budget": bops_budget}, problem)
    start = time.perf_counter()
    s = problem.sensitivity.reshape(-1)
    cyc = problem.cycles.reshape(-1)
    scale = max(float(np.abs(s).max()), 1e-30) * 1e-9
    tie_break = scale * cyc / max(float(cyc.sum()), 1e-30)
    result = _milp(problem, s + tie_break, budgets)
    seconds = time.perf_counter() - start
    if result.status != 0 or result.x is None:
        raise _infeasible(problem, budgets)
    x = np.round(result.x).reshape(problem.sensitivity.shape)
    index = x.argmax(axis=1)
    rows = np.arange(len(index))

    def total(table):
        return None if table is None else float(table[rows, index].sum())

    return Assignment({n: problem.choices[k] for n, k in zip(problem.layers, index)}, index,
                      total(problem.sensitivity), total(problem.cycles),
                      total(problem.weight_bytes), total(problem.bops), seconds, problem)


def _infeasible(problem: BitwidthProblem, budgets: dict[str, float]) -> InfeasibleBudget:
    """The error for infeasible budgets: for each budget, minimize its quantity under the
    others; the first one whose minimum exceeds it is named with that minimum."""
    for name, value in budgets.items():
        others = {k: v for k, v in budgets.items() if k != name}
        table = getattr(problem, BUDGETS[name])
        result = _milp(problem, table.reshape(-1), others)
        if result.status == 0 and result.fun > value * (1 + _SLACK) + 1e-9:
            smallest = float(result.fun)
            unit = BUDGETS[name].replace("_", " ")
            return InfeasibleBudget(
                f"{name}={value:,.6g} is infeasible: the smallest feasible total is "
                f"{smallest:,.6g} {unit} (with the tie constraints and the other budgets). "
                f"Raise the budget to at least {smallest:,.6g}.", name, smallest)
    return InfeasibleBudget(f"the budgets {budgets} cannot be met together (each alone can); "
                            "relax one of them.", None, None)
