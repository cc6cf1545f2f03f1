"""Hardware size model of the accel target's requant units and PE array, at 45 nm.

An analytic estimate, not a synthesis result: each requant lane is written out as a list of
datapath components that mirrors the C emulator (`emulator/accel.c`: rq_double, rq_single,
rq_tonearest, rq_fp32, requant_one), and each component's area is a count times a unit area
from the one table `UNIT_AREAS`. It answers the Lee et al. (ITC-CSCC 2023) question: per tile of
t_oc output channels the hardware needs t_oc requant units plus t_oc parameter sets, either
(M0 int32 Q31, shift) for the integer mult/shift unit or one FP32 scale for the FP32 unit.

What is counted, per lane: the arithmetic of the unit (multipliers, adders, comparators, barrel
shifters as log2 stages of 2:1 muxes, small decode logic in NAND2 gate equivalents) and the
per-channel parameter registers (M0 31 bits + shift 6 bits, or 32 bits). Not counted: wiring,
control, pipeline registers, clock tree, and the per-layer out_zp/qmin/qmax registers, which
every kind shares once per array. The mult/shift shift-amount decode (k = 31 - shift, the
left/right split) is taken as folded into the stored 6-bit parameter.

Technology: everything is at 45 nm, but the arithmetic blocks come from Horowitz's table and
the cells (register bit, 2:1 mux, NAND2) from the Nangate 45 nm open library, i.e. two
different 45 nm libraries; read totals as rough first-order sizes, and the comparison between
kinds as the result. To use other numbers (a synthesis report, another node), replace the
`value` and `source` of the entries in `UNIT_AREAS`; every component reads areas only from that
table, so all estimates follow. Entries marked "(ours) derived" are formulas on the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import REQUANTS, ROUNDINGS

__all__ = ["KINDS", "UNIT_AREAS", "AreaEstimate", "Component", "UnitArea", "area_table",
           "format_area_table", "kind_label", "lbfp_multiplier_area", "pe_array_area",
           "requant_area"]


@dataclass(frozen=True)
class UnitArea:
    """One unit-area constant: `value` in `unit`, and where the number comes from."""

    name: str
    value: float
    unit: str
    source: str


_HOROWITZ = ("M. Horowitz, 'Computing's Energy Problem (and what we can do about it)', ISSCC "
             "2014 keynote, 45 nm operation energy/area table, Area (um^2) column")
_NANGATE = ("Nangate 45nm Open Cell Library, NangateOpenCellLibrary_typical.lib (rev 1.0, "
            "2011-02-10, corner TypTyp 1.1 V 25 C)")
_NANGATE_CHECK = ("verified: read from the liberty copy shipped as examples/nangate45_typ.lib.gz "
                  "in The-OpenROAD-Project/OpenSTA")
_SECONDARY = ("verified against secondary quotes of the table only (the slides/paper were not "
              "available to re-read)")

_PRIMARY = (
    UnitArea("int_add32", 137.0, "um^2",
             f"{_HOROWITZ}, row '32b Add'; {_SECONDARY}: quoted as '36-137 um^2 for an 8-32-bit "
             "integer adder'"),
    UnitArea("int_mult8", 282.0, "um^2",
             f"{_HOROWITZ}, row '8b Mult'; {_SECONDARY}: quoted as '282 um^2 for an 8-bit "
             "multiplier'"),
    UnitArea("int_mult32", 3495.0, "um^2",
             f"{_HOROWITZ}, row '32b Mult'; not verified: recalled from the table, no copy or "
             "quote of this cell was found to re-check it; taken as a 32x32 -> 64 bit "
             "multiplier"),
    UnitArea("fp32_mult", 7700.0, "um^2",
             f"{_HOROWITZ}, row '32b FP Mult'; {_SECONDARY}: quoted as 7,700 um^2 in two "
             "independent documents (with 16b FP add 1,360, 32b FP add 4,184, 16b FP mult 1,640)"),
    UnitArea("dff", 4.522, "um^2 per bit",
             f"{_NANGATE}, cell (DFF_X1) area : 4.522000 (one register bit); {_NANGATE_CHECK}"),
    UnitArea("mux2", 1.862, "um^2",
             f"{_NANGATE}, cell (MUX2_X1) area : 1.862000; {_NANGATE_CHECK}"),
    UnitArea("nand2", 0.798, "um^2 (1 gate equivalent)",
             f"{_NANGATE}, cell (NAND2_X1) area : 0.798000; {_NANGATE_CHECK}"),
)
_P = {u.name: u.value for u in _PRIMARY}

UNIT_AREAS: dict[str, UnitArea] = {u.name: u for u in (
    *_PRIMARY,
    UnitArea("add_per_bit", _P["int_add32"] / 32, "um^2 per bit",
             "(ours) derived: int_add32 / 32; a w-bit adder or comparator is w x this, so a 64b "
             "add is 2 x the 32b add (check: 8 x 4.28 = 34.3 vs Horowitz's 8b Add 36 um^2)"),
    UnitArea("lzc_per_bit", _P["mux2"], "um^2 per input bit",
             "(ours) derived: mux2, i.e. a w-bit leading-zero counter as w MUX2_X1 cells"),
)}


def _um2(name: str) -> float:
    return UNIT_AREAS[name].value


@dataclass(frozen=True)
class Component:
    """One row of an estimate: `count` units of `unit_um2` each, `total_um2` = the product."""

    name: str
    count: int
    unit_um2: float
    total_um2: float


@dataclass(frozen=True)
class AreaEstimate:
    """Components, their summed area, register bits, and gate equivalents (total / NAND2)."""

    components: tuple[Component, ...]
    total_um2: float
    register_bits: int
    gate_equivalents: float


KINDS: tuple[tuple[str, str | None], ...] = (
    *(("mult_shift", r) for r in ROUNDINGS), ("fp32", None))


def kind_label(requant: str, rounding: str | None) -> str:
    """'mult_shift/<rounding>' or 'fp32'."""
    return requant if rounding is None else f"{requant}/{rounding}"


# ---- per-lane component lists: (name, count, unit area) ------------------------------------

def _adder(bits: int) -> float:
    return bits * _um2("add_per_bit")


def _shifter(what: str, width: int, max_shift: int) -> tuple[str, int, float]:
    """A barrel shifter: ceil(log2(max_shift + 1)) stages of `width` 2:1 muxes."""
    stages = max_shift.bit_length()
    return (f"{what}: barrel shifter {width}b x {stages} stages of 2:1 mux", width * stages,
            _um2("mux2"))


def _saturate_to_int32(what: str) -> list[tuple[str, int, float]]:
    return [(f"{what}: overflow detect (32b compare)", 1, _adder(32)),
            (f"{what}: saturate select (32 2:1 mux)", 32, _um2("mux2"))]


def _mult_shift_lane(rounding: str) -> list[tuple[str, int, float]]:
    mult = ("32x32->64 multiplier (acc x M0)", 1, _um2("int_mult32"))
    if rounding == "double":  # rdbpot(srdhm(sat(acc << left), M0), right)
        return [
            _shifter("saturating left shift (left in [0, 30])", 32, 30),
            *_saturate_to_int32("saturating left shift"),
            mult,
            ("SRDHM: nudge add, +2^30 or 1-2^30 by sign (64b add; /2^31 is wiring)", 1,
             _adder(64)),
            _shifter("RDBPOT: arithmetic right shift (e in [0, 31])", 32, 31),
            ("RDBPOT: remainder mask 2^e-1 and threshold logic (64 NAND2 GE)", 64,
             _um2("nand2")),
            ("RDBPOT: remainder > threshold (32b compare)", 1, _adder(32)),
            ("RDBPOT: round increment (32b add)", 1, _adder(32)),
        ]
    if rounding == "single":  # sat(((p >> (k - 1)) + 1) >> 1), k = 31 - shift in [1, 62]
        return [
            mult,
            _shifter("right shift p >> (k-1) (k-1 in [0, 61])", 64, 61),
            ("round add +1 (64b add; the final >>1 is wiring)", 1, _adder(64)),
            *_saturate_to_int32("saturate int64 -> int32"),
        ]
    # tonearest: sat((p + (p >= 0 ? half : half - 1)) >> k), half = 2^(k-1)
    return [
        mult,
        ("rounding constant 2^(k-1) or 2^(k-1)-1 by sign: decode (128 NAND2 GE)", 128,
         _um2("nand2")),
        ("round add p + half (64b add)", 1, _adder(64)),
        _shifter("right shift >> k (k in [1, 62])", 64, 62),
        *_saturate_to_int32("saturate int64 -> int32"),
    ]


def _fp32_lane() -> list[tuple[str, int, float]]:
    # r = clip(nearbyintf((float)acc * scale), -2^31, 2^31 - 128)
    return [
        ("int32->fp32: |acc| (32b negate = 32b add)", 1, _adder(32)),
        ("int32->fp32: leading-zero count (32 bits)", 32, _um2("lzc_per_bit")),
        _shifter("int32->fp32: normalising left shift (0..31)", 32, 31),
        ("int32->fp32: exponent 158 - lzc (8b add)", 1, _adder(8)),
        ("int32->fp32: mantissa round-half-even (24b add)", 1, _adder(24)),
        ("FP32 multiplier (x * scale)", 1, _um2("fp32_mult")),
        ("fp32->int32: clip compare vs -2^31 / 2^31-128 (32b compare)", 1, _adder(32)),
        ("fp32->int32: clip select (32 2:1 mux)", 32, _um2("mux2")),
        _shifter("fp32->int32: denormalising right shift (0..31)", 32, 31),
        ("fp32->int32: round-half-even (32b add)", 1, _adder(32)),
        ("fp32->int32: sign restore (32b negate = 32b add)", 1, _adder(32)),
    ]


def _output_stage() -> list[tuple[str, int, float]]:
    # requant_one: v = r + out_zp; clamp v to [qmin, qmax]; write int8
    return [
        ("output zero-point add (32b add)", 1, _adder(32)),
        ("clamp to [qmin, qmax] (2 x 32b compare)", 2, _adder(32)),
        ("clamp select (int8 result, 2 x 8 2:1 mux)", 16, _um2("mux2")),
    ]


def _param_registers(requant: str) -> list[tuple[str, int, float]]:
    if requant == "fp32":
        return [("per-channel FP32 scale register (bits)", 32, _um2("dff"))]
    return [("per-channel M0 register, [0, 2^31-1] (bits)", 31, _um2("dff")),
            ("per-channel shift register, [-31, 30] (bits)", 6, _um2("dff"))]


# ---- API ------------------------------------------------------------------------------------

def _check_count(func: str, arg: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{func}: {arg}={value!r}: use an integer >= 1.")


def _check_kind(func: str, requant, rounding) -> None:
    if requant not in REQUANTS:
        raise ValueError(f"{func}: requant={requant!r}: use one of {REQUANTS}.")
    if requant == "mult_shift" and rounding not in ROUNDINGS:
        raise ValueError(f"{func}: rounding={rounding!r}: mult_shift needs one of {ROUNDINGS}.")
    if requant == "fp32" and rounding is not None:
        raise ValueError(f"{func}: rounding={rounding!r}: fp32 requant has no rounding mode; "
                         "use rounding=None.")


def _estimate(logic: list[tuple[str, int, float]], registers: list[tuple[str, int, float]],
              lanes: int) -> AreaEstimate:
    """`lanes` copies of the logic rows and of the register rows (counts in bits)."""
    comps = tuple(Component(name, n * lanes, unit, n * lanes * unit)
                  for name, n, unit in logic + registers)
    total = sum(c.total_um2 for c in comps)
    bits = lanes * sum(n for _, n, _ in registers)
    return AreaEstimate(comps, total, bits, total / _um2("nand2"))


def requant_area(t_oc: int, requant: str, rounding: str | None) -> AreaEstimate:
    """Area of t_oc requant lanes: t_oc x (unit datapath + output stage + parameter registers).

    total_um2 = t_oc * sum(count_i * unit_area_i) over the lane's components; register_bits =
    t_oc * 37 for mult_shift (M0 31 + shift 6) and t_oc * 32 for fp32. Raises ValueError naming
    the bad argument (t_oc an integer >= 1; requant/rounding as in AccelConfig).
    """
    _check_count("requant_area", "t_oc", t_oc)
    _check_kind("requant_area", requant, rounding)
    unit = _fp32_lane() if requant == "fp32" else _mult_shift_lane(rounding)
    return _estimate(unit + _output_stage(), _param_registers(requant), t_oc)


def pe_array_area(t_oc: int, t_ic: int) -> AreaEstimate:
    """Area of the PE array: t_oc*t_ic int8 multipliers and int32 accumulate adders, plus t_oc
    int32 accumulator registers (total = t_oc*t_ic*(282 + 137) + t_oc*32*4.522 um^2)."""
    _check_count("pe_array_area", "t_oc", t_oc)
    _check_count("pe_array_area", "t_ic", t_ic)
    logic = [("int8 multiplier (8b mult)", t_ic, _um2("int_mult8")),
             ("int32 accumulate adder (32b add)", t_ic, _um2("int_add32"))]
    return _estimate(logic, [("int32 accumulator register (bits)", 32, _um2("dff"))], t_oc)


def lbfp_multiplier_area(bits: int = 8, frac_bits: int = 2, lut_bits: int = 15) -> AreaEstimate:
    """One LBFP multiplier (tvmq.numerics.lbfp): sign XOR, a `bits`-wide code adder, the
    2^frac_bits-entry table of 2^(-r/2^f) as a mux tree per output bit (none for f = 0), and a
    barrel shifter over the lut_bits + 1 product bits whose ceil(log2(lut_bits + 2)) stages
    shift up to the width (larger shifts give 0). Next to `UNIT_AREAS["int_mult8"]` it answers
    the paper's "45% less area than an 8-bit fixed-point multiplier"."""
    _check_count("lbfp_multiplier_area", "bits", bits)
    _check_count("lbfp_multiplier_area", "lut_bits", lut_bits)
    if not isinstance(frac_bits, int) or isinstance(frac_bits, bool) or frac_bits < 0:
        raise ValueError(f"lbfp_multiplier_area: frac_bits={frac_bits!r}: use an integer >= 0.")
    width = lut_bits + 1
    logic = [("sign XOR (4 NAND2 GE)", 4, _um2("nand2")),
             (f"code adder ({bits}b add)", 1, _adder(bits))]
    if frac_bits:
        logic.append((f"2^-r/2^f table: {2**frac_bits}:1 mux per product bit ({width} bits)",
                      width * (2**frac_bits - 1), _um2("mux2")))
    logic.append(_shifter("product shift", width, width))
    return _estimate(logic, [], 1)


def area_table(t_ocs=(4, 8, 16, 32, 64), t_ic: int = 16) -> list[dict]:
    """One row per (t_oc, requant kind in KINDS): t_oc, t_ic, requant (label), requant_um2,
    register_bits (parameter bits), pe_array_um2, and
    requant_share = requant_um2 / (requant_um2 + pe_array_um2)."""
    _check_count("area_table", "t_ic", t_ic)
    rows = []
    for t_oc in t_ocs:
        pe = pe_array_area(t_oc, t_ic).total_um2
        for requant, rounding in KINDS:
            rq = requant_area(t_oc, requant, rounding)
            rows.append({"t_oc": t_oc, "t_ic": t_ic, "requant": kind_label(requant, rounding),
                         "requant_um2": rq.total_um2, "register_bits": rq.register_bits,
                         "pe_array_um2": pe, "requant_share": rq.total_um2 / (rq.total_um2 + pe)})
    return rows


def format_area_table(rows: list[dict]) -> str:
    """`area_table` rows as an aligned text table (one header line, one line per row)."""
    head = ("t_oc", "t_ic", "requant", "requant um^2", "param reg bits", "PE array um^2",
            "requant share")
    body = [(str(r["t_oc"]), str(r["t_ic"]), r["requant"], f"{r['requant_um2']:,.1f}",
             str(r["register_bits"]), f"{r['pe_array_um2']:,.1f}", f"{r['requant_share']:.1%}")
            for r in rows]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    left = {2}  # the requant label reads best left-aligned; numbers right-aligned
    return "\n".join(
        "  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in (head, *body))
