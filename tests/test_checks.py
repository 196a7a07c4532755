"""Declared value ranges (vitkit.checks): each rule accepts its interval and refuses the rest."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from vitkit.checks import COUNT, IMG_SIZE, MAX_IMG_SIZE, POSITIVE, UNIT, UNIT_OPEN, check_config, each, optional
from vitkit.errors import VitkitError


@pytest.mark.parametrize("rule, good, bad", [
    (POSITIVE, [1e-12, 3, 1e30], [0, -1, math.inf, math.nan, "1", True, None]),
    (UNIT, [0, 0.5, 1], [-1e-9, 1.0000001, math.nan]),
    (UNIT_OPEN, [0, 0.999], [1, 1.5, -0.1]),
    (COUNT, [1, 7], [0, -3, 1.0, 2.5, True]),
    (optional(POSITIVE), [None, 2.0], [0, math.inf]),
    (each(UNIT_OPEN, length=2), [(0.9, 0.999), [0, 0.5]], [(0.9,), (2, 3), 0.9, "0.9,0.99", (0.9, math.nan)]),
    (IMG_SIZE, [1, 224, (224, 160), [MAX_IMG_SIZE, 8]], [0, -3, 100000, (224,), (224, 0), "abc", 2.0]),
])
def test_rules_accept_their_interval_only(rule, good, bad):
    assert all(rule(v) for v in good), [v for v in good if not rule(v)]
    assert not any(rule(v) for v in bad), [v for v in bad if rule(v)]


@dataclass(frozen=True)
class _Inner:
    p: float = 0.5
    checks: ClassVar[dict] = {"p": UNIT}


@dataclass(frozen=True)
class _Outer:
    n: int = 1
    inner: _Inner = field(default_factory=_Inner)
    lo: float = 0.0
    hi: float = 1.0
    checks: ClassVar[dict] = {"n": COUNT}

    def check(self) -> None:
        if self.lo > self.hi:
            raise VitkitError(f"lo={self.lo} > hi={self.hi}")


def test_check_config_names_the_dotted_field():
    check_config(_Outer())
    with pytest.raises(VitkitError, match=r"^n=0 is out of range \(must be an integer >= 1\); set a valid value "
                                          r"\(e.g. --set n=...\)$"):
        check_config(_Outer(n=0))
    with pytest.raises(VitkitError, match=r"^run.inner.p=1.5 is out of range \(must be a finite number in \[0, 1\]\)"):
        check_config(_Outer(inner=_Inner(p=1.5)), "run.")
    with pytest.raises(VitkitError, match="lo=2 > hi=1"):
        check_config(_Outer(lo=2, hi=1))
