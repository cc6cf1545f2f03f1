"""The accel hardware size model (targets/accel/area.py): hand-checked totals and its API."""

import math

import pytest
from tvmq.targets.accel.area import (
    KINDS,
    UNIT_AREAS,
    area_table,
    format_area_table,
    pe_array_area,
    requant_area,
)

MUX = UNIT_AREAS["mux2"].value
NAND = UNIT_AREAS["nand2"].value
DFF = UNIT_AREAS["dff"].value
BIT = UNIT_AREAS["add_per_bit"].value  # a w-bit add or compare is w * BIT
LZC = UNIT_AREAS["lzc_per_bit"].value
M32 = UNIT_AREAS["int_mult32"].value
FPM = UNIT_AREAS["fp32_mult"].value


def test_constants_are_the_cited_numbers_and_every_one_has_a_source():
    assert {name: u.value for name, u in UNIT_AREAS.items()} == pytest.approx({
        "int_add32": 137.0, "int_mult8": 282.0, "int_mult32": 3495.0, "fp32_mult": 7700.0,
        "dff": 4.522, "mux2": 1.862, "nand2": 0.798, "add_per_bit": 137.0 / 32,
        "lzc_per_bit": 1.862})
    for name, u in UNIT_AREAS.items():
        assert u.name == name and u.value > 0 and u.unit.startswith("um^2")
        assert len(u.source) > 20, name
    for name in ("add_per_bit", "lzc_per_bit"):
        assert "(ours) derived:" in UNIT_AREAS[name].source
    assert "not verified" in UNIT_AREAS["int_mult32"].source
    for name in ("dff", "mux2", "nand2"):
        assert "Nangate" in UNIT_AREAS[name].source and "verified" in UNIT_AREAS[name].source
    for name in ("int_add32", "int_mult8", "fp32_mult"):
        assert "Horowitz" in UNIT_AREAS[name].source


# requant_one's output stage, common to every kind: zero-point add, 2 clamp compares, int8 select
OUT = 32 * BIT + 2 * 32 * BIT + 16 * MUX

HAND_TOTALS = {
    ("mult_shift", "double"): (
        160 * MUX + 32 * BIT + 32 * MUX  # saturating left shift: 32b x 5 stages, detect, select
        + M32 + 64 * BIT                 # SRDHM: 32x32 multiply, 64b nudge add
        + 160 * MUX + 64 * NAND          # RDBPOT: 32b x 5-stage shifter, mask/threshold logic
        + 32 * BIT + 32 * BIT            # RDBPOT: remainder compare, round increment
        + OUT + 37 * DFF),               # M0 (31) + shift (6) register bits
    ("mult_shift", "single"): (
        M32 + 384 * MUX + 64 * BIT       # multiply, 64b x 6-stage shifter, 64b round add
        + 32 * BIT + 32 * MUX            # saturate to int32
        + OUT + 37 * DFF),
    ("mult_shift", "tonearest"): (
        M32 + 128 * NAND + 64 * BIT      # multiply, sign-dependent half decode, 64b add
        + 384 * MUX + 32 * BIT + 32 * MUX  # 64b x 6-stage shifter, saturate to int32
        + OUT + 37 * DFF),
    ("fp32", None): (
        32 * BIT + 32 * LZC + 160 * MUX  # int->fp: |acc|, leading zeros, normalising shifter
        + 8 * BIT + 24 * BIT             # int->fp: exponent add, mantissa rounding add
        + FPM                            # fp32 multiply
        + 32 * BIT + 32 * MUX            # fp->int: clip compare and select
        + 160 * MUX + 32 * BIT + 32 * BIT  # fp->int: denormalising shifter, round, sign restore
        + OUT + 32 * DFF),               # one FP32 scale register
}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k))
def test_one_lane_total_matches_the_hand_computed_component_list(kind):
    est = requant_area(1, *kind)
    assert est.total_um2 == pytest.approx(HAND_TOTALS[kind])
    assert est.gate_equivalents == pytest.approx(HAND_TOTALS[kind] / 0.798)


def test_hand_totals_in_numbers():
    # The same totals as plain numbers, so an edit to a constant or a component shows up here.
    expected = {("mult_shift", "double"): 5494.602, ("mult_shift", "single"): 5288.698,
                ("mult_shift", "tonearest"): 5390.842, ("fp32", None): 9685.504}
    assert {k: requant_area(1, *k).total_um2 for k in KINDS} == pytest.approx(expected)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k))
@pytest.mark.parametrize("t_oc", [2, 7, 64])
def test_area_and_registers_scale_linearly_with_t_oc(kind, t_oc):
    one, many = requant_area(1, *kind), requant_area(t_oc, *kind)
    assert many.total_um2 == pytest.approx(t_oc * one.total_um2)
    assert many.register_bits == t_oc * one.register_bits
    assert [c.count for c in many.components] == [t_oc * c.count for c in one.components]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k))
def test_components_sum_to_total(kind):
    est = requant_area(5, *kind)
    assert len(est.components) >= 5
    for c in est.components:
        assert c.total_um2 == pytest.approx(c.count * c.unit_um2) and c.count > 0
    assert math.fsum(c.total_um2 for c in est.components) == pytest.approx(est.total_um2)


def test_register_bits_are_37_per_lane_for_mult_shift_and_32_for_fp32():
    for rounding in ("double", "single", "tonearest"):
        assert requant_area(16, "mult_shift", rounding).register_bits == 16 * 37
    assert requant_area(16, "fp32", None).register_bits == 16 * 32
    saved = (requant_area(16, "mult_shift", "double").register_bits
             - requant_area(16, "fp32", None).register_bits)
    assert saved == 16 * 5


def test_fp32_unit_is_larger_than_every_mult_shift_unit():
    fp32 = requant_area(1, "fp32", None).total_um2
    for rounding in ("double", "single", "tonearest"):
        ratio = fp32 / requant_area(1, "mult_shift", rounding).total_um2
        assert 1.7 < ratio < 1.9, (rounding, ratio)


def test_pe_array_by_hand():
    est = pe_array_area(4, 8)
    assert est.total_um2 == pytest.approx(4 * 8 * (282 + 137) + 4 * 32 * 4.522)
    assert est.register_bits == 4 * 32
    assert [c.count for c in est.components] == [32, 32, 128]


@pytest.mark.parametrize("call,match", [
    (lambda: requant_area(0, "fp32", None), r"t_oc=0: use an integer >= 1"),
    (lambda: requant_area(True, "fp32", None), r"t_oc=True"),
    (lambda: requant_area(2.0, "fp32", None), r"t_oc=2.0"),
    (lambda: requant_area(4, "float", None),
     r"requant='float': use one of \('mult_shift', 'fp32'\)"),
    (lambda: requant_area(4, "mult_shift", "up"), r"rounding='up': mult_shift needs one of "
                                                  r"\('double', 'single', 'tonearest'\)"),
    (lambda: requant_area(4, "mult_shift", None), r"rounding=None: mult_shift needs"),
    (lambda: requant_area(4, "fp32", "double"), r"rounding='double': fp32 .* rounding=None"),
    (lambda: pe_array_area(4, 0), r"pe_array_area: t_ic=0"),
    (lambda: pe_array_area(-1, 8), r"pe_array_area: t_oc=-1"),
    (lambda: area_table(t_ic=0), r"area_table: t_ic=0"),
    (lambda: area_table(t_ocs=(4, 0)), r"t_oc=0"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_area_table_rows():
    rows = area_table((4, 64), t_ic=8)
    assert [(r["t_oc"], r["requant"]) for r in rows] == [
        (t, label) for t in (4, 64)
        for label in ("mult_shift/double", "mult_shift/single", "mult_shift/tonearest", "fp32")]
    for r in rows:
        assert r["t_ic"] == 8
        assert r["pe_array_um2"] == pytest.approx(pe_array_area(r["t_oc"], 8).total_um2)
        assert r["requant_share"] == pytest.approx(
            r["requant_um2"] / (r["requant_um2"] + r["pe_array_um2"]))
    fp32_64 = rows[-1]
    assert fp32_64["requant_um2"] == pytest.approx(64 * 9685.504)
    assert fp32_64["register_bits"] == 64 * 32


def test_format_area_table_lists_every_row_aligned():
    t_ocs = (4, 8, 16, 32, 64)
    rows = area_table(t_ocs, t_ic=8)
    text = format_area_table(rows)
    lines = text.splitlines()
    assert len(lines) == 1 + len(rows) and "requant share" in lines[0]
    assert [int(line.split()[0]) for line in lines[1:]] == [r["t_oc"] for r in rows]
    assert set(t_ocs) == {int(line.split()[0]) for line in lines[1:]}
    col = lines[0].index("requant ")
    assert all(line[col:].startswith(r["requant"]) for line, r in zip(lines[1:], rows, strict=True))
    assert "9,685.5" not in text and "38,742.0" in text  # 4 fp32 lanes, thousands separated
    assert "73.5%" in text


def test_lbfp_multiplier_by_hand():
    from tvmq.targets.accel.area import lbfp_multiplier_area
    u = {k: v.value for k, v in UNIT_AREAS.items()}
    # 8-bit, f = 2, 15-bit table: XOR 4 GE, 8b add, 16 bits x 3 mux2 (4:1), 16b x 5-stage shifter
    want = 4 * u["nand2"] + 8 * u["int_add32"] / 32 + 16 * 3 * u["mux2"] + 16 * 5 * u["mux2"]
    assert lbfp_multiplier_area(8, 2, 15).total_um2 == pytest.approx(want)
    # f = 0 has no table: pure power-of-two products are a shift
    assert lbfp_multiplier_area(8, 0, 15).total_um2 == pytest.approx(want - 48 * u["mux2"])
    assert lbfp_multiplier_area(8, 0, 15).total_um2 < 0.7 * u["int_mult8"]
    assert lbfp_multiplier_area(8, 2, 15).register_bits == 0
    with pytest.raises(ValueError, match="frac_bits=-1"):
        lbfp_multiplier_area(8, -1)
