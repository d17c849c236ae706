"""Units of information: natural logarithms to bits."""

from __future__ import annotations

import math

LN2 = math.log(2.0)  # nats in one bit
