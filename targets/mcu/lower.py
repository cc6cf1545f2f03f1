"""Lower a realized integer module to an MCU program: kernels plus the steps calling them.

`lower_program(quant_mod)` splits `main(x) = dequantize(run(quantize(x)))` at the model's
boundary quantize and dequantize and turns each part into a list of `Step`s over named `Tensor`s.
A model with several outputs has one int8 result of `run` and one dequantize phase per output
(in the model's output order); an output that repeats another's int8 tensor gets a copy of it.

- Kernels are grouped at int8 tensors: every binding between two int8 tensors (the zero-point
  casts and subtracts a layer applies to its inputs, the conv2d/matmul, the bias add, the requant,
  a residual add's input requants) becomes one PrimFunc, so only int8 tensors live between
  kernels. A value used twice or a group with more than one outside use closes a group too.
- `R.reshape` is a view: its step is an alias, it has no kernel and no storage of its own.
- A conv2d/matmul weight whose values all fit in int4 (scheme "mixed" at 4 bits) is stored
  packed, two per byte (`tvmq.numerics.weights.pack_int4`), and unpacked by an index
  computation inlined into the kernel's loads: half the flash, no unpacked copy in RAM.
- Each kernel is scheduled with `fuse_per_output`: elementwise stages inline, a reduction is
  computed at its consumer's innermost loop, so no kernel allocates a workspace the size of a
  tensor (the int32 accumulator of a conv is a scalar per output element).

The kernels stay in TIR; `codegen` turns them into C with TVM's C target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, s_tir, te

from tvmq.ir import op_name, returned_fields, rewrite_functions

from ...errors import CompileError
from ...numerics.weights import pack_int4
from ..host.schedules import inline_single_reads, intermediates


def output_names(count: int) -> list[tuple[str, str]]:
    """(int8, float) tensor names of a program's `count` model outputs: `output_q`/`output` for
    one, `output<i>_q`/`output<i>` for several."""
    if count == 1:
        return [("output_q", "output")]
    return [(f"output{i}_q", f"output{i}") for i in range(count)]


def dequantize_phase(i: int, count: int) -> str:
    """The phase that dequantizes output `i` of `count`: `dequantize`, or `dequantize<i>`."""
    return "dequantize" if count == 1 else f"dequantize{i}"


@dataclass(frozen=True)
class Tensor:
    """A tensor of the program. kind: input (int8 model input), output (int8 model output),
    float_input / float_output (the float boundary), activation, const (`value` set)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    value: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Step:
    """`out = kernel(*args)`; a step with kernel None is a view (`out` aliases `args[0]`)."""

    kernel: str | None
    args: tuple[str, ...]
    out: str


@dataclass
class Program:
    """Kernels (PrimFuncs with a global symbol) and, per phase, the steps that run them.
    Phases in order: quantize, run, then `dequantize_phase(i, n)` for each of the n outputs."""

    kernels: tvm.IRModule
    steps: dict[str, list[Step]]
    tensors: dict[str, Tensor]
    weights: dict[str, int] | None = None  # conv2d/matmul weights: int8_params, int4_params, bytes
    outputs: list[tuple[str, str]] = field(default_factory=list)  # output_names(n)
    _llvm: object = field(default=None, repr=False, compare=False)

    def llvm(self):
        """The kernels built for this CPU with TVM's llvm target (built once)."""
        if self._llvm is None:
            self._llvm = tvm.compile(self.kernels, target="llvm")
        return self._llvm

    @property
    def int_input(self) -> Tensor:
        return next(t for t in self.tensors.values() if t.kind == "input")

    @property
    def int_outputs(self) -> list[Tensor]:
        """The int8 model outputs, in the model's output order."""
        return [self.tensors[q] for q, _ in self.outputs]


def lower_program(quant_mod: tvm.IRModule) -> Program:
    """The MCU program of a realized int8 module (see the module docstring)."""
    split = _split_boundary(quant_mod)
    phases = list(split)
    mod = tvm.IRModule({gv: f for gv, f in quant_mod.functions_items()
                        if isinstance(f, tvm.tirx.PrimFunc)})
    for phase, func in split.items():
        mod[phase] = func
    mod, weights = _pack_int4_weights(mod)
    mod = relax.transform.LegalizeOps({"relax.reshape": _keep})(mod)
    mod = _group_kernels(mod, phases)
    mod = tvm.transform.Sequential([
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(phases),
    ])(mod)
    outputs = output_names(len(returned_fields(quant_mod["main"])))
    boundary = {"quantize": (("float_input", "input"), ["input_q"]),
                "run": (("input", "output"), [q for q, _ in outputs])}
    for i, (q, f) in enumerate(outputs):
        boundary[dequantize_phase(i, len(outputs))] = (("output", "float_output"), [f])
    tensors: dict[str, Tensor] = {}
    steps = {phase: _steps(mod[phase], tensors, *boundary[phase]) for phase in phases}
    used = {s.kernel for phase in steps.values() for s in phase if s.kernel}
    kernels = tvm.IRModule({name: fuse_per_output(mod[name]).with_attr("global_symbol", name)
                            for name in sorted(used)})
    return Program(kernels, steps, tensors, weights, outputs)


def _keep(bb, call):
    """LegalizeOps rule that leaves the call as it is (a reshape stays a view)."""
    return call


# ---------------------------------------------------------------- boundary split


def _split_boundary(mod: tvm.IRModule) -> dict[str, relax.Function]:
    """main -> {quantize: x -> x_q, run: x_q -> y_q, dequantize: y_q -> y}; with several
    outputs, run returns a tuple (one y_q per output) and dequantize<i> computes output i.

    An output's y_q is the int8 tensor its `dequantize` reads; its dequantize phase is that op
    and any float ops after it (a softmax), which may read nothing else. The run phase is what
    the y_q need; a y_q that is the input's or an earlier output's becomes a copy of it.
    """
    main = mod["main"]
    if len(main.params) != 1:
        raise CompileError(f"target 'mcu' needs a model with one input; this one has "
                           f"{len(main.params)}.")
    bindings = [b for block in main.body.blocks for b in block.bindings]
    first = bindings[0]
    if op_name(first.value) != "relax.quantize" or not first.value.args[0].same_as(main.params[0]):
        raise CompileError("target 'mcu': the model's first op must quantize its input (a "
                           "realized int8 model); an LBFP or float-input model is not supported.")
    x, x_q = main.params[0], first.var
    results = returned_fields(main)
    names = output_names(len(results))
    tails = [_output_tail(bindings, result, i) for i, result in enumerate(results)]
    y_qs, copies = [], []
    for (_, y_q), (q, _) in zip(tails, names):
        if y_q.same_as(x_q) or any(y_q.same_as(y) for y in y_qs):
            copy = relax.Var(q, y_q.ty)
            copies.append(relax.VarBinding(
                copy, relax.BlockBuilder().normalize(relax.op.astype(y_q, y_q.ty.dtype))))
            y_q = copy
        y_qs.append(y_q)
    run = _needed(bindings[1:], y_qs)
    reads = {v for b in run for v in relax.analysis.free_vars(b.value)} - {b.var for b in run}
    if reads - {x_q}:
        raise CompileError(f"target 'mcu': the quantized layers read the float input "
                           f"{x.name!r} directly; the program starts from its quantize.")
    split = {"quantize": _phase(x.name, x, [first], [x_q], ["input_q"]),
             "run": _phase("input_q", x_q, run + copies, y_qs, [q for q, _ in names])}
    for i, ((tail, y_q), result, (q, f)) in enumerate(zip(tails, results, names)):
        split[dequantize_phase(i, len(results))] = _phase(q, y_q, tail, [result], [f])
    return split


def _output_tail(bindings, result, i) -> tuple[list[relax.VarBinding], relax.Var]:
    """(The bindings computing output `i` from one int8 tensor y_q, a `dequantize` then float
    ops if any; y_q). Raises CompileError naming the output when there is no such tensor."""
    tail = _needed(bindings, [result], stop=lambda b: op_name(b.value) == "relax.dequantize")
    reads = {v for b in tail for v in relax.analysis.free_vars(b.value)} - {b.var for b in tail}
    y_q = next(iter(reads)) if len(reads) == 1 else None
    if (y_q is None or str(y_q.ty.dtype) != "int8"
            or not any(op_name(b.value) == "relax.dequantize" for b in tail)):
        what = (f"reads {', '.join(sorted(v.name for v in reads))}" if tail else
                "is the model's input or a constant, not a layer's result")
        raise CompileError(
            f"target 'mcu': every output must be computed from one quantized layer's int8 "
            f"result (a dequantize, then float ops if any); output {i} "
            f"({getattr(result, 'name', result)}) {what}.")
    return tail, y_q


def _needed(bindings, results, stop=lambda b: False) -> list[relax.VarBinding]:
    """The bindings `results` depend on, in order; what a binding `stop` accepts reads is not
    followed."""
    needed, out = set(results), []
    for b in reversed(bindings):
        if b.var in needed:
            out.insert(0, b)
            if not stop(b):
                needed |= set(relax.analysis.free_vars(b.value))
    return out


def _phase(param_name, old_input, bindings, results, out_names) -> relax.Function:
    """`fn(param) -> out` (a tuple of outs for several results): `bindings` with `old_input`
    bound to the new parameter, result i bound to `out_names[i]`."""
    param = relax.Var(param_name, old_input.ty)
    outs = [relax.Var(name, result.ty) for name, result in zip(out_names, results)]
    block = relax.DataflowBlock([relax.VarBinding(old_input, param), *bindings,
                                 *map(relax.VarBinding, outs, results)])
    body = outs[0] if len(outs) == 1 else relax.Tuple(outs)
    ret = outs[0].ty if len(outs) == 1 else relax.TupleType([o.ty for o in outs])
    return relax.Function([param], relax.SeqExpr([block], body), ret)


@relax.expr_functor.mutator
class _Substitute(relax.PyExprMutator):
    """Replace vars and constants (by identity) with the mapped expressions."""

    def __init__(self, remap):
        super().__init__()
        self.remap = remap

    def visit_var_(self, var):
        return self.remap.get(var, var)

    def visit_dataflow_var_(self, var):
        return self.remap.get(var, var)

    def visit_generic_const_(self, const):
        for k, v in self.remap.items():
            if k.same_as(const):
                return v
        return const


# ---------------------------------------------------------------- int4 weights

UNPACK_INT4 = "tvmq_unpack_int4"
WEIGHT_OPS = ("relax.nn.conv2d", "relax.matmul")


def _pack_int4_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, int]]:
    """Replace each int8 conv2d/matmul weight constant whose values fit in [-8, 7] with
    `unpack_int4(packed uint8 constant)`; count the weights: {int8_params, int4_params, bytes}.
    """
    counts = {"int8_params": 0, "int4_params": 0, "bytes": 0}

    @relax.expr_functor.mutator
    class _Pack(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if op_name(call) not in WEIGHT_OPS or not isinstance(call.args[1], tvm.ir.GenericConst):
                return call
            w = call.args[1].value.numpy()
            if w.dtype != np.int8:
                return call
            if w.min() < -8 or w.max() > 7:
                counts["int8_params"] += w.size
                counts["bytes"] += w.size
                return call
            counts["int4_params"] += w.size
            counts["bytes"] += (w.size + 1) // 2
            packed = relax.const(pack_int4(w), "uint8")
            unpacked = self.builder_.call_te(_unpack_te, packed, w.shape,
                                             primfunc_name_hint=UNPACK_INT4)
            return relax.Call(call.op, [call.args[0], unpacked, *call.args[2:]], call.attrs)

    return rewrite_functions(mod, _Pack), counts


def _unpack_te(packed, shape):
    """int8 tensor of `shape` from pack_int4 bytes: element k (C order) is nibble k % 2 of
    byte k // 2, sign-extended."""
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]

    def value(*idx):
        flat = sum(i * s for i, s in zip(idx, strides))
        byte = packed[flat // 2].astype("int32")
        nibble = (byte >> ((flat % 2) * 4).astype("int32")) & 15
        return ((nibble ^ 8) - 8).astype("int8")

    return te.compute(shape, value, name="unpack_int4")


def _is_view(value) -> bool:
    """A reshape or a plain alias: no kernel, the output shares its input's storage."""
    return op_name(value) == "relax.reshape" or isinstance(value, relax.Var)


def _is_unpack(value) -> bool:
    return (op_name(value) == "relax.call_tir"
            and value.args[0].name_hint.startswith(UNPACK_INT4))


# ---------------------------------------------------------------- kernel groups


def _group_kernels(mod: tvm.IRModule, phases: list[str]) -> tvm.IRModule:
    """Wrap each group of bindings of every phase in a Primitive function (FuseTIR's input)."""
    bb = relax.BlockBuilder(tvm.IRModule({gv: f for gv, f in mod.functions_items()
                                          if gv.name_hint not in phases}))
    for phase in phases:
        func = mod[phase]
        bindings = [b for block in func.body.blocks for b in block.bindings]
        results = returned_fields(func)
        params = [relax.Var(p.name, p.ty) for p in func.params]
        remap = dict(zip(func.params, params))
        with bb.function(phase, params, attrs={"global_symbol": phase}):
            with bb.dataflow():
                for group in _groups(bindings, results):
                    last = any(group[-1].var.same_as(r) for r in results)
                    remap[group[-1].var] = _emit_group(bb, group, remap, phase, last)
            outs = [remap[r] for r in results]
            bb.emit_func_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
    return bb.get()


def _groups(bindings, results) -> list[list[relax.VarBinding]]:
    """Consecutive runs of bindings ending at an int8 tensor, a value used more than once, a
    reshape, or a result; singletons where a run would have more than one outside use."""
    uses: dict[relax.Var, int] = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses[v] = uses.get(v, 0) + 1
    for result in results:
        uses[result] = uses.get(result, 0) + 1
    groups, current = [], []
    for b in bindings:
        if _is_view(b.value):
            if current:
                groups.append(current)
            groups.append([b])
            current = []
            continue
        current.append(b)
        if _is_unpack(b.value):  # part of the layer that reads the weight
            continue
        if str(b.var.ty.dtype) == "int8" or uses.get(b.var, 0) != 1 or b.var in results:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    out = []
    for group in groups:
        members = {b.var for b in group}
        inner = {v for b in group for v in relax.analysis.free_vars(b.value)} & members
        outside = [v for v in members if v not in inner or uses.get(v, 0) > 1]
        out.extend([group] if len(outside) == 1 and outside[0].same_as(group[-1].var)
                   else [[b] for b in group])
    return out


def _emit_group(bb, group, remap, phase, is_result):
    """Emit one group: a view as itself, anything else as a call of a Primitive function whose
    parameters are the group's outside tensors and constants."""
    if len(group) == 1 and _is_view(group[0].value):
        value = _Substitute(remap).visit_expr(group[0].value)
        return (bb.emit_output if is_result else bb.emit)(value, group[0].var.name)
    members = {b.var for b in group}
    inputs: list[relax.Expr] = []
    for b in group:
        for arg in _leaves(b.value):
            if ((isinstance(arg, relax.Var) and arg not in members)
                    or isinstance(arg, tvm.ir.GenericConst)):
                if not any(arg.same_as(i) for i in inputs):
                    inputs.append(arg)
    params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(inputs)]
    inner = relax.BlockBuilder()
    local = {a: p for a, p in zip(inputs, params)}
    with inner.function("group", params, attrs={"Primitive": True}, private=True):
        with inner.dataflow():
            for b in group:
                value = _Substitute(local).visit_expr(b.value)
                local[b.var] = inner.emit(value, b.var.name)
            out = inner.emit_output(local[group[-1].var])
        inner.emit_func_output(out)
    gv = bb.add_func(inner.get()["group"], f"{phase}_{group[-1].var.name}")
    args = [remap.get(a, a) if isinstance(a, relax.Var) else a for a in inputs]
    return (bb.emit_output if is_result else bb.emit)(relax.Call(gv, args), group[-1].var.name)


def _leaves(expr):
    """Vars and constants an op call reads (through call_tir's argument tuple)."""
    if isinstance(expr, relax.Tuple):
        for f in expr.fields:
            yield from _leaves(f)
    elif isinstance(expr, relax.Call):
        for a in expr.args:
            yield from _leaves(a)
    elif isinstance(expr, relax.Var | tvm.ir.GenericConst):
        yield expr


# ---------------------------------------------------------------- steps


def _steps(func: relax.Function, tensors: dict[str, Tensor], kinds: tuple[str, str],
           result_names: list[str]) -> list[Step]:
    """The call_tir / reshape bindings of a lowered phase as Steps; registers every tensor.
    `kinds` are the (parameter, result) tensor kinds; result i is named `result_names[i]`."""
    param_kind, result_kind = kinds
    names = {p: _register(tensors, p.name, p, param_kind) for p in func.params}
    results = returned_fields(func)
    steps = []
    bindings = [b for block in func.body.blocks for b in block.bindings]
    for b in bindings:
        value = b.value
        kind, name = "activation", _c_name(b.var.name)
        index = next((i for i, r in enumerate(results) if b.var.same_as(r)), None)
        if index is not None:
            kind, name = result_kind, result_names[index]
        if op_name(value) == "relax.call_tir":
            kernel = value.args[0].name_hint
            args = [_arg_name(a, tensors, names) for a in value.args[1].fields]
        elif _is_view(value):
            kernel = None
            args = [names[value.args[0] if isinstance(value, relax.Call) else value]]
        else:
            raise CompileError(f"target 'mcu': binding {b.var.name} ({op_name(value)}) has no "
                               "kernel after lowering.")
        names[b.var] = _register(tensors, name, b.var, kind)
        steps.append(Step(kernel, tuple(args), names[b.var]))
    return steps


def _register(tensors, name, var, kind) -> str:
    name = _unique(tensors, name, kind)
    if name not in tensors:
        tensors[name] = Tensor(name, tuple(int(d) for d in var.ty.shape), str(var.ty.dtype),
                               kind)
    return name


def _unique(tensors, name, kind) -> str:
    if name in tensors and tensors[name].kind == kind and kind != "activation":
        return name  # the boundary tensor shared by two phases
    base, i = name, 1
    while name in tensors:
        name, i = f"{base}_{i}", i + 1
    return name


def _arg_name(arg, tensors, names) -> str:
    if isinstance(arg, relax.Var):
        return names[arg]
    value = arg.value.numpy()
    for t in tensors.values():  # identical constants share one table
        if t.kind == "const" and t.dtype == str(value.dtype) and t.shape == value.shape \
                and np.array_equal(t.value, value):
            return t.name
    name = f"c{sum(t.kind == 'const' for t in tensors.values())}"
    tensors[name] = Tensor(name, value.shape, str(value.dtype), "const", value)
    return name


def _c_name(name: str) -> str:
    return re.sub(r"\W", "_", name)


# ---------------------------------------------------------------- schedule


def fuse_per_output(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Inline every intermediate stage read once per consumer element; compute the others (a
    conv's reduction, a requant's first stage) at their consumer's innermost loop, so after
    lowering they are scalars instead of whole-tensor workspaces."""
    sch = s_tir.Schedule(tvm.IRModule({"f": func}))
    sch.work_on("f")
    root = sch.get_sblock("root")
    inline_single_reads(sch, root)
    for block in reversed(intermediates(sch, root)):
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            continue
        for loop in reversed(sch.get_loops(consumers[0])):
            try:
                sch.compute_at(block, loop, preserve_unit_loops=False)
                break
            except s_tir.ScheduleError:
                continue
    for block in sch.get_child_blocks(root) + _nested(sch, root):
        if sch.get(block).init is None:
            continue
        for loop in reversed(sch.get_loops(block)):  # the outermost reduction loop succeeds
            try:
                sch.decompose_reduction(block, loop)
                break
            except s_tir.ScheduleError:
                continue
    return sch.mod["f"]


def _nested(sch, root):
    """Blocks moved under another block's loops by compute_at (not children of root)."""
    out = []
    for child in sch.get_child_blocks(root):
        for loop in sch.get_loops(child):
            out += [b for b in sch.get_child_blocks(loop) if not any(
                sch.get(b).same_as(sch.get(c)) for c in sch.get_child_blocks(root))]
    return out


# ---------------------------------------------------------------- reference run


def run_program(program: Program, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the program's kernels built with TVM's llvm target, step by step, on one float input;
    return every tensor by name. The reference the generated C is compared with (a C build
    with TVMQ_TRACE shows the same tensors)."""
    ex = program.llvm()
    values = {program.steps["quantize"][0].args[0]: np.asarray(x, np.float32)}
    for steps in program.steps.values():
        for step in steps:
            out = program.tensors[step.out]
            if step.kernel is None:
                values[step.out] = values[step.args[0]].reshape(out.shape)
                continue
            args = [tvm.runtime.tensor(program.tensors[a].value if program.tensors[a].kind
                                       == "const" else values[a]) for a in step.args]
            result = tvm.runtime.tensor(np.zeros(out.shape, out.dtype))
            ex[step.kernel](*args, result)
            values[step.out] = result.numpy()
    return values
