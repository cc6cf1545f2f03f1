"""On-chip awareness: each layer's cycles measured on the accelerator emulator, cached on disk,
and an XGBoost model of them for shapes not measured.

Measured: one `int8_unit.conv2d` run per (layer shape, w_bits, a_bits), on deterministic data in
the operand ranges (the counters depend on shapes and widths only, never on values), output
width 8. Cache: one JSON file per accelerator under `<cache root>/cost/`, named by a hash of
the AccelConfig fields that change cycles (t_oc, t_ic, buffers, DMA rate, operand widths) and
of the emulator sources (a cycle-model change starts a new file); entries keyed by
`ConvShape.key()` and the widths. A layer the accelerator refuses is cached with the reason.

Model: `CostModel`, an XGBoost regressor of log(cycles / first-order estimate) on the geometry,
the widths, the MACs, the packed weight / activation / output bytes and the hardware fields
(`features`); the first-order estimate is max(PE steps, DMA cycles) + requant steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..numerics import Requant
from ..targets.accel import AccelConfig, int8_unit, library
from ..toolchain import cache_root

HW_FIELDS = ("t_oc", "t_ic", "weight_buffer_bytes", "act_buffer_bytes", "acc_buffer_bytes",
             "dma_bytes_per_cycle")


@dataclass(frozen=True)
class ConvShape:
    """A conv2d layer (batch 1, NCHW input, OIHW weights) as the accelerator sees it. A matmul
    (1, K) x (K, N) is ConvShape(C=K, H=1, W=1, O=N, KH=1, KW=1)."""

    C: int
    H: int
    W: int
    O: int  # noqa: E741
    KH: int = 1
    KW: int = 1
    groups: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self):
        for name in ("C", "H", "W", "O", "KH", "KW", "groups"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"ConvShape.{name}={v!r}: use an integer >= 1.")
            object.__setattr__(self, name, int(v))
        for name, n, low in (("stride", 2, 1), ("padding", 4, 0), ("dilation", 2, 1)):
            v = tuple(int(x) for x in getattr(self, name))
            if len(v) != n or min(v) < low:
                raise ValueError(f"ConvShape.{name}={getattr(self, name)!r}: use {n} integers "
                                 f">= {low}.")
            object.__setattr__(self, name, v)
        if self.C % self.groups or self.O % self.groups:
            raise ValueError(f"ConvShape: groups={self.groups} must divide C={self.C} and "
                             f"O={self.O}.")
        if self.OH < 1 or self.OW < 1:
            raise ValueError(f"ConvShape: the output would be {self.OH}x{self.OW}.")

    @property
    def OH(self) -> int:
        span = self.H + self.padding[0] + self.padding[2] - self.dilation[0] * (self.KH - 1)
        return (span - 1) // self.stride[0] + 1

    @property
    def OW(self) -> int:
        span = self.W + self.padding[1] + self.padding[3] - self.dilation[1] * (self.KW - 1)
        return (span - 1) // self.stride[1] + 1

    @property
    def weight_params(self) -> int:
        return self.O * (self.C // self.groups) * self.KH * self.KW

    @property
    def macs(self) -> int:
        return self.OH * self.OW * self.weight_params

    def key(self) -> str:
        return ("c{C}h{H}w{W}o{O}k{KH}x{KW}g{groups}".format(**asdict(self))
                + "s{}x{}p{}_{}_{}_{}d{}x{}".format(*self.stride, *self.padding, *self.dilation))


def _requant(hw: AccelConfig) -> Requant:
    return Requant.from_scale(np.float64(1e-3), hw.requant, hw.rounding)


def measure_cycles(hw: AccelConfig, shape: ConvShape, w_bits: int, a_bits: int,
                   y_bits: int = 8) -> dict[str, int]:
    """Counters of one emulator run of `shape` at the widths (cycles, compute/dma/requant
    cycles, macs, dma_bytes, tiles); ValueError with the checker's reason if refused."""
    rng = np.random.default_rng(0)
    a_hi, w_hi = 2 ** (a_bits - 1), 2 ** (w_bits - 1)
    x = rng.integers(-a_hi, a_hi, size=(1, shape.C, shape.H, shape.W), dtype=np.int8)
    w = rng.integers(-w_hi + 1, w_hi, size=(shape.O, shape.C // shape.groups, shape.KH,
                                          shape.KW), dtype=np.int8)
    y_hi = 2 ** (y_bits - 1)
    _, counters = int8_unit.conv2d(hw, x, 0, w, None, shape.stride, shape.padding,
                                   shape.dilation, shape.groups, _requant(hw), 0, -y_hi, y_hi - 1,
                                   w_bits=w_bits, a_bits=a_bits, y_bits=y_bits)
    return counters


def _sources_hash() -> str:
    h = hashlib.sha256()
    for name in library.SOURCES:
        h.update((library.SOURCE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


class CostCache:
    """Measured cycles on disk: `cycles(hw, shape, w_bits, a_bits)` measures on a miss."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root() / "cost"
        self._tables: dict[Path, dict] = {}
        self.misses = 0

    def path(self, hw: AccelConfig) -> Path:
        fields = {f: getattr(hw, f) for f in HW_FIELDS}
        fields["operand_bits"] = list(hw.operand_bits)
        key = json.dumps([fields, _sources_hash()], sort_keys=True)
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"

    def _table(self, hw: AccelConfig) -> dict:
        path = self.path(hw)
        if path not in self._tables:
            self._tables[path] = json.loads(path.read_text()) if path.is_file() else {}
        return self._tables[path]

    def lookup(self, hw: AccelConfig, shape: ConvShape, w_bits: int, a_bits: int) -> dict:
        """{"cycles": int, ...counters} or {"refused": reason}; measured and stored on a miss."""
        table = self._table(hw)
        key = f"{shape.key()}/w{w_bits}a{a_bits}"
        if key not in table:
            self.misses += 1
            try:
                table[key] = measure_cycles(hw, shape, w_bits, a_bits)
            except ValueError as err:
                table[key] = {"refused": str(err)}
        return table[key]

    def cycles(self, hw: AccelConfig, shape: ConvShape, w_bits: int, a_bits: int) -> float:
        """Cycles, or NaN if the accelerator refuses the layer."""
        entry = self.lookup(hw, shape, w_bits, a_bits)
        return math.nan if "refused" in entry else float(entry["cycles"])

    def save(self, hw: AccelConfig) -> None:
        """Write the accelerator's table atomically (temp file + rename)."""
        path = self.path(hw)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self._table(hw), f)
        os.replace(tmp, path)


def measure_table(hw: AccelConfig, shapes: list[ConvShape], choices, cache: CostCache | None = None,
                  progress: bool = True) -> np.ndarray:
    """(L, K) cycles of each shape at each (w_bits, a_bits) choice; NaN where refused."""
    cache = cache or CostCache()
    out = np.zeros((len(shapes), len(choices)))
    cells = [(i, k) for i in range(len(shapes)) for k in range(len(choices))]
    for i, k in tqdm(cells, desc="cost", unit="layer-bits", leave=False, disable=not progress):
        out[i, k] = cache.cycles(hw, shapes[i], *choices[k])
    cache.save(hw)
    return out


def synthetic_shapes(n: int, seed: int, hw: AccelConfig | None = None) -> list[ConvShape]:
    """n random realistic conv layers (pointwise, 3x3/5x5, depthwise, strided, matmul-like),
    channels log-uniform in 8..512, spatial 1..80; with `hw`, only shapes it can run."""
    rng = np.random.default_rng(seed)
    out: list[ConvShape] = []
    while len(out) < n:
        kind = rng.choice(["pointwise", "regular", "depthwise", "matmul"], p=[.3, .3, .25, .15])
        c = int(2 ** rng.uniform(3, 9))
        c = c - c % 8 if rng.random() < 0.8 and c >= 8 else c
        o = int(2 ** rng.uniform(3, 9))
        o = o - o % 8 if rng.random() < 0.8 and o >= 8 else o
        side = int(rng.integers(1, 81))
        h, w = side, int(np.clip(side * rng.choice([1, 1, 2, 4]), 1, 320))
        stride = int(rng.choice([1, 1, 2]))
        if kind == "matmul":
            shape = ConvShape(C=c, H=1, W=1, O=o)
        elif kind == "pointwise":
            shape = ConvShape(C=c, H=h, W=w, O=o, stride=(stride, stride))
        else:
            k = int(rng.choice([3, 3, 5]))
            pad = (k // 2,) * 4
            groups = c if kind == "depthwise" else 1
            shape = ConvShape(C=c, H=max(h, k), W=max(w, k), O=c if groups > 1 else o, KH=k,
                              KW=k, groups=groups, stride=(stride, stride), padding=pad)
        if shape.macs > 60_000_000:
            continue
        if hw is not None and _refused(hw, shape):
            continue
        out.append(shape)
    return out


def _refused(hw: AccelConfig, shape: ConvShape) -> bool:
    """Does the accelerator's checker refuse the layer at 8 bits?"""
    try:
        int8_unit.conv2d_descriptor(hw, (1, shape.C, shape.H, shape.W),
                                    (shape.O, shape.C // shape.groups, shape.KH, shape.KW), 0,
                                    shape.stride, shape.padding, shape.dilation, shape.groups,
                                    _requant(hw), 0, -128, 127, counter_slot=0)
    except ValueError:
        return True
    return False


def features(shapes: list[ConvShape], bits, hw: AccelConfig) -> np.ndarray:
    """One row per (shape, (w_bits, a_bits)): geometry, widths, the hardware fields, and log2 of
    the MACs, the packed bytes and first-order counts (tiles x PE steps, requant steps, DMA
    cycles of the bytes); the model learns how they combine (overlap, residency, tiling)."""
    rows = []
    for s, (wb, ab) in zip(shapes, bits):
        cg = s.C // s.groups
        fused = (8 // ab) * (8 // wb)
        tiles = math.ceil(s.O / hw.t_oc)
        w_bytes = s.weight_params * wb / 8
        a_bytes = s.C * s.H * s.W * ab / 8
        y_bytes = s.O * s.OH * s.OW
        steps = tiles * s.OH * s.OW * math.ceil(s.KH * s.KW * math.ceil(cg / hw.t_ic) / fused)
        rows.append([s.C, s.H, s.W, s.O, s.KH, s.KW, s.groups, s.stride[0], s.OH, s.OW, cg,
                     wb, ab, fused, tiles, *(getattr(hw, f) for f in HW_FIELDS),
                     *np.log2([s.macs, w_bytes, a_bytes, y_bytes, steps, tiles * s.OH * s.OW,
                               (w_bytes + a_bytes + y_bytes) / hw.dma_bytes_per_cycle])])
    return np.asarray(rows, np.float64)


def mape(predicted, measured) -> float:
    """Mean absolute percentage error, %."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    return float(100.0 * np.mean(np.abs(p - m) / m))


def first_order_cycles(shapes: list[ConvShape], bits, hw: AccelConfig) -> np.ndarray:
    """max(PE steps, DMA cycles of every byte once) + requant steps: the analytic estimate the
    regressor corrects (it ignores tile-by-tile overlap and activation residency)."""
    f = features(shapes, bits, hw)
    steps, requant, dma = (2.0 ** f[:, -3], 2.0 ** f[:, -2], 2.0 ** f[:, -1])
    return np.maximum(steps, dma) + requant


class CostModel:
    """XGBoost regressor of log(cycles / first_order_cycles) from `features`; `predict`
    returns cycles."""

    PARAMS: typing.ClassVar[dict] = {"objective": "reg:squarederror", "max_depth": 6,
                                     "eta": 0.08, "subsample": 0.9, "nthread": 2}
    ROUNDS = 400

    def __init__(self, hw: AccelConfig, seed: int = 0):
        self.hw, self.seed = hw, seed
        self.booster = None  # xgboost's native API: no scikit-learn needed

    def fit(self, shapes, bits, cycles) -> CostModel:
        import xgboost

        target = np.log(np.asarray(cycles, float) / first_order_cycles(shapes, bits, self.hw))
        data = xgboost.DMatrix(features(shapes, bits, self.hw), label=target)
        self.booster = xgboost.train({**self.PARAMS, "seed": self.seed}, data, self.ROUNDS)
        return self

    def predict(self, shapes, bits) -> np.ndarray:
        import xgboost

        if not shapes:
            return np.zeros(0)
        if self.booster is None:
            raise ValueError("CostModel.predict before fit (or load)")
        data = xgboost.DMatrix(features(shapes, bits, self.hw))
        correction = self.booster.predict(data).astype(np.float64)
        return first_order_cycles(shapes, bits, self.hw) * np.exp(correction)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.booster.save_model(str(path))
        path.with_suffix(".meta.json").write_text(json.dumps({"hw": self.hw.to_dict(),
                                                              "seed": self.seed}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CostModel:
        import xgboost

        path = Path(path)
        meta = json.loads(path.with_suffix(".meta.json").read_text())
        hw = dict(meta["hw"])
        hw["operand_bits"] = tuple(hw["operand_bits"])
        model = cls(AccelConfig(**hw), meta["seed"])
        model.booster = xgboost.Booster()
        model.booster.load_model(str(path))
        return model


@dataclass
class CostModelReport:
    n_train: int
    n_test: int
    points_train: int
    points_test: int
    mape_train: float
    mape_test: float
    seconds: float

    def __str__(self) -> str:
        return (f"trained on {self.n_train} synthetic shapes ({self.points_train} layer x bits "
                f"points), MAPE {self.mape_train:.1f}%; held-out {self.n_test} shapes "
                f"({self.points_test} points): MAPE {self.mape_test:.1f}% [{self.seconds:.0f} s]")


def train_cost_model(hw: AccelConfig, n_train: int = 400, n_test: int = 100, seed: int = 0,
                     cache: CostCache | None = None,
                     progress: bool = True) -> tuple[CostModel, CostModelReport]:
    """Measure synthetic shapes x every (w_bits, a_bits) in operand_bits^2, fit on n_train
    shapes, report the MAPE on n_test other shapes."""
    start = time.perf_counter()
    cache = cache or CostCache()
    choices = [(w, a) for w in hw.operand_bits for a in hw.operand_bits]
    shapes = synthetic_shapes(n_train + n_test, seed, hw)
    table = measure_table(hw, shapes, choices, cache, progress)

    def points(rows):
        s, b, c = [], [], []
        for i in rows:
            for k, choice in enumerate(choices):
                if not math.isnan(table[i, k]):
                    s.append(shapes[i])
                    b.append(choice)
                    c.append(table[i, k])
        return s, b, np.asarray(c)

    train, test = points(range(n_train)), points(range(n_train, n_train + n_test))
    model = CostModel(hw, seed).fit(*train)
    report = CostModelReport(n_train, n_test, len(train[2]), len(test[2]),
                             mape(model.predict(train[0], train[1]), train[2]),
                             mape(model.predict(test[0], test[1]), test[2]),
                             time.perf_counter() - start)
    return model, report
