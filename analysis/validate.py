"""Every number a user gives — a command-line flag, a config file field, a URL parameter, an API argument —
checked against one declaration.

A ``Range`` says what one number may be: an integer or a real number, its bounds, whether ``None`` (JSON
``null``) stands for "not set", and whether ±infinity passes. NaN never passes, and neither does infinity
unless the declaration says so. The tables below declare every range once:

    MODEL       ModelConfig fields          (config.py: ``__post_init__`` and ``from_dict``; ``train`` flags)
    TRAIN       TrainConfig fields          (config.py; ``train`` flags)
    POLICY      ExitPolicy fields           (policies.py; ``curves --lambdas``; the app's URL)
    PROJECTION  ProjectionConfig fields     (projection.py)
    RUN         numbers only a command takes (``trace --chunk-size``, ``compare --speedups``, ...; the app's URL)

and everything else reads them: ``check_fields`` validates a dataclass, ``Range.check`` one value (a
``BadNumber`` naming where it came from), ``flag``/``flag_list`` make argparse ``type=`` functions, and
``Range.parse`` reads text (a flag, a URL parameter). Messages are one line: where, the allowed range, the value.
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from .errors import DE3Error, one_line, shorten


class BadNumber(DE3Error, ValueError):
    """A number that is not a number, or outside its declared range."""


def _fmt(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


@dataclass(frozen=True)
class Range:
    """What one number may be.

    lo, hi : the bounds (None: unbounded on that side); ``lo_open`` / ``hi_open`` exclude the bound itself.
    integer : whole numbers only (``int``, not ``bool``); otherwise any real number.
    allow_none : ``None`` (JSON ``null``) passes, meaning "not set".
    allow_inf : +inf and -inf pass (a threshold's "everyone" and "no one"); NaN never does.
    """

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    allow_none: bool = False
    allow_inf: bool = False

    def describe(self, null: bool = True) -> str:
        """E.g. "an integer in [1, 65536]", "a number in (0, 1]", "a number >= 0"; ``null``: add "or null" where
        None passes (config files; not for text, which has no null)."""
        unbounded = self.lo is None or self.hi is None
        kind = "an integer" if self.integer else "a finite number" if unbounded and not self.allow_inf else "a number"
        if self.lo is not None and self.hi is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        else:
            text = kind
        if self.allow_inf:
            text += " (infinity allowed, not NaN)"
        return text + (" or null" if null and self.allow_none else "")

    def problem(self, value: Any) -> str | None:
        """None when ``value`` fits, else "must be <describe()>, got <value>"."""
        if value is None and self.allow_none:
            return None
        if not self._fits(value):
            got = shorten(value) + ("" if isinstance(value, (int, float)) and not isinstance(value, bool)
                                    else f" ({type(value).__name__})")
            return f"must be {self.describe()}, got {got}"
        return None

    def _fits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        try:
            x = value if self.integer else float(value)  # an integer range compares exactly
        except OverflowError:
            return False
        if isinstance(x, float) and (math.isnan(x) or (math.isinf(x) and not self.allow_inf)):
            return False
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))

    def check(self, value: Any, where: str, error: type[DE3Error] = BadNumber) -> Any:
        """``value`` if it fits; else ``error("<where> must be ..., got ...")``."""
        problem = self.problem(value)
        if problem:
            raise error(one_line(f"{where} {problem}"))
        return value

    def parse(self, text: str) -> int | float:
        """A number read from text (a flag, a URL parameter) and checked: an ``int`` for integer ranges (no
        "1.5", no "1e3"), else a ``float`` ("nan", "inf" and "1e400" are read, then refused unless allowed).
        Raises ``BadNumber("must be ..., got '...'")`` without saying where (the caller knows)."""
        try:
            value = int(text) if self.integer else float(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not self._fits(value):
            raise BadNumber(f"must be {self.describe(null=False)}, got {shorten(text)}")
        return value


# ---------------------------------------------------------------------------------------------------------
# The declarations: every number a user can give, once
# ---------------------------------------------------------------------------------------------------------

MAX_BATCH = 65_536  # samples in one forward pass
MAX_COUNT = 1_000_000_000  # samples, steps: beyond any data set this code can hold
MAX_LAYERS = 10_000  # exit layers, patience: beyond any encoder
MAX_SEED = 2**32 - 1  # numpy's legacy seed range
BATCH = Range(1, MAX_BATCH, integer=True)

MODEL: dict[str, Range] = {
    "proto_dim": Range(1, MAX_BATCH, integer=True, allow_none=True),  # None = the hidden size
    "dropout": Range(0, 1, hi_open=True, allow_none=True),  # 1 would drop everything; None = the backbone's
    "alpha": Range(0, 1000),  # 0 = the "w/o DAR" ablation
    "dar_margin": Range(0, 1000),
    "gamma": Range(0, 1, lo_open=True),  # a moving-average rate of 0 never moves
    "max_length": Range(8, 1_048_576, integer=True),  # the backbone's own position limit is checked on load
}

TRAIN: dict[str, Range] = {
    "epochs": Range(1, 10_000, integer=True),
    "batch_size": BATCH,
    "eval_batch_size": BATCH,
    "lr_backbone": Range(0, 1),  # 0 = a frozen backbone
    "lr_heads": Range(0, 1, lo_open=True),
    "weight_decay": Range(0, 1),
    "warmup_ratio": Range(0, 1, hi_open=True),
    "max_grad_norm": Range(0, lo_open=True),
    "seed": Range(0, MAX_SEED, integer=True),
    "max_steps": Range(1, MAX_COUNT, integer=True, allow_none=True),
    "num_threads": Range(1, 1024, integer=True, allow_none=True),
    "save_every": Range(0, MAX_COUNT, integer=True),  # 0 = at epoch ends only
}

POLICY: dict[str, Range] = {
    # τ: +inf exits everyone at layer 1 (max-probability: -inf), the ends of every sweep; NaN decides nothing
    "tau": Range(allow_inf=True),
    "lambda_": Range(0),
    "patience": Range(1, MAX_LAYERS, integer=True),
    "layer": Range(1, MAX_LAYERS, integer=True),  # 1-based
}

PROJECTION: dict[str, Range] = {
    "n_neighbors": Range(2, 10_000, integer=True),
    "min_dist": Range(0, 1),
    "seed": Range(0, MAX_SEED, integer=True),
    "max_points": Range(2, 10_000_000, integer=True),
}

RUN: dict[str, Range] = {
    "max_samples": Range(1, MAX_COUNT, integer=True, allow_none=True),  # the first N samples of a split
    "max_train_samples": Range(1, MAX_COUNT, integer=True, allow_none=True),
    "chunk_size": Range(1, 10_000_000, integer=True),  # samples per trace chunk
    "repeats": Range(1, 10_000, integer=True),
    "threads": Range(1, 1024, integer=True, allow_none=True),
    "sizes": Range(1, 100_000_000, integer=True),  # bench-memory sample counts
    "parallel": Range(1, 64, integer=True),
    "speedup": Range(1),  # a target speed-up: L / mean exit layer >= 1
    "max_speedup": Range(1, lo_open=True),
    "n_boot": Range(1, 1_000_000, integer=True),
    "seeds": Range(1, 20, integer=True),  # study: trained seeds per variant (each a full training run)
    "sample": Range(0, MAX_COUNT, integer=True),  # a 0-based sample index
}

MAX_LIST = 1000  # values in one comma-separated flag (--lambdas, --speedups)


# ---------------------------------------------------------------------------------------------------------
# Reading the declarations
# ---------------------------------------------------------------------------------------------------------


def check_fields(obj: Any, table: dict[str, Range], error: type[DE3Error] = BadNumber) -> None:
    """Check every field of dataclass ``obj`` that ``table`` declares; the message names "<Class> field <name>"."""
    for name, rng in table.items():
        rng.check(getattr(obj, name), f"{type(obj).__name__} field {name}", error)


def flag(rng: Range):
    """An argparse ``type=`` for one number in ``rng``; argparse names the flag in its error."""
    def parse(text: str):
        try:
            return rng.parse(text)
        except BadNumber as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.range = rng  # what the flag accepts (the tests read it)
    parse.__name__ = "number"
    return parse


def flag_list(rng: Range):
    """An argparse ``type=`` for comma-separated numbers, each in ``rng`` (at least one, at most ``MAX_LIST``)."""
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"must be comma-separated numbers, each {rng.describe()}, got {shorten(text)}")
        if len(parts) > MAX_LIST:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_LIST} comma-separated values, got {len(parts):,}")
        values = []
        for i, part in enumerate(parts, start=1):
            try:
                values.append(rng.parse(part))
            except BadNumber as exc:
                where = f" (value {i} of {len(parts)})" if len(parts) > 1 else ""
                raise argparse.ArgumentTypeError(f"each {exc}{where}") from None
        return tuple(values)

    parse.range = rng
    parse.__name__ = "numbers"
    return parse


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are a ``BadUsage`` (the CLI prints one ``error: ...`` line and
    exits 2, like every other user error), not a usage dump and ``SystemExit``. A value such as -1e9, -inf or
    -nan is read as a (bad) number, not as an unknown flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        raise BadUsage(one_line(f"{message}; see {self.prog} --help"))


class BadUsage(DE3Error, ValueError):
    """A command line argparse cannot read: an unknown flag, a missing one, a bad value."""
