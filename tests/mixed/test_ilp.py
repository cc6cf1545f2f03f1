"""The bit-width integer program: known optima, brute force, ties, budgets, errors, speed."""

import itertools
import time

import numpy as np
import pytest

from tvmq.mixed import ilp
from tvmq.mixed.assign import AssignBitwidths

CHOICES = ((8, 8), (4, 8), (8, 4), (4, 4))


def _problem(s, c, **kw):
    s, c = np.asarray(s, float), np.asarray(c, float)
    return ilp.BitwidthProblem(tuple(f"l{i}" for i in range(len(s))), CHOICES[:s.shape[1]], s, c,
                               **kw)


def _brute(p, cycles_budget=None, weight_bytes_budget=None):
    """Best (objective, index) over all K^L assignments honouring ties and budgets."""
    best = (np.inf, None)
    index = {n: i for i, n in enumerate(p.layers)}
    rows = np.arange(len(p.layers))
    for ks in itertools.product(range(len(p.choices)), repeat=len(p.layers)):
        ks = np.array(ks)
        if not p.allowed[rows, ks].all():
            continue
        if any(len({p.choices[ks[index[n]]][1] for n in g}) > 1 for g in p.ties):
            continue
        if cycles_budget is not None and p.cycles[rows, ks].sum() > cycles_budget * (1 + 1e-9):
            continue
        if weight_bytes_budget is not None and \
                p.weight_bytes[rows, ks].sum() > weight_bytes_budget * (1 + 1e-9):
            continue
        obj = p.sensitivity[rows, ks].sum()
        if obj < best[0] - 1e-12:
            best = (obj, ks)
    return best


def test_hand_made_optimum_is_not_the_greedy_one():
    # Two layers, choices (8,8) and (4,8); uniform INT8 costs 100 + 100, budget 150.
    # Layer 0 saves 50 cycles at 4 bits for sensitivity 1.0, layer 1 saves 60 for 1.5.
    # Greedy by best saving per sensitivity (60/1.5 = 40 < 50/1.0) would still pick layer 0,
    # and so does the optimum here: only layer 0 at 4 bits -> 150 cycles, objective 1.0.
    p = _problem([[0, 1.0], [0, 1.5]], [[100, 50], [100, 40]])
    a = ilp.solve(p, cycles_budget=150)
    assert a.choice == {"l0": (4, 8), "l1": (8, 8)} and a.cycles == 150
    # Three layers, budget 205 of 300: the cheapest-cycles-per-layer greedy takes l2 (saves 70
    # for 3.0) first; the optimum takes l0 + l1 (save 50 + 50 = 100 >= 95 for 1.0 + 1.2).
    p = _problem([[0, 1.0], [0, 1.2], [0, 3.0]], [[100, 50], [100, 50], [100, 30]])
    a = ilp.solve(p, cycles_budget=205)
    assert a.choice == {"l0": (4, 8), "l1": (4, 8), "l2": (8, 8)}
    assert a.sensitivity == pytest.approx(2.2)


@pytest.mark.parametrize("seed", range(6))
def test_random_small_instances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    s = rng.random((n, 4)) * [0.01, 1, 1, 2]
    c = rng.integers(50, 500, size=(n, 1)) * np.array([1.0, 0.55, 0.6, 0.3])
    c *= rng.uniform(0.9, 1.1, size=c.shape)
    ties = (("l0", "l1"),) if seed % 2 else ()
    p = _problem(s, c, ties=ties, weight_bytes=np.outer(rng.integers(10, 100, n),
                                                        [1, .5, 1, .5]))
    budget = 0.6 * c[:, 0].sum()
    want, _ = _brute(p, cycles_budget=budget)
    if np.isinf(want):
        with pytest.raises(ilp.InfeasibleBudget):
            ilp.solve(p, cycles_budget=budget)
        return
    got = ilp.solve(p, cycles_budget=budget)
    assert got.sensitivity == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert got.cycles <= budget * (1 + 1e-9)


def test_ties_share_activation_bits_and_leave_weight_bits_free():
    # Untied: l0 wants a4 (cheap, insensitive), l1 wants a8 (very sensitive at a4).
    s = [[0, 0.1, 0.01, 0.02], [0, 0.05, 5.0, 5.0]]
    c = [[100, 50, 50, 25], [100, 50, 50, 25]]
    free = ilp.solve(_problem(s, c), cycles_budget=130)
    assert free.choice["l0"][1] == 4 and free.choice["l1"][1] == 8
    tied = ilp.solve(_problem(s, c, ties=(("l0", "l1"),)), cycles_budget=130)
    assert tied.choice["l0"][1] == tied.choice["l1"][1] == 8
    assert tied.choice["l0"][0] == 4 and tied.choice["l1"][0] == 4  # weights still 4-bit


def test_allowed_mask_is_honoured():
    allowed = np.array([[True, False, True, True], [True, True, True, True]])
    p = _problem([[0, 0.1, 1, 1], [0, 0.5, 1, 1]], [[100, 50, 50, 25]] * 2, allowed=allowed)
    a = ilp.solve(p, cycles_budget=150)
    assert a.choice == {"l0": (8, 8), "l1": (4, 8)}


def test_weight_and_bops_budgets_bind():
    s = [[0, 1.0], [0, 2.0]]
    c = [[100, 100], [100, 100]]  # cycles do not care
    p = _problem(s, c, weight_bytes=[[1000, 500], [100, 50]], bops=[[64, 32], [64, 8]])
    assert ilp.solve(p, weight_bytes_budget=1000).choice == {"l0": (4, 8), "l1": (8, 8)}
    assert ilp.solve(p, bops_budget=80).choice == {"l0": (8, 8), "l1": (4, 8)}


def test_infeasible_budget_names_the_smallest_feasible_value():
    rng = np.random.default_rng(1)
    p = _problem(rng.random((4, 4)), rng.integers(100, 400, (4, 1)) * [1, .5, .5, .25],
                 ties=(("l1", "l2"),), weight_bytes=rng.integers(10, 90, (4, 1)) * [1, .5, 1, .5])
    smallest = min(p.cycles[np.arange(4), ks].sum()
                   for ks in itertools.product(range(4), repeat=4))
    with pytest.raises(ilp.InfeasibleBudget, match=r"cycles_budget=.* is infeasible") as err:
        ilp.solve(p, cycles_budget=0.5 * smallest)
    assert err.value.smallest == pytest.approx(smallest)
    assert ilp.solve(p, cycles_budget=err.value.smallest).cycles <= smallest * (1 + 1e-9)
    with pytest.raises(ilp.InfeasibleBudget, match="weight_bytes_budget") as err:
        ilp.solve(p, weight_bytes_budget=1.0)
    assert ilp.solve(p, weight_bytes_budget=err.value.smallest).weight_bytes == \
        pytest.approx(err.value.smallest)


@pytest.mark.parametrize("bad, match", [
    (dict(sensitivity=np.zeros((2, 3))), "shape"),
    (dict(cycles=-np.ones((2, 4))), ">= 0"),
    (dict(cycles=np.full((2, 4), np.nan)), "finite"),
    (dict(ties=(("l0", "nope"),)), "unknown layers"),
    (dict(allowed=np.zeros((2, 4), bool)), "no choice"),
])
def test_validation_errors(bad, match):
    kw = dict(layers=("l0", "l1"), choices=CHOICES, sensitivity=np.zeros((2, 4)),
              cycles=np.ones((2, 4)))
    with pytest.raises(ValueError, match=match):
        ilp.BitwidthProblem(**{**kw, **bad})
    p = ilp.BitwidthProblem(**kw)
    with pytest.raises(ValueError, match="cycles_budget"):
        ilp.solve(p, cycles_budget=-1)


def test_150_layers_solve_in_well_under_a_second():
    rng = np.random.default_rng(0)
    n = 150
    s = rng.random((n, 4)) * [0.01, 1, 1, 2]
    c = rng.integers(100, 5000, (n, 1)) * np.array([1, .55, .6, .3])
    ties = tuple(tuple(f"l{i}" for i in range(j, j + 3)) for j in range(0, 60, 3))
    p = _problem(s, c, ties=ties)
    start = time.perf_counter()
    a = ilp.solve(p, cycles_budget=0.6 * ilp.uniform(p, (8, 8)))
    seconds = time.perf_counter() - start
    print(f"150-layer program: {1e3 * seconds:.1f} ms")
    assert seconds < 5.0  # the goal is 1 s; margin for a loaded machine
    for group in ties:
        assert len({a.choice[n][1] for n in group}) == 1
    assert "total" in a.table()


def test_a_latency_budget_without_accelerator_cycles_constrains_nothing():
    """No layer on the accelerator: every choice costs 0 cycles, and 75% of 0 holds for all."""
    p = _problem([[0.0, 1.0], [0.0, 2.0]], np.zeros((2, 2)))
    assignment = AssignBitwidths(latency_budget=0.75)(p)
    assert [p.choices[k] for k in assignment.index] == [(8, 8), (8, 8)]
