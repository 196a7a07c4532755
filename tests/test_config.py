"""Typed overrides: parsing, nesting, and clear errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from vitkit.config import apply_overrides, coerce, from_dict, parse_set_args, to_dict
from vitkit.errors import VitkitError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    epochs: int = 3
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_string_overrides_are_typed_and_nested():
    cfg = apply_overrides(Outer(), parse_set_args(
        ["epochs=5", "flag=true", "mode=b", "limit=none", "inner.lr=3e-4", "inner.betas=0.8,0.9"]))
    assert cfg == Outer(epochs=5, flag=True, mode="b", limit=None, inner=Inner(lr=3e-4, betas=(0.8, 0.9)))
    assert apply_overrides(Outer(), {"limit": "7"}).limit == 7


def test_round_trip_through_dict():
    cfg = Outer(epochs=9, inner=Inner(lr=0.5))
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides, match", [
    ({"epoch": 1}, "unknown config field 'epoch'.*did you mean epochs"),
    ({"inner.lrr": 1}, "unknown config field 'inner.lrr'"),
    ({"epochs": "many"}, "bad value for 'epochs'"),
    ({"epochs": 1.5}, "bad value for 'epochs'"),
    ({"flag": "maybe"}, "bad value for 'flag'"),
    ({"mode": "c"}, "bad value for 'mode'"),
    ({"inner": 3}, "is a group"),
    ({"epochs.x": 3}, "has no sub-fields"),
])
def test_bad_overrides(overrides, match):
    with pytest.raises(VitkitError, match=match):
        apply_overrides(Outer(), overrides)


def test_bad_set_syntax():
    with pytest.raises(VitkitError, match="key=value"):
        parse_set_args(["epochs"])


def test_coerce_float_from_int_string():
    assert coerce("2", float) == 2.0 and isinstance(coerce("2", float), float)
