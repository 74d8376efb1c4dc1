"""The compiled register-only loop (the benchmarks' control for the cores) against its plain-Python twin."""
import pytest

from navi._fast import _cores, _cores_ref


@pytest.mark.parametrize("iterations", [0, 1, 2, 3, 8, 9, 1000, 4097])
def test_compiled_loop_computes_what_the_reference_does(iterations):
    assert _cores.alu_loop(iterations) == _cores_ref.alu_loop(iterations)


@pytest.mark.parametrize("twin", [_cores, _cores_ref])
def test_negative_iterations_are_refused(twin):
    with pytest.raises(ValueError, match="iterations"):
        twin.alu_loop(-1)
