"""The bit widths ECQx quantizes to, checked without TensorFlow (the CLI validates its arguments before loading it)."""

from __future__ import annotations

import numbers

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int) -> int:
    """`bits` as int if it is an integer (Python or numpy) in [2, 8], else a ValueError saying what is allowed."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"bits={bits!r} is not supported: ECQx quantizes kernels to an integer bit width from {MIN_BITS} to "
            f"{MAX_BITS} (codes must fit int8). Pass e.g. bits=4."
        )
    return int(bits)
