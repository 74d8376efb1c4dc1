"""The malloc tuning `navi serve` applies at start-up."""
import platform

import pytest

from navi.allocator import tune_allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_settings():
    assert tune_allocator() is True
