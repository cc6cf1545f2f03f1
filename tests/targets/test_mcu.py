"""Target "mcu": lowering, memory plan, generated C on the host and on qemu's Cortex-M4.

Everything is compared bit for bit: the lowered kernels step by step against the host build's
taps, the exported C (host gcc) against the host build and the NumPy oracle, the Cortex-M4 image
under qemu against the host C. Tests needing gcc, arm-none-eabi-gcc or qemu skip with a reason.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import helper
from tvmq.passes.insert_taps import InsertTaps
from tvmq.targets.host import build
from tvmq.targets.mcu import build_host, build_m4, m4_sizes, run_host, run_qemu
from tvmq.targets.mcu.codegen import kernel_source
from tvmq.targets.mcu.memory import plan_memory
from tvmq.targets.mcu.program import Program, Step, Tensor
from tvmq.targets.mcu.reference import run_program

import tvmq
from tests.conftest import make_onnx, needs_cc, needs_m4
from tvmq import data

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def digits_mcu(digits):
    x_calib, x_test, _ = digits
    cm = tvmq.compile(data.digits_model_path(), target="mcu", calib=x_calib[:32], progress=False)
    return cm, x_test


@pytest.fixture(scope="module")
def digits_project(digits_mcu, tmp_path_factory):
    cm, x_test = digits_mcu
    return cm.export(tmp_path_factory.mktemp("mcu") / "digits", samples=x_test[:3])


# ---------------------------------------------------------------- memory plan


def _program(tensors, steps) -> Program:
    return Program(None, {"quantize": [], "run": steps, "dequantize": []},
                   {t.name: t for t in tensors})


def _act(name, n, kind="activation"):
    return Tensor(name, (n,), "int8", kind)


def _overlaps(plan, program, a, b) -> bool:
    sa, sb = program.tensors[a].nbytes, program.tensors[b].nbytes
    oa, ob = plan.offsets[a], plan.offsets[b]
    return oa < ob + sb and ob < oa + sa


def test_memory_plan_chain_reuses_the_arena():
    ts = [_act("in", 64, "input"), _act("a", 1024), _act("b", 2048), _act("c", 1024),
          _act("d", 512), _act("out", 10, "output")]
    steps = [Step("k", ("in",), "a"), Step("k", ("a",), "b"), Step("k", ("b",), "c"),
             Step("k", ("c",), "d"), Step("k", ("d",), "out")]
    program = _program(ts, steps)
    plan = plan_memory(program)
    assert plan.arena_bytes == plan.peak_live == 3072  # b and c, or a and b, at once
    assert plan.total_bytes == 1024 + 2048 + 1024 + 512
    assert not _overlaps(plan, program, "a", "b") and not _overlaps(plan, program, "b", "c")
    assert "in" not in plan.offsets and "out" not in plan.offsets  # the caller's buffers


def test_memory_plan_keeps_a_skip_connection_and_a_view_apart():
    ts = [_act("in", 16, "input"), _act("skip", 256), _act("a", 256), _act("b", 256),
          _act("view", 256), _act("sum", 256), _act("out", 16, "output")]
    steps = [Step("k", ("in",), "skip"), Step("k", ("skip",), "a"), Step(None, ("a",), "view"),
             Step("k", ("view",), "b"), Step("k", ("b", "skip"), "sum"),
             Step("k", ("sum",), "out")]
    program = _program(ts, steps)
    plan = plan_memory(program)
    assert plan.offsets["view"] == plan.offsets["a"]  # a view has no storage of its own
    assert plan.lives["a"] == (1, 3)  # ... and keeps its source alive
    for x, y in [("skip", "a"), ("skip", "b"), ("a", "b"), ("b", "sum"), ("skip", "sum")]:
        assert not _overlaps(plan, program, x, y), (x, y)
    assert plan.arena_bytes == plan.peak_live == 768


# ---------------------------------------------------------------- lowering


def test_kernels_meet_at_int8_tensors_and_need_no_workspace(digits_mcu):
    cm, _ = digits_mcu
    program = cm.mcu.program
    run = program.steps["run"]
    assert all(program.tensors[s.out].dtype == "int8" for s in run)
    assert sum(s.kernel is None for s in run) == 1  # the reshape before the matmul is a view
    outs = [s.out for s in run]
    layers = [f"{row.name}_q" for row in cm.report().layers]
    assert outs[-1] == "output_q" and set(layers[:-1]) <= set(outs)  # a step per layer, and
    assert len(outs) == len(layers) + 1  # one to rescale the concat's second input
    assert cm.mcu.workspace_bytes == 0  # the accumulators live in registers, not in a buffer
    assert cm.report().mcu["arena_bytes"] == cm.mcu.plan.peak_live


def test_lowered_steps_equal_the_host_build_tensor_by_tensor(digits_mcu):
    cm, x_test = digits_mcu
    program = cm.mcu.program
    names = [s.out for s in program.steps["run"][:-1]]
    tapped = build(InsertTaps(names)(cm.quant_mod))
    for x in x_test[:3]:
        values = run_program(program, x[None])
        out, *taps = tapped.run(x[None])
        np.testing.assert_array_equal(values["output"], out)
        for name, tap in zip(names, taps):
            np.testing.assert_array_equal(values[name], tap, err_msg=name)


def test_float_immediates_are_exact_in_c(digits_mcu):
    cm, _ = digits_mcu
    scale = cm.act_qparams["matmul_11"].scale  # the output dequantize's scale
    bits = int(np.float32(scale).view(np.uint32))
    source = kernel_source(cm.mcu.program)
    assert f"(uint32_t){bits}" in source
    assert not any(f"{np.float32(scale):.6e}" in line for line in source.splitlines())


# ---------------------------------------------------------------- bad input


def _conv(name, x, y, w, **kw):
    return helper.make_node("Conv", [x, w], [y], name=name, **kw)


def _sigmoid_model():
    w = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    return make_onnx([_conv("a", "input", "a", "wa", pads=[1, 1, 1, 1]),
                      helper.make_node("Sigmoid", ["a"], ["s"]),
                      _conv("b", "s", "output", "wb", pads=[1, 1, 1, 1])],
                     {"wa": w, "wb": RNG.normal(size=(2, 3, 3, 3))}, [1, 2, 6, 6],
                     [1, 2, 6, 6])


def test_float_ops_are_refused_by_name_unless_allowed():
    model, calib = _sigmoid_model(), RNG.normal(size=(8, 2, 6, 6)).astype(np.float32)
    with pytest.raises(tvmq.CompileError, match=r"sigmoid.*allow_float=True"):
        tvmq.compile(model, target="mcu", calib=calib, progress=False)
    cm = tvmq.compile(model, target="mcu", calib=calib, progress=False,
                      mcu=tvmq.McuConfig(allow_float=True))
    values = run_program(cm.mcu.program, calib[:1])
    np.testing.assert_array_equal(values["output"], cm.run(calib[:1]))


def test_memory_limits_fail_the_compile_with_the_numbers(digits):
    x_calib = digits[0][:8]
    with pytest.raises(tvmq.CompileError, match=r"3,072 B of RAM.*ram_bytes is 2,000"):
        tvmq.compile(data.digits_model_path(), target="mcu", calib=x_calib, progress=False,
                     mcu=tvmq.McuConfig(ram_bytes=2000))
    with pytest.raises(tvmq.CompileError,
                       match=r"constant tables need [\d,]+ B of flash.*flash_bytes is 1,000"):
        tvmq.compile(data.digits_model_path(), target="mcu", calib=x_calib, progress=False,
                     mcu=tvmq.McuConfig(flash_bytes=1000))


@pytest.mark.parametrize("kwargs", [{"ram_bytes": 0}, {"flash_bytes": -1}, {"ram_bytes": 1.5},
                                    {"allow_float": "yes"}])
def test_mcu_config_validates(kwargs):
    with pytest.raises(ValueError, match=f"McuConfig.{next(iter(kwargs))}"):
        tvmq.McuConfig(**kwargs)


def test_lbfp_and_wrong_config_type_are_refused(digits):
    with pytest.raises(tvmq.CompileError, match="int8, mixed"):
        tvmq.compile(data.digits_model_path(), target="mcu", calib=digits[0][:4],
                     config=tvmq.QuantConfig(scheme="lbfp8"), progress=False)
    with pytest.raises(TypeError, match="McuConfig"):
        tvmq.compile(data.digits_model_path(), target="mcu", calib=digits[0][:4],
                     mcu={"ram_bytes": 1}, progress=False)


# ---------------------------------------------------------------- generated C


@needs_cc
def test_exported_c_on_the_host_equals_host_build_and_oracle(digits_mcu, digits_project):
    cm, x_test = digits_mcu
    build_host(digits_project)
    got = run_host(digits_project, x_test[:40])
    oracle = cm.oracle()
    assert len(got) == 40
    for x, (q, y) in zip(x_test[:40], got):
        values = run_program(cm.mcu.program, x[None])
        np.testing.assert_array_equal(q, values["output_q"].reshape(-1))
        np.testing.assert_array_equal(y, cm.run(x[None]).reshape(-1))
        np.testing.assert_array_equal(y, oracle.run(x[None]).reshape(-1))


@needs_cc
def test_a_model_ending_in_a_view_writes_the_callers_buffer(tmp_path):
    model = make_onnx([_conv("a", "input", "a", "w", pads=[1, 1, 1, 1], strides=[2, 2]),
                       helper.make_node("Flatten", ["a"], ["output"], axis=1)],
                      {"w": RNG.normal(size=(3, 2, 3, 3))}, [1, 2, 6, 6], [1, 27])
    calib = RNG.normal(size=(8, 2, 6, 6)).astype(np.float32)
    cm = tvmq.compile(model, target="mcu", calib=calib, progress=False)
    assert cm.mcu.program.steps["run"][-1].kernel is None
    project = cm.export(tmp_path / "view")
    build_host(project)
    for x, (_, y) in zip(calib, run_host(project, calib)):
        np.testing.assert_array_equal(y, cm.run(x[None]).reshape(-1))


@needs_cc
def test_export_writes_a_project_whose_makefile_builds(digits_project):
    names = {p.name for p in digits_project.iterdir()}
    assert {"model.c", "model.h", "kernels.c", "tvmq_shim.c", "main.c", "Makefile",
            "startup_m4.c", "mps2_an386.ld", "test_input.h", "include", "report.json",
            "memory_plan.txt"} <= names
    plan = (digits_project / "memory_plan.txt").read_text()
    assert plan.startswith("arena 3,072 B") and "conv2d_2_q" in plan
    assert "model.so" not in names
    assert "int tvmq_model_run(const int8_t* in, int8_t* out);" in (
        digits_project / "model.h").read_text()
    r = subprocess.run(["make", "-B", "host"], cwd=digits_project, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    lines = subprocess.run(["./model_host"], cwd=digits_project, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("out ") for line in lines)


@needs_cc
@needs_m4
def test_cortex_m4_on_qemu_prints_the_same_bytes(digits_mcu, digits_project):
    cm, x_test = digits_mcu
    build_host(digits_project)
    host = run_host(digits_project, x_test[:3])
    elf = build_m4(digits_project)
    m4, instructions = run_qemu(digits_project)
    assert len(m4) == 3
    for (qa, ya), (qb, yb) in zip(m4, host):
        np.testing.assert_array_equal(qa, qb)
        np.testing.assert_array_equal(ya.view(np.uint32), yb.view(np.uint32))
    assert len(instructions) == 3 and min(instructions) > 100_000  # ~350k MACs
    assert max(instructions) - min(instructions) < 0.01 * min(instructions)
    sizes = m4_sizes(elf)
    assert sizes["rodata"] >= cm.mcu.const_bytes  # weights are const tables in flash
    assert sizes["bss"] >= cm.mcu.plan.arena_bytes  # the arena is static RAM


@needs_m4
def test_instruction_count_is_calibrated(tmp_path):
    """A 2-instruction loop of n iterations reads 2n (+-40: one SysTick period of 40 ns at
    qemu -icount shift=0, one instruction per ns)."""
    from tvmq.targets.mcu import codegen

    runtime = Path(codegen.__file__).parent / "runtime"
    for name in ("startup_m4.c", "mps2_an386.ld"):
        shutil.copy(runtime / name, tmp_path / name)
    main = (runtime / "main.c").read_text()
    start = main.index("#ifdef TVMQ_SEMIHOSTING")
    harness = main[start:main.index("int main(void)", start)]
    (tmp_path / "loop.c").write_text(
        "#include <stdint.h>\n#include <string.h>\nstatic char line[64];\n"
        + harness.replace("#ifdef TVMQ_SEMIHOSTING", "") + """
int main(void) {
  SYST_RVR = 0xFFFFFF; SYST_CVR = 0; SYST_CSR = 0x7;
  while (SYST_CVR == 0) {}
  for (uint32_t k = 1; k <= 3; ++k) {
    uint32_t n = 1000000u * k;
    uint64_t t0 = ticks();
    __asm__ volatile("1: subs %0, %0, #1\\n bne 1b" : "+r"(n) :: "cc");
    uint64_t t1 = ticks();
    char* p = line;
    memcpy(p, "instructions ", 13);
    p = put_uint(p + 13, (t1 - t0) * TVMQ_TICK_NS); *p++ = '\\n'; *p = 0;
    semihost(0x04, line);
  }
  return 0;
}
""")
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard",
                    "-mfpu=fpv4-sp-d16", "-O2", "-T", "mps2_an386.ld", "-nostartfiles",
                    "--specs=nano.specs", "--specs=nosys.specs", "-o", "model.elf", "loop.c",
                    "startup_m4.c"], cwd=tmp_path, check=True)
    _, counts = run_qemu(tmp_path)
    for k, count in enumerate(counts, 1):
        assert abs(count - 2_000_000 * k) <= 40, counts


@needs_cc
def test_int4_weights_are_stored_two_per_byte_and_stay_exact(digits, tmp_path):
    x_calib, x_test, _ = digits
    bits = {"conv2d_0": (4, 8), "conv2d_4": (4, 8), "matmul_11": (4, 8)}
    cm = tvmq.compile(data.digits_model_path(), target="mcu", calib=x_calib[:32],
                      config=tvmq.QuantConfig(scheme="mixed", layer_bits=bits), progress=False)
    program = cm.mcu.program
    packed = sorted(t.nbytes for t in program.tensors.values() if t.dtype == "uint8")
    assert packed == sorted([144 // 2, 640 // 2, 9216 // 2, 288 // 2])  # + the avg pool's ones
    w = program.weights
    assert w["int4_params"] == 144 + 9216 + 640 + 288
    assert w["bytes"] == w["int8_params"] + w["int4_params"] // 2
    assert cm.mcu.workspace_bytes == 0  # unpacking is inlined into the kernels' loads
    project = cm.export(tmp_path / "w4", samples=x_test[:2])
    build_host(project)
    for x, (_, y) in zip(x_test[:20], run_host(project, x_test[:20])):
        np.testing.assert_array_equal(y, cm.run(x[None]).reshape(-1))


def test_export_refuses_samples_of_the_wrong_shape(digits_mcu, tmp_path):
    cm, _ = digits_mcu
    with pytest.raises(ValueError, match=r"use \(N, 1, 8, 8\)"):
        cm.export(tmp_path / "bad", samples=np.zeros((2, 64), np.float32))
    assert not (tmp_path / "bad").exists()


@needs_cc
def test_workspace_shim_is_a_stack_in_the_arena_and_refuses_overflow(tmp_path):
    from tvmq.targets.mcu import codegen

    shutil.copy(Path(codegen.__file__).parent / "runtime" / "tvmq_shim.c", tmp_path)
    (tmp_path / "model.h").write_text(
        "#include <stdint.h>\n#define TVMQ_ACTIVATION_BYTES 32\n#define TVMQ_WORKSPACE_BYTES 64\n"
        "#define TVMQ_ARENA_BYTES (32 + 64 + 16)\nextern uint8_t tvmq_arena[TVMQ_ARENA_BYTES];\n")
    (tmp_path / "t.c").write_text("""
#include <stdio.h>
#include "model.h"
uint8_t tvmq_arena[TVMQ_ARENA_BYTES];
void* TVMBackendAllocWorkspace(int, int, uint64_t, int, int);
int TVMBackendFreeWorkspace(int, int, void*);
int main(void) {
  uint8_t* a = TVMBackendAllocWorkspace(1, 0, 20, 0, 8);
  uint8_t* b = TVMBackendAllocWorkspace(1, 0, 40, 0, 8);   /* 32 + 40 > 64: refused */
  uint8_t* c = TVMBackendAllocWorkspace(1, 0, 10, 0, 8);
  int freed = TVMBackendFreeWorkspace(1, 0, c) | TVMBackendFreeWorkspace(1, 0, a);
  uint8_t* d = TVMBackendAllocWorkspace(1, 0, 64, 0, 8);   /* all of it again after the frees */
  printf("%d %d %d %d %d %d\\n", (int)(a - tvmq_arena), b == NULL, (int)(c - tvmq_arena), freed,
         (int)(d - tvmq_arena), TVMBackendFreeWorkspace(1, 0, tvmq_arena));
  return 0;
}
""")
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-I.", "-o", "t", "t.c",
                    "tvmq_shim.c"], cwd=tmp_path, check=True)
    out = subprocess.run(["./t"], cwd=tmp_path, capture_output=True, text=True).stdout.split()
    base = int(out[0])
    assert 32 <= base < 48  # after the activations, at the next 16-byte boundary
    assert out[1:] == ["1", str(base + 32), "0", str(base), "-1"]
