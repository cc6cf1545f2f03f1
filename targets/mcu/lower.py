"""Lower a realized integer module to an MCU program: kernels plus the steps calling them.

`lower_program(quant_mod)` splits `main(x) = dequantize(run(quantize(x)))` at the model's
boundary quantize and dequantize and turns each part into a list of `Step`s over named `Tensor`s:

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

from ...errors import CompileError
from ...numerics.weights import pack_int4
from ...passes._util import op_name, rewrite_functions
from ..host.schedules import inline_single_reads, intermediates

PHASES = ("quantize", "run", "dequantize")


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
    """Kernels (PrimFuncs with a global symbol) and, per phase, the steps that run them."""

    kernels: tvm.IRModule
    steps: dict[str, list[Step]]
    tensors: dict[str, Tensor]
    weights: dict[str, int] | None = None  # conv2d/matmul weights: int8_params, int4_params, bytes
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
    def int_output(self) -> Tensor:
        return next(t for t in self.tensors.values() if t.kind == "output")


def lower_program(quant_mod: tvm.IRModule) -> Program:
    """The MCU program of a realized int8 module (see the module docstring)."""
    split = _split_boundary(quant_mod)
    mod = tvm.IRModule({gv: f for gv, f in quant_mod.functions_items()
                        if isinstance(f, tvm.tirx.PrimFunc)})
    for phase, func in split.items():
        mod[phase] = func
    mod, weights = _pack_int4_weights(mod)
    mod = relax.transform.LegalizeOps({"relax.reshape": _keep})(mod)
    mod = _group_kernels(mod)
    mod = tvm.transform.Sequential([
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(list(PHASES)),
    ])(mod)
    tensors: dict[str, Tensor] = {}
    steps = {phase: _steps(mod[phase], tensors) for phase in PHASES}
    used = {s.kernel for phase in steps.values() for s in phase if s.kernel}
    kernels = tvm.IRModule({name: fuse_per_output(mod[name]).with_attr("global_symbol", name)
                            for name in sorted(used)})
    return Program(kernels, steps, tensors, weights)


def _keep(bb, call):
    """LegalizeOps rule that leaves the call as it is (a reshape stays a view)."""
    return call


# ---------------------------------------------------------------- boundary split


def _split_boundary(mod: tvm.IRModule) -> dict[str, relax.Function]:
    """main -> {quantize: x -> x_q, run: x_q -> y_q, dequantize: y_q -> y}.

    y_q is the int8 tensor read by the last `dequantize`; the dequantize phase is that op and
    any float ops after it (a softmax), which may read nothing else.
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
    cut = max((i for i, b in enumerate(bindings) if op_name(b.value) == "relax.dequantize"),
              default=None)
    result = main.body.body
    tail = bindings[cut:] if cut is not None else []
    defined = {b.var for b in tail}
    y_q = tail[0].value.args[0] if tail else None
    reads = {v for b in tail for v in relax.analysis.free_vars(b.value)} - defined
    if not tail or reads != {y_q} or not isinstance(result, relax.Var) or result not in defined:
        raise CompileError("target 'mcu' needs one output computed from the last quantized "
                           "layer's int8 result (a dequantize, then float ops if any); this "
                           "model returns a tuple or reads other tensors after it.")
    x, x_q = main.params[0], first.var
    return {"quantize": _phase(x.name, x, [first], x_q, "input_q"),
            "run": _phase("input_q", x_q, bindings[1:cut], y_q, "output_q"),
            "dequantize": _phase("output_q", y_q, tail, result, "output")}


def _phase(param_name, old_input, bindings, result, out_name) -> relax.Function:
    """`fn(param) -> out`: `bindings` with `old_input` bound to the new parameter."""
    param = relax.Var(param_name, old_input.ty)
    out = relax.Var(out_name, result.ty)
    block = relax.DataflowBlock([relax.VarBinding(old_input, param), *bindings,
                                 relax.VarBinding(out, result)])
    return relax.Function([param], relax.SeqExpr([block], out), out.ty)


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


def _group_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """Wrap each group of bindings of every phase in a Primitive function (FuseTIR's input)."""
    bb = relax.BlockBuilder(tvm.IRModule({gv: f for gv, f in mod.functions_items()
                                          if gv.name_hint not in PHASES}))
    for phase in PHASES:
        func = mod[phase]
        bindings = [b for block in func.body.blocks for b in block.bindings]
        params = [relax.Var(p.name, p.ty) for p in func.params]
        remap = dict(zip(func.params, params))
        with bb.function(phase, params, attrs={"global_symbol": phase}):
            with bb.dataflow():
                for group in _groups(bindings, func.body.body):
                    last = group[-1].var.same_as(func.body.body)
                    remap[group[-1].var] = _emit_group(bb, group, remap, phase, last)
            bb.emit_func_output(remap[func.body.body])
    return bb.get()


def _groups(bindings, result) -> list[list[relax.VarBinding]]:
    """Consecutive runs of bindings ending at an int8 tensor, a value used more than once, a
    reshape, or the result; singletons where a run would have more than one outside use."""
    uses: dict[relax.Var, int] = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses[v] = uses.get(v, 0) + 1
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
        if str(b.var.ty.dtype) == "int8" or uses.get(b.var, 0) != 1 or b.var.same_as(result):
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


def _steps(func: relax.Function, tensors: dict[str, Tensor]) -> list[Step]:
    """The call_tir / reshape bindings of a lowered phase as Steps; registers every tensor."""
    names: dict[relax.Var, str] = {}
    phase = func.attrs["global_symbol"]
    for p in func.params:
        kind = {"quantize": "float_input", "run": "input", "dequantize": "output"}[phase]
        names[p] = _register(tensors, p.name if phase != "run" else "input_q", p, kind)
    steps = []
    bindings = [b for block in func.body.blocks for b in block.bindings]
    result = func.body.body
    for b in bindings:
        value = b.value
        kind = "activation"
        if b.var.same_as(result):
            kind = {"quantize": "input", "run": "output", "dequantize": "float_output"}[phase]
        if op_name(value) == "relax.call_tir":
            kernel = value.args[0].name_hint
            args = [_arg_name(a, tensors, names) for a in value.args[1].fields]
        elif _is_view(value):
            kernel = None
            args = [names[value.args[0] if isinstance(value, relax.Call) else value]]
        else:
            raise CompileError(f"target 'mcu': binding {b.var.name} ({op_name(value)}) has no "
                               "kernel after lowering.")
        names[b.var] = _register(tensors, _out_name(b, phase, kind), b.var, kind)
        steps.append(Step(kernel, tuple(args), names[b.var]))
    return steps


def _out_name(binding, phase, kind) -> str:
    if kind in ("input", "output", "float_output"):
        return {"input": "input_q", "output": "output_q", "float_output": "output"}[kind]
    return _c_name(binding.var.name)


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
    for phase in PHASES:
        for step in program.steps[phase]:
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
