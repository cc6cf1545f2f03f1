"""Split a realized int8 model's `main` at its boundary quantize and dequantizes into the
program's phases.

``main(x) = dequantize(run(quantize(x)))``: `split_phases` returns ``quantize: x -> x_q``,
``run: x_q -> y_q`` (a tuple with several outputs) and one ``dequantize<i>: y_q -> y`` per
output (the output's `dequantize` and any float ops after it, e.g. a softmax). A model the MCU
target cannot split (several inputs, a float op before the first quantize, an output not
computed from one int8 tensor) raises CompileError saying why. An output whose int8 tensor is
the input's or an earlier output's gets a copy of it in `run`.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvmq.ir import op_name, returned_fields

from ...errors import CompileError
from .program import dequantize_phase, output_names


def split_phases(mod: tvm.IRModule) -> dict[str, relax.Function]:
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
