"""verify_and_cut: the program's choice measured as a whole, cut and solved again when the
additive estimate was too optimistic (measurements injected, so the rounds are exact)."""

import numpy as np
import pytest

from tvmq.errors import CompileError
from tvmq.mixed import ilp
from tvmq.mixed.assign import AssignBitwidths, Round, verify_and_cut

# Three layers, INT8 or a 4-bit input; each costs 100 cycles at INT8 and 50 at a4, so a budget
# of 250 / 300 needs exactly one layer at a4. Estimated losses at a4: 1, 2, 3.
S_A4 = np.array([1.0, 2.0, 3.0])


def _problem():
    s = np.stack([np.zeros(3), S_A4], axis=1)
    cycles = np.tile([100.0, 50.0], (3, 1))
    return ilp.BitwidthProblem(("l0", "l1", "l2"), ((8, 8), (8, 4)), s, cycles)


SOLVE = AssignBitwidths(latency_budget=250 / 300)


def _estimate(choice):
    return sum(float(S_A4[i]) for i, name in enumerate(("l0", "l1", "l2"))
               if choice[name][1] == 4)


def test_an_estimate_that_holds_is_accepted_in_one_round():
    assignment, rounds = verify_and_cut(_problem(), SOLVE, _estimate)
    assert assignment.choice == {"l0": (8, 4), "l1": (8, 8), "l2": (8, 8)}
    assert rounds == [Round(predicted=1.0, measured=1.0, narrow=1, accepted=True)]


def test_measured_loss_above_the_estimate_cuts_and_solves_again():
    """l0's 4-bit input really costs 11 (an interaction the one-layer estimate missed): the
    first round measures 11 > 2 x 1, forbids l0 a4, and the second program picks l1."""
    def measure(choice):
        return _estimate(choice) + (10.0 if choice["l0"][1] == 4 else 0.0)

    assignment, rounds = verify_and_cut(_problem(), SOLVE, measure)
    assert assignment.choice == {"l0": (8, 8), "l1": (8, 4), "l2": (8, 8)}
    assert rounds == [Round(1.0, 11.0, 1, cut="l0 a4"),
                      Round(2.0, 2.0, 1, accepted=True)]


def test_the_cut_is_the_operand_whose_return_to_8_bits_helps_most():
    """Two narrow operands: widening l1's weight removes more measured noise than l0's input."""
    s = np.array([[0.0, 2.0, 1.0, 3.0], [0.0, 1.0, 2.0, 3.0]])  # optimum: l0 (8, 4), l1 (4, 8)
    cycles = np.tile([100.0, 60.0, 60.0, 20.0], (2, 1))
    problem = ilp.BitwidthProblem(("l0", "l1"), ((8, 8), (4, 8), (8, 4), (4, 4)), s, cycles)

    def measure(choice):
        return (5.0 * (choice["l0"][1] == 4) + 20.0 * (choice["l1"][0] == 4)
                + 1.0 * (choice["l0"][0] == 4) + 1.0 * (choice["l1"][1] == 4))

    assignment, rounds = verify_and_cut(problem, AssignBitwidths(latency_budget=0.7), measure,
                                        max_rounds=1)
    assert assignment.choice == {"l0": (8, 4), "l1": (4, 8)}
    assert rounds == [Round(2.0, 25.0, 2, cut="l1 w4", accepted=True)]


def test_without_an_acceptable_round_the_best_measured_is_kept():
    """Every choice measures 10x its estimate: each round cuts one layer until no assignment
    meets the budget; the first (least measured) choice is kept."""
    def measure(choice):
        return 10.0 * _estimate(choice)

    assignment, rounds = verify_and_cut(_problem(), SOLVE, measure)
    assert [r.cut for r in rounds] == ["l0 a4", "l1 a4", "l2 a4"]
    assert [r.accepted for r in rounds] == [True, False, False]
    assert assignment.choice["l0"] == (8, 4)
    _, capped = verify_and_cut(_problem(), SOLVE, measure, max_rounds=2)
    assert len(capped) == 2


def test_an_infeasible_first_program_still_raises():
    with pytest.raises(CompileError, match="cannot be met"):
        verify_and_cut(_problem(), AssignBitwidths(latency_budget=0.4), _estimate)
    with pytest.raises(ValueError, match="max_rounds=0"):
        verify_and_cut(_problem(), SOLVE, _estimate, max_rounds=0)
