"""The small helpers every capability shares, each in one place."""

from __future__ import annotations

import math

import pytest

from workbench.core.common.memory import format_bytes
from workbench.core.common.units import LN2


@pytest.mark.parametrize("n, text", [
    (28e9, "28 GB"), (9.1e9, "9.1 GB"), (1.5e12, "1,500 GB"), (538.1e6, "538 MB"),
    (53.8e6, "54 MB"), (5.4e6, "5.4 MB"), (96e3, "96 KB"), (1000, "1.0 KB"), (900, "900 bytes"),
    (0, "0 bytes"),
])
def test_a_size_reads_in_three_figures_at_most(n, text):
    assert format_bytes(n) == text


def test_bits_from_nats():
    assert 3 * LN2 == pytest.approx(math.log(8))
