"""The benchmarks' register-only control loop (benchmarks/cores.py) against its plain-Python twin."""
import pytest

from benchmarks import cores


@pytest.mark.parametrize("iterations", [0, 1, 2, 3, 8, 9, 1000, 4097])
def test_compiled_loop_computes_what_the_reference_does(iterations):
    assert cores.alu_loop(iterations) == cores.alu_loop_reference(iterations)


@pytest.mark.parametrize("twin", [cores.alu_loop, cores.alu_loop_reference])
def test_negative_iterations_are_refused(twin):
    with pytest.raises(ValueError, match="iterations"):
        twin(-1)
