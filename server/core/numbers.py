"""Numbers in a range as GBNF: the grammar behind a schema's `minimum`/`maximum` bounds."""

from __future__ import annotations

import math

# Digits in a number without bounds: as llama.cpp's converter, so no number runs on.
MAX_DIGITS = 16
_FRACTION = '("." [0-9]{1,15})?'
_NONZERO_FRACTION = '"." [0-9]{0,14} [1-9]'


def integer_bound(inclusive: float | None, exclusive: float | None, *, upper: bool) -> tuple[int | None, bool]:
    """The tightest integer bound from e.g. `minimum` and `exclusiveMinimum`, and whether it is exclusive.

    A bound that is not a whole number is rounded inward, so what the grammar allows is a
    subset of what the schema allows: always valid, slightly narrower. An upper bound is
    worked out as the lower bound of -x.
    """
    sign = -1 if upper else 1
    candidates = []
    if inclusive is not None:
        candidates.append((math.ceil(sign * inclusive), False))
    if exclusive is not None:
        flipped = sign * exclusive
        candidates.append((math.ceil(flipped), flipped == math.floor(flipped)))  # only a whole bound stays exclusive
    if not candidates:
        return None, False
    bound, is_exclusive = max(candidates)  # at equal bounds the exclusive one is tighter
    return sign * bound, is_exclusive


def number_range(lo: int | None, lo_ex: bool, hi: int | None, hi_ex: bool, *, fractions: bool) -> str:
    """A GBNF expression for the numbers x with lo <(=) x <(=) hi (None: unbounded).

    Integers when `fractions` is false. Empty when no number fits.
    """
    parts = []
    if hi is None or hi > 0 or (hi == 0 and not hi_ex):  # x >= 0
        if lo is None or lo < 0:
            parts.append(_nonnegative(0, False, hi, hi_ex, fractions))
        else:
            parts.append(_nonnegative(lo, lo_ex, hi, hi_ex, fractions))
    if lo is None or lo < 0:  # x < 0, written "-" y with y = -x > 0
        y_hi, y_hi_ex = (None if lo is None else -lo), lo_ex
        if hi is not None and hi < 0:
            y_lo, y_lo_ex = -hi, hi_ex
        else:
            y_lo, y_lo_ex = 0, True
        neg = _nonnegative(y_lo, y_lo_ex, y_hi, y_hi_ex, fractions)
        if neg:
            parts.append(f'"-" ({neg})')
    return " | ".join(f"({p})" for p in parts if p)


def _nonnegative(lo: int, lo_ex: bool, hi: int | None, hi_ex: bool, fractions: bool) -> str:
    """Numbers y >= 0 in the range, lo >= 0. With fractions, y = I.f where I is the integral part."""
    if not fractions:
        lo += lo_ex
        top = None if hi is None else hi - hi_ex
        return "" if top is not None and top < lo else _digits_range(lo, top)
    alts = []
    if lo_ex:  # I == lo needs a fraction above zero
        if hi is None or lo < hi:
            alts.append(f'"{lo}" {_NONZERO_FRACTION}')
        lo += 1
    # Integral parts lo..hi-1 take any fraction; hi itself only exactly (x <= hi).
    top = None if hi is None else hi - 1
    if top is None or top >= lo:
        alts.append(f"({_digits_range(lo, top)}) {_FRACTION}")
    if hi is not None and not hi_ex and hi >= lo:
        alts.append(f'"{hi}"')
    return " | ".join(alts)


def _digits_range(lo: int, hi: int | None) -> str:
    """Decimal integers lo..hi without leading zeros (hi None: up to MAX_DIGITS digits)."""
    a = str(lo)
    alts = []
    if hi is None:
        alts.append(_same_length(a, "9" * len(a)))
        if len(a) < MAX_DIGITS:
            alts.append(f"[1-9] [0-9]{{{len(a)},{MAX_DIGITS - 1}}}")
        return " | ".join(f"({x})" for x in alts)
    b = str(hi)
    while len(a) < len(b):
        alts.append(_same_length(a, "9" * len(a)))
        a = "1" + "0" * len(a)
    alts.append(_same_length(a, b))
    return " | ".join(f"({x})" for x in alts)


def _same_length(a: str, b: str) -> str:
    """Decimal strings of len(a) digits from a to b (a <= b, same length)."""
    if a == b:
        return f'"{a}"'
    i = 0
    while a[i] == b[i]:
        i += 1
    prefix = f'"{a[:i]}" ' if i else ""
    a, b = a[i:], b[i:]
    m = len(a) - 1
    if m == 0:
        return f"{prefix}[{a}-{b}]"
    zeros, nines = "0" * m, "9" * m
    tail = f"[0-9]{{{m}}}"
    if a[1:] == zeros and b[1:] == nines:
        return f"{prefix}[{a[0]}-{b[0]}] {tail}"
    alts = []
    first, last = int(a[0]), int(b[0])
    if a[1:] != zeros:
        alts.append(f'"{a[0]}" ({_same_length(a[1:], nines)})')
        first += 1
    if b[1:] != nines:
        high = f'"{b[0]}" ({_same_length(zeros, b[1:])})'
        last -= 1
    else:
        high = ""
    if first <= last:
        alts.append(f"[{first}-{last}] {tail}")
    if high:
        alts.append(high)
    return f"{prefix}({' | '.join(alts)})"
