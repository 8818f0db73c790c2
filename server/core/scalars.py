"""A JSON schema's strings and numbers → GBNF rules, within the bounds a grammar can enforce.

structured.py walks a schema's structure (objects, arrays, references); the leaves it meets land here.
"""

from __future__ import annotations

import math
from typing import Any

from .gbnf import FORMATS, GrammarRules
from .numbers import MAX_DIGITS, integer_bound, number_range

# Longest repetition a grammar may spell out: llama.cpp expands `x{0,n}` into n nested rules.
MAX_REPEAT = 4096


def string_rule(g: GrammarRules, schema: dict[str, Any], path: str) -> str:
    """A string, of a `format` or within `minLength`/`maxLength`."""
    fmt = schema.get("format")
    if fmt is not None:
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise g.fail(path, f"has format {fmt!r:.40}; supported formats: {', '.join(FORMATS)}")
        return g.quoted_format(fmt)
    lo, hi = count_bounds(g, schema, "minLength", "maxLength", path)
    if lo == 0 and hi is None:
        return g.base("string")
    char = g.base("char")
    return g.add(f'"\\"" {char}{{{lo},{"" if hi is None else hi}}} "\\""')


def count_bounds(g: GrammarRules, schema: dict[str, Any], lo_key: str, hi_key: str, path: str) -> tuple[int, int | None]:
    """A length or item count's bounds (`minLength`/`maxLength`, `minItems`/`maxItems`), each checked."""
    lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
    for key, value in ((lo_key, lo), (hi_key, hi)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise g.fail(path, f"has {key} {value!r}: it must be a non-negative integer")
        if value is not None and value > MAX_REPEAT:
            raise g.fail(path, f"has {key} {value}: a grammar can enforce at most {MAX_REPEAT}")
    if hi is not None and lo > hi:
        raise g.fail(path, f"has {lo_key} {lo} greater than {hi_key} {hi}")
    return lo, hi


def number_rule(g: GrammarRules, schema: dict[str, Any], path: str, *, integer: bool) -> str:
    """An integer or number within `minimum`/`maximum` and their exclusive forms."""
    bounds = {k: schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
    for key, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))) or value in (math.inf, -math.inf):
            raise g.fail(path, f"has {key} {value!r:.40}: it must be a finite number")
        if isinstance(value, float) and math.isnan(value):
            raise g.fail(path, f"has {key} NaN: it must be a finite number")
    if all(v is None for v in bounds.values()):
        return g.base("integer" if integer else "number")
    lo, lo_ex = integer_bound(bounds["minimum"], bounds["exclusiveMinimum"], upper=False)
    hi, hi_ex = integer_bound(bounds["maximum"], bounds["exclusiveMaximum"], upper=True)
    # Without bounds numbers have at most MAX_DIGITS digits: a bound past that bounds nothing,
    # and one that asks for more digits is refused rather than spelled out.
    huge = 10 ** MAX_DIGITS
    lo = None if lo is not None and lo <= -huge else lo
    hi = None if hi is not None and hi >= huge else hi
    if (lo is not None and lo >= huge) or (hi is not None and hi <= -huge):
        raise g.fail(path, f"asks for numbers of more than {MAX_DIGITS} digits, which a grammar does not write")
    if integer:  # integers: an exclusive bound is the next integer in
        lo, lo_ex = (None if lo is None else lo + lo_ex), False
        hi, hi_ex = (None if hi is None else hi - hi_ex), False
    body = number_range(lo, lo_ex, hi, hi_ex, fractions=not integer)
    if not body:
        raise g.fail(path, "allows no number at all (its minimum is above its maximum)")
    return g.add(body)
