"""Value ranges of config fields, declared next to the fields and checked in one place.

A config dataclass lists its ranges in a class attribute::

    @dataclass(frozen=True)
    class OptimConfig:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.999)
        checks: ClassVar[dict] = {"lr": POSITIVE, "betas": each(UNIT_OPEN, length=2)}

and may define ``check(self)`` for rules that relate several fields. Fields that every model
family shares by name (``img_size``, ``depth``, ``num_heads``, ``*_rate``, ...) get their
range from :data:`NAME_RULES` unless the class declares its own, so all model configs are
checked alike. :func:`check_config` runs all of these over a config and every config nested
in it; :func:`vitkit.config.apply_overrides` (and so ``from_dict``, ``--set`` and
``create_model(**overrides)``) calls it on every config it returns, so a bad value is one
line before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vitkit.errors import VitkitError

MAX_IMG_SIZE = 4096  # pixels per side: a 4096 x 4096 RGB float image is 200 MB; 100000 would be 120 GB


@dataclass(frozen=True)
class Rule:
    """A named predicate: ``test(value)`` is True for valid values; ``text`` says which those are."""

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False) -> Rule:
    """A finite number (an int if ``integer``) in the interval given by ``lo``/``hi``."""
    def test(v):
        if not _is_number(v) or (integer and not isinstance(v, int)):
            return False
        above = lo is None or (v > lo if lo_open else v >= lo)
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    kind = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        return Rule(test, f"must be {kind} in {left}, {right}")
    if lo is not None:
        return Rule(test, f"must be {kind} {'>' if lo_open else '>='} {lo:g}")
    return Rule(test, f"must be {kind}" + ("" if hi is None else f" {'<' if hi_open else '<='} {hi:g}"))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule(v), f"{rule.text}, or none")


def each(rule: Rule, length: int | None = None, min_length: int = 0) -> Rule:
    """A list/tuple whose items all pass ``rule`` (with exactly ``length`` items if given)."""
    def test(v):
        if not isinstance(v, (list, tuple)) or len(v) < min_length or (length is not None and len(v) != length):
            return False
        return all(rule(x) for x in v)

    count = f"{length} values" if length is not None else "values"
    return Rule(test, f"must be {count}, each {rule.text.removeprefix('must be ')}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(map(str, choices))}")


POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
UNIT = number(0, 1)  # probabilities, fractions
UNIT_OPEN = number(0, 1, hi_open=True)  # betas, decays, smoothing
COUNT = number(1, integer=True)  # sizes, depths, epochs
NON_NEGATIVE_INT = number(0, integer=True)
SIDE = number(1, MAX_IMG_SIZE, integer=True)
SEED = number(0, 2**63 - 1, integer=True)
IMG_SIZE = Rule(lambda v: SIDE(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(SIDE(x) for x in v)),
                f"must be an integer in [1, {MAX_IMG_SIZE}] or a pair (H, W) of them")


# The fields model families share, by name (a class's own ``checks`` take precedence).
NAME_RULES: dict[str, Rule] = {
    "img_size": IMG_SIZE, "in_chans": COUNT, "num_classes": NON_NEGATIVE_INT,  # 0: headless (features)
    "embed_dim": COUNT, "depth": COUNT,
    "num_heads": COUNT, "patch_size": COUNT, "mlp_ratio": POSITIVE, "norm_eps": POSITIVE,
    "drop_rate": UNIT_OPEN, "attn_drop_rate": UNIT_OPEN, "drop_path_rate": UNIT_OPEN,
    "init_values": optional(POSITIVE), "hybrid_stages": COUNT, "conv_stem": each(COUNT),
    "conv_stem_strides": each(COUNT),
    "base_width": COUNT, "num_modules": optional(COUNT), "fpn_dim": COUNT, "head_dim": COUNT,
    "decoder_dim": COUNT, "num_tokens": COUNT, "token_channels": optional(COUNT), "pos_grid": COUNT,
    "pos_channels": COUNT, "qk_ratio": POSITIVE, "ffn_ratio": POSITIVE,
}


def _rules(cfg: Any) -> dict[str, Rule]:
    names = {f.name for f in dataclasses.fields(cfg)}
    return {**{n: r for n, r in NAME_RULES.items() if n in names}, **getattr(type(cfg), "checks", {})}


def check_config(cfg: Any, prefix: str = "") -> None:
    """Check ``cfg``'s ranges (its ``checks``, then :data:`NAME_RULES`) and ``check()``, then every
    nested config's; the first bad value is one VitkitError line naming its dotted key."""
    for name, rule in _rules(cfg).items():
        value = getattr(cfg, name)
        if not rule(value):
            raise VitkitError(f"{prefix}{name}={_show(value)} is out of range ({rule.text}); "
                              f"set a valid value (e.g. --set {prefix}{name}=...)")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, f"{prefix}{f.name}.")
    check = getattr(cfg, "check", None)
    if callable(check):
        check()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
