"""Mixed precision for a model: measured cost x sensitivity -> one (w_bits, a_bits) per layer.

`plan_bitwidths` gathers, for every conv2d/matmul layer of an annotated model,
- its accelerator cycles at each (w_bits, a_bits) choice, measured on the emulator and cached
  (tvmq.mixed.cost; layers the accelerator cannot run cost 0 and are listed),
- its sensitivity (tvmq.mixed.sensitivity, mask-guided: the noise one narrow operand adds to
  the INT8 model),
- its weight bytes (params * w_bits / 8) and bit operations (MACs * w_bits * a_bits),
- the tie groups: layers whose inputs share one activation quantizer (one tensor, also through
  relu / max_pool2d / reshape / permute_dims, which keep their input's qparams) take one a_bits,
and solves the integer linear program (`AssignBitwidths`, tvmq.mixed.ilp) with budgets given as
fractions of uniform INT8. `verify_and_cut` then checks the choice: it measures the whole
assignment at once on the probe and, while that is worse than the additive estimate by more than
`CUT_FACTOR`, forbids the narrow operand whose return to 8 bits removes the most noise and
solves again (at most `MAX_ROUNDS` programs).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm

from ..errors import CompileError
from ..numerics import QParams
from ..passes.realize_quantization import SAME_SCALE_KINDS
from ..targets.accel import AccelConfig
from ..targets.accel.config import hardware_for
from ..targets.accel.lower import matmul_rows_reason
from ..targets.accel.target import load_emulator
from ..toolchain import cache_root
from . import cost, ilp, sensitivity

MAC_KINDS = ("conv2d", "matmul")
INT8 = (8, 8)
CUT_FACTOR = 2.0  # measured noise > 2x the additive estimate (3 dB) cuts and re-solves
MAX_ROUNDS = 6


@dataclass(frozen=True)
class Round:
    """One program of `verify_and_cut`: its choice's estimated (sum of sensitivities) and
    measured output noise, and the operand it forbade next ("conv2d_3 a4"), if any."""

    predicted: float
    measured: float
    narrow: int
    cut: str | None = None
    accepted: bool = False

    def to_dict(self) -> dict:
        return {"predicted": self.predicted, "measured": self.measured, "narrow": self.narrow,
                "cut": self.cut, "accepted": self.accepted}


@dataclass
class MixedPlan:
    """The chosen widths and how they were found.

    choice: (w_bits, a_bits) per conv2d/matmul layer; tensor_bits: activation width per tensor
    that differs from 8 (keyed by quantizer root tensor); host_layers: layers the accelerator
    refuses (cost 0 in the program), with the reason."""

    choice: dict[str, tuple[int, int]]
    tensor_bits: dict[str, int]
    roots: dict[str, str]
    problem: ilp.BitwidthProblem | None = None
    assignment: ilp.Assignment | None = None
    uniform_cycles: float = 0.0
    predicted_cycles: float = 0.0
    host_layers: dict[str, str] = field(default_factory=dict)
    sensitivity: sensitivity.Sensitivity | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)
    simulated_sqnr_db: dict[str, float] = field(default_factory=dict)  # "int8", "plan"

    def bits_of(self, tensor: str) -> int:
        """Activation width of a tensor (8 unless a 4-bit layer reads its quantizer)."""
        return self.tensor_bits.get(self.roots.get(tensor, tensor), 8)

    def operand_bits(self) -> dict[str, tuple[int, int, int]]:
        """(w_bits, a_bits, y_bits) per layer, for LowerToAccel."""
        return {name: (w, a, self.bits_of(name)) for name, (w, a) in self.choice.items()}

    def summary(self) -> dict:
        """For report.json: budget results and timings."""
        out = {"uniform_int8_cycles": self.uniform_cycles,
               "predicted_cycles": self.predicted_cycles,
               "choice": {n: list(c) for n, c in self.choice.items()},
               "host_layers": dict(self.host_layers), "seconds": dict(self.seconds)}
        if self.assignment is not None:
            out["sensitivity"] = self.assignment.sensitivity
            out["solve_seconds"] = self.assignment.solve_seconds
        if self.rounds:
            out["rounds"] = [r.to_dict() for r in self.rounds]
        if self.simulated_sqnr_db:
            out["simulated_sqnr_db"] = dict(self.simulated_sqnr_db)
        return out


class AssignBitwidths:
    """The bit-width program with budgets relative to uniform INT8:

        min sum s[l,k] x[l,k]  s.t.  sum cycles[l,k] x[l,k] <= latency_budget * cycles(INT8)
                                     (weight bytes, BOPs likewise when given), ties, one k per l

    `__call__(problem)` returns the ilp.Assignment; an infeasible budget raises CompileError with
    the smallest feasible fraction. A budget whose INT8 total is 0 (no layer on the accelerator)
    holds for every assignment and is dropped."""

    def __init__(self, latency_budget: float = 0.75, weight_budget: float | None = None,
                 bops_budget: float | None = None):
        self.budgets = {"latency_budget": latency_budget, "weight_budget": weight_budget,
                        "bops_budget": bops_budget}

    def __call__(self, problem: ilp.BitwidthProblem) -> ilp.Assignment:
        totals = {"latency_budget": problem.cycles, "weight_budget": problem.weight_bytes,
                  "bops_budget": problem.bops}
        k8 = problem.choices.index(INT8)
        absolute = {}
        for name, fraction in self.budgets.items():
            int8 = None if fraction is None else float(totals[name][:, k8].sum())
            if int8:  # a zero total (no layer runs on the accelerator) constrains nothing
                absolute[name] = fraction * int8
        try:
            return ilp.solve(problem, cycles_budget=absolute.get("latency_budget"),
                             weight_bytes_budget=absolute.get("weight_budget"),
                             bops_budget=absolute.get("bops_budget"))
        except ilp.InfeasibleBudget as err:
            raise CompileError(self._explain(err, totals, k8)) from None

    def _explain(self, err, totals, k8) -> str:
        names = {"cycles_budget": "latency_budget", "weight_bytes_budget": "weight_budget",
                 "bops_budget": "bops_budget"}
        name = names.get(err.budget)
        if name is None or err.smallest is None:
            return f"mixed precision: the budgets cannot be met together: {err}"
        int8 = float(totals[name][:, k8].sum())
        smallest = err.smallest / int8
        return (f"QuantConfig.{name}={self.budgets[name]:g} cannot be met: the smallest "
                f"feasible is {smallest:.4f} of uniform INT8 ({err.smallest:,.0f} of "
                f"{int8:,.0f}). Raise it to at least {np.ceil(smallest * 1e4) / 1e4:g}.")


def verify_and_cut(problem: ilp.BitwidthProblem,
                   solve: Callable[[ilp.BitwidthProblem], ilp.Assignment],
                   measure: Callable[[dict[str, tuple[int, int]]], float], *,
                   factor: float = CUT_FACTOR,
                   max_rounds: int = MAX_ROUNDS) -> tuple[ilp.Assignment, list[Round]]:
    """Solve, measure the whole choice (`measure(choice)`, the output noise all layers at their
    widths at once add to the INT8 model's) and accept it when

        measured <= factor * predicted,   predicted = sum_l s[l, k_l] (the program's objective)

    else forbid the narrow operand (a layer's weight or input below 8 bits) whose return to
    8 bits lowers the measured noise most, and solve again. Returns the accepted assignment
    (the first within the factor, else the best measured of `max_rounds` programs, or of those
    before a cut left the budgets infeasible) and the rounds."""
    if max_rounds < 1:
        raise ValueError(f"verify_and_cut: max_rounds={max_rounds!r}; use an integer >= 1.")
    allowed = problem.allowed.copy()
    rounds: list[Round] = []
    tried: list[tuple[float, ilp.Assignment]] = []
    for _ in range(max_rounds):
        try:
            assignment = solve(dataclasses.replace(problem, allowed=allowed))
        except CompileError:
            if not tried:
                raise
            break  # the last cut left no feasible assignment
        choice = dict(assignment.choice)
        measured, predicted = float(measure(choice)), float(assignment.sensitivity)
        narrow = [(name, side) for name, (w, a) in choice.items()
                  for side, bits in (("w", w), ("a", a)) if bits < 8]
        tried.append((measured, assignment))
        if measured <= factor * predicted or not narrow:
            rounds.append(Round(predicted, measured, len(narrow), accepted=True))
            return assignment, rounds
        gain = {(name, side): measured - measure({**choice, name: _widened(choice[name], side)})
                for name, side in narrow}
        name, side = max(gain, key=gain.get)
        bits = choice[name][0 if side == "w" else 1]
        rounds.append(Round(predicted, measured, len(narrow), f"{name} {side}{bits}"))
        row = problem.layers.index(name)
        for k, (w, a) in enumerate(problem.choices):
            if (w if side == "w" else a) < 8:
                allowed[row, k] = False
        if not allowed[row].any():
            break
    best = min(range(len(tried)), key=lambda i: tried[i][0])
    rounds[best] = dataclasses.replace(rounds[best], accepted=True)
    return tried[best][1], rounds


def _widened(pair: tuple[int, int], side: str) -> tuple[int, int]:
    return (8, pair[1]) if side == "w" else (pair[0], 8)


def quantizer_roots(layers) -> dict[str, str]:
    """Tensor name -> the tensor whose qparams it uses (through SAME_SCALE_KINDS layers)."""
    producer = {layer.name: layer for layer in layers}
    roots = {}

    def root(name: str) -> str:
        if name not in roots:
            layer = producer.get(name)
            roots[name] = (root(layer.inputs[0]) if layer is not None
                           and layer.kind in SAME_SCALE_KINDS else name)
        return roots[name]

    for layer in layers:
        for name in (*layer.inputs, layer.name):
            root(name)
    return roots


def layer_shape(annotated: tvm.IRModule, layer) -> cost.ConvShape | str:
    """The accelerator view of a conv2d/matmul layer, or why it stays on the host."""
    call = _composite_call(annotated, layer.name)
    root = annotated[call.op].body.blocks[0].bindings[0].value
    x_shape = tuple(int(d) for d in call.args[0].ty.shape)
    w_shape = layer.weight.shape
    if layer.kind == "matmul":
        reason = matmul_rows_reason(x_shape)
        if reason is not None:
            return reason
        return cost.ConvShape(C=w_shape[0], H=1, W=1, O=w_shape[1], KH=1, KW=1)
    if x_shape[0] != 1:
        return f"batch {x_shape[0]}: the accelerator runs batch 1"
    a = root.attrs
    return cost.ConvShape(C=x_shape[1], H=x_shape[2], W=x_shape[3], O=w_shape[0], KH=w_shape[2],
                          KW=w_shape[3], groups=int(a.groups),
                          stride=tuple(int(s) for s in a.strides),
                          padding=tuple(int(p) for p in a.padding),
                          dilation=tuple(int(d) for d in a.dilation))


def _composite_call(annotated, name):
    for block in annotated["main"].body.blocks:
        for b in block.bindings:
            if b.var.name == name:
                return b.value
    raise KeyError(name)


def plan_bitwidths(annotated: tvm.IRModule, layers,
                   sites: Callable[[int], dict[sensitivity.Site, QParams]],
                   samples: list[np.ndarray], config, hw: AccelConfig, *,
                   progress: bool = True) -> MixedPlan:
    """Choose (w_bits, a_bits) per conv2d/matmul layer for `config` (scheme "mixed"): the fixed
    `config.layer_bits`, or the program's optimum under its budgets with costs measured on `hw`
    and sensitivities on `samples`. `sites(bits)`: where the integer model rounds values and
    to which grid, every tensor at that width (tvmq.realize.rounding_sites)."""
    roots = quantizer_roots(layers)
    macs = [layer for layer in layers if layer.kind in MAC_KINDS]
    if config.layer_bits is not None:
        unknown = sorted(set(config.layer_bits) - {layer.name for layer in macs})
        if unknown:
            raise CompileError(f"QuantConfig.layer_bits names {unknown}, which are not conv2d/"
                               f"matmul layers of this model; they are "
                               f"{[layer.name for layer in macs]}.")
        choice = {layer.name: config.layer_bits.get(layer.name, INT8) for layer in macs}
        return MixedPlan(choice, _tensor_bits(macs, choice, roots), roots)
    seconds = {}
    start = time.perf_counter()
    choices = tuple(itertools.product(config.bits, config.bits))  # bits includes 8 (config)
    shapes = {layer.name: layer_shape(annotated, layer) for layer in macs}
    host = {n: s for n, s in shapes.items() if isinstance(s, str)}
    table = np.zeros((len(macs), len(choices)))
    on_accel = [i for i, layer in enumerate(macs) if layer.name not in host]
    if on_accel:
        cache = cost.CostCache()
        measured = cost.measure_table(hw, [shapes[macs[i].name] for i in on_accel], choices,
                                      cache, progress=progress)
        for row, i in zip(measured, on_accel):
            name = macs[i].name
            if np.any(np.isnan(row)):
                k = int(np.flatnonzero(np.isnan(row))[0])
                host[name] = cache.lookup(hw, shapes[name], *choices[k])["refused"]
            else:
                table[i] = row
    seconds["cost"] = time.perf_counter() - start
    start = time.perf_counter()
    probe = sensitivity.Probe(annotated, macs, {b: sites(b) for b in {*config.bits, 8}}, roots,
                              samples, config.bits, per_channel=config.per_channel_weights)
    sens = sensitivity.measure(probe, cache_dir=cache_root() / "sensitivity", progress=progress)
    seconds["sensitivity"] = time.perf_counter() - start
    s = np.stack([sens.pair(w, a) for w, a in choices], axis=1)
    params = np.array([layer.weight.size for layer in macs], np.float64)
    mac_count = np.array([_macs(layer) for layer in macs], np.float64)
    groups: dict[str, list[str]] = {}
    for layer in macs:
        groups.setdefault(roots[layer.inputs[0]], []).append(layer.name)
    problem = ilp.BitwidthProblem(
        layers=tuple(layer.name for layer in macs), choices=choices, sensitivity=s,
        cycles=table,
        weight_bytes=np.outer(params, [w / 8 for w, _ in choices]),
        bops=np.outer(mac_count, [w * a for w, a in choices]),
        ties=tuple(tuple(g) for g in groups.values() if len(g) > 1))
    start = time.perf_counter()
    assignment, rounds = verify_and_cut(
        problem, AssignBitwidths(config.latency_budget, config.weight_budget,
                                 config.bops_budget), probe.added_noise)
    seconds["solve"] = assignment.solve_seconds
    seconds["verify"] = time.perf_counter() - start
    choice = dict(assignment.choice)
    k8 = choices.index(INT8)
    simulated = {"int8": _db(sens.int8), "plan": _db(probe.noise(choice))}
    return MixedPlan(choice, _tensor_bits(macs, choice, roots), roots, problem, assignment,
                     uniform_cycles=float(table[:, k8].sum()),
                     predicted_cycles=float(assignment.cycles), host_layers=host,
                     sensitivity=sens, seconds=seconds, rounds=rounds,
                     simulated_sqnr_db=simulated)


def _db(noise: float) -> float:
    """SQNR in dB of a noise-to-signal ratio (inf for 0)."""
    return float("inf") if noise <= 0 else float(-10.0 * np.log10(noise))


def _macs(layer) -> int:
    """MACs of a conv2d/matmul layer: output elements x (weight elements / output channels)."""
    w = layer.weight
    per_output = w.size // (w.shape[0] if w.ndim == 4 else w.shape[1])
    return int(np.prod(layer.shape)) * per_output


def _tensor_bits(macs, choice, roots) -> dict[str, int]:
    """Activation width per quantizer root read by a conv2d/matmul at a_bits < 8; a tie
    violation (two readers of one quantizer at different widths) raises CompileError."""
    bits: dict[str, tuple[int, str]] = {}
    for layer in macs:
        root, a = roots[layer.inputs[0]], choice[layer.name][1]
        if root in bits and bits[root][0] != a:
            raise CompileError(
                f"layers {bits[root][1]!r} and {layer.name!r} read one activation quantizer "
                f"({root!r}) but ask for a_bits {bits[root][0]} and {a}; give them one width.")
        bits[root] = (a, layer.name)
    return {root: a for root, (a, _) in bits.items() if a != 8}


def cost_device(accel, config) -> AccelConfig:
    """The accelerator whose measured cycles scheme "mixed" budgets: `tvmq.compile(..., accel=)`
    (a preset name or an AccelConfig, default "npu-small"), its C emulator loaded."""
    hw = hardware_for(accel, config)
    load_emulator("scheme='mixed' (costs from the emulator)")
    return hw
