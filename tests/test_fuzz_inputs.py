"""Bad numbers at every way in: every numeric flag of every subcommand, and every number the app reads from its URL.

The flags are enumerated from ``analysis.commands.build_parser()``, so a new flag is covered without editing this file
(and a new numeric flag with a bare ``type=int`` / ``type=float`` fails ``test_every_numeric_flag_is_declared``).
Each flag gets ``VALUES``; the ones in ``ALWAYS_BAD`` must be refused by every flag, the others are refused or
accepted as the flag's declared ``Range`` (analysis/validate.py) says — computed here from Python's own reading
of the literal, not from the code under test. A refused value must give exit code 2, exactly one ``error:`` line
naming the flag, no traceback, and leave every input file as it was (hashed before and after). An accepted
value must parse. The app gets every URL number alone, with each value, on the shipped BBC checkpoint: a bad
value is one ``st.warning`` naming it (the setting keeps its default), never an exception.

``CLI_INPUTS`` and ``URL_INPUTS`` list every input tried; ``test_input_count`` prints how many.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from pathlib import Path

import pytest

os.environ["DE3_APP_WARMUP"] = "0"  # no background numba compile in the app tests

from analysis.commands import build_parser, main
from analysis.validate import Range
from tests.test_bad_inputs import _stderr_lines, assert_untouched, base, snapshot  # noqa: F401  (base: a fixture)

REPO = Path(__file__).resolve().parents[1]
BBC = "pretrained/bbc-minilm-l6"

ALWAYS_BAD = ("", " ", "abc", "nan", "NaN", "inf", "-inf", "Infinity", "-1", "-1e9", "0x10", "1,nan", "2,,3",
              "1" * 5000)
SOMETIMES_BAD = ("0", "1e30", "1.5", "1e3", "1" + "0" * 30, "1e400", "-0.0", "1,2")  # by the flag's declared range
VALUES = ALWAYS_BAD + SOMETIMES_BAD
NOT_NUMBERS = {"_column"}  # --text-column / --label-column: a name or an index, checked against the file's columns


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _typed_flags() -> list[tuple[str, argparse.Action]]:
    return [(cmd, action) for cmd, p in _subcommands().items() for action in p._actions
            if action.option_strings and action.type is not None]


NUMERIC_FLAGS = [(cmd, a.option_strings[-1]) for cmd, a in _typed_flags()
                 if getattr(a.type, "__name__", "") not in NOT_NUMBERS]
CLI_INPUTS = [(cmd, flag, value) for cmd, flag in NUMERIC_FLAGS for value in VALUES]


def _expected(rng: Range, text: str, is_list: bool):
    """The number(s) ``text`` names when they lie in ``rng`` (a tuple for a comma-separated flag), else None —
    by Python's own reading of the literal."""
    parts = text.split(",") if is_list else [text]
    values = [_in_range(rng, part.strip() if is_list else part) for part in parts]
    if any(v is None for v in values):
        return None
    return tuple(values) if is_list else values[0]


def _in_range(rng: Range, text: str):
    try:
        value = int(text) if rng.integer else float(text)
    except ValueError:
        return None
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not rng.allow_inf)):
        return None
    low_ok = rng.lo is None or value > rng.lo or (value == rng.lo and not rng.lo_open)
    high_ok = rng.hi is None or value < rng.hi or (value == rng.hi and not rng.hi_open)
    return value if low_ok and high_ok else None


def _action(cmd: str, flag: str) -> argparse.Action:
    return next(a for a in _subcommands()[cmd]._actions if flag in a.option_strings)


def _required_args(cmd: str, inputs: dict[str, str]) -> list[str]:
    """The subcommand's required flags, filled with real inputs (a checkpoint, a trace, a data file...)."""
    argv = []
    for action in _subcommands()[cmd]._actions:
        if action.required and action.option_strings:
            flag = action.option_strings[-1]
            argv += [flag, inputs.get(flag, inputs["--out"])]
    return argv


@pytest.fixture(scope="module")
def inputs(base, tmp_path_factory):  # noqa: F811
    """Real inputs every command could read, and an existing output a failing command must not touch."""
    root = tmp_path_factory.mktemp("fuzz-inputs")
    shutil.copytree(base["ckpt"], root / "ckpt")
    shutil.copytree(base["trace"], root / "trace")
    shutil.copy(base["csv"], root / "data.csv")
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("an existing output")
    (root / "glue").mkdir()
    return root, {"--checkpoint": str(root / "ckpt"), "--trace": str(root / "trace"), "--data": str(root / "data.csv"),
                  "--data-dir": str(root / "glue"), "--out": str(root / "out")}


def test_every_numeric_flag_is_declared():
    """A number on the command line is read by a declared range (``validate.flag`` / ``flag_list``), never a bare
    int/float, and the enumeration finds the flags of every subcommand."""
    bare = [f"{cmd} {a.option_strings[-1]}" for cmd, a in _typed_flags() if a.type in (int, float)]
    assert not bare, f"numeric flags without a declared range: {bare}"
    undeclared = [f"{cmd} {flag}" for cmd, flag in NUMERIC_FLAGS if not isinstance(getattr(_action(cmd, flag).type, "range", None), Range)]
    assert not undeclared, undeclared
    assert {cmd for cmd, _ in NUMERIC_FLAGS} == {"train", "evaluate", "trace", "attach", "curves", "compare", "bench",
                                                  "bench-memory", "study", "search"}


@pytest.mark.parametrize("cmd, flag", NUMERIC_FLAGS, ids=[f"{c} {f}" for c, f in NUMERIC_FLAGS])
def test_bad_number_on_the_command_line(cmd, flag, inputs, capsys):
    root, files = inputs
    action = _action(cmd, flag)
    rng, is_list = action.type.range, action.type.__name__ == "numbers"
    required = _required_args(cmd, files)
    before = snapshot(root)
    for value in VALUES:
        expected = None if value in ALWAYS_BAD else _expected(rng, value, is_list)
        if expected is not None:  # accepted: it parses to that number (the command is not run)
            got = getattr(_subcommands()[cmd].parse_args([*required, f"{flag}={value}"]), action.dest)
            assert got == ([expected] if action.nargs == "+" else expected), (flag, value, got)
            continue
        for argv in ([cmd, *required, flag, value], [cmd, *required, f"{flag}={value}"]):
            capsys.readouterr()
            code = main(argv)
            err = capsys.readouterr().err
            lines = _stderr_lines(err)
            assert code == 2, (argv[-2:], err[-300:])
            assert len(lines) == 1 and lines[0].startswith("error: "), (value, lines)
            assert "Traceback" not in err and len(lines[0]) < 400, lines[0][:500]
            assert lines[0].startswith(f"error: {flag}: ") and "must be" in lines[0], lines[0]
    assert_untouched(before, snapshot(root))


# ---- the app's URL ------------------------------------------------------------------------------------------------

URL_DEFAULTS = {"tau": ("policy", "tau"), "lambda": ("policy", "lambda_"), "patience": ("policy", "patience"),
                "layer": ("policy", "layer"), "sample": ("page", "sample"), "map_layer": ("page", "map_layer"),
                "max_samples": ("source", "max_samples")}


def _url_numbers() -> dict[str, Range]:
    from app.state import URL_NUMBERS

    return URL_NUMBERS


URL_INPUTS = [(key, value) for value in VALUES for key in URL_DEFAULTS]  # one URL per value, every number in it


def _setting(at, key: str):
    where, field = URL_DEFAULTS[key]
    if where == "policy":
        value = getattr(at.session_state["policy"], field)
        return value["de3"] if field == "tau" else value
    if where == "page":
        return getattr(at.session_state["page"], field)
    return at.session_state["source"].max_samples


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DE3_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DE3_APP_ROOTS", raising=False)
    return tmp_path


def test_url_numbers_are_the_ones_the_app_reads():
    assert set(_url_numbers()) == set(URL_DEFAULTS)


@pytest.fixture(scope="module")
def url_defaults(tmp_path_factory):
    """The settings a session starts with (what a bad URL number must leave as it is)."""
    from streamlit.testing.v1 import AppTest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DE3_CACHE_DIR", str(tmp_path_factory.mktemp("app-cache")))
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
        at.query_params.update({"ckpt": BBC, "method": "pca"})
        at.run()
    assert not at.exception and not at.warning, ([e.value for e in at.exception], [w.value for w in at.warning])
    return {key: _setting(at, key) for key in URL_DEFAULTS}


@pytest.mark.skipif(not (REPO / BBC / "config.json").is_file(), reason="the shipped BBC checkpoint is not present")
@pytest.mark.parametrize("value", VALUES, ids=[v if len(v) < 20 else f"{v[:5]}...({len(v)})" for v in VALUES])
def test_bad_numbers_in_the_url(value, app_env, url_defaults):
    """Every URL number set to ``value`` at once: each bad one is one warning naming it and keeps its default."""
    from streamlit.testing.v1 import AppTest

    shipped = snapshot(REPO / BBC)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.query_params.update({"ckpt": BBC, "method": "pca", **{key: value for key in URL_DEFAULTS}})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    for key, rng in _url_numbers().items():
        mine = [w.value for w in at.warning if w.value.startswith(f"ignored {key} in the link: ")]
        if value not in ALWAYS_BAD and _expected(rng, value, is_list=False) is not None:
            assert not mine and _setting(at, key) == _expected(rng, value, is_list=False), (key, mine)
            continue
        assert len(mine) == 1 and "must be" in mine[0] and "\n" not in mine[0] and len(mine[0]) < 300, (key, mine)
        assert _setting(at, key) == url_defaults[key], key
    assert_untouched(shipped, snapshot(REPO / BBC))
    assert not (app_env / "cache" / "traces").exists()  # a bad number never starts a new trace


def test_input_count():
    print(f"\nfuzz inputs: {len(CLI_INPUTS)} flag values ({len(NUMERIC_FLAGS)} numeric flags x {len(VALUES)} values; "
          f"each refused one run twice, as --flag value and --flag=value), {len(URL_INPUTS)} URL number values "
          f"({len(URL_DEFAULTS)} numbers x {len(VALUES)} values, in {len(VALUES)} app runs)")
    assert len(CLI_INPUTS) >= 400 and len(URL_INPUTS) >= 100
