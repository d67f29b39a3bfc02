"""The trace schema is checked where a trace enters: ``validate`` and ``load_trace`` name the first problem."""

import json

import numpy as np
import pytest

from analysis.trace import (
    META_FILE,
    SAMPLES_FILE,
    TRACE_FILE,
    TraceError,
    load_trace,
    validate,
)
from analysis.tracer import trace_from_outputs

N, L, K = 5, 3, 2  # 15 rows


def small_trace():
    rng = np.random.default_rng(0)
    return trace_from_outputs(rng.normal(size=(L, N, K)), rng.uniform(size=(L, N, K)), rng.integers(0, K, N))


def check(table):
    return validate(table, L, K, source="t.parquet")


def test_a_good_table_passes_unchanged():
    table = small_trace().table
    assert check(table) is table


def test_missing_column():
    with pytest.raises(TraceError, match="t.parquet: missing column.*dr"):
        check(small_trace().table.drop(columns=["dr"]))
    with pytest.raises(TraceError, match="dist_1"):
        check(small_trace().table.drop(columns=["dist_1"]))


def test_wrong_dtype():
    table = small_trace().table
    table["entropy"] = table["entropy"].astype("float64")
    with pytest.raises(TraceError, match="column entropy has dtype float64, expected float32"):
        check(table)


def test_missing_layer():
    table = small_trace().table
    with pytest.raises(TraceError, match="whole number"):  # one row gone: 14 rows
        check(table.drop(index=4).reset_index(drop=True))
    table.loc[4, "layer"] = 3  # sample 1 has layers 1, 3, 3: layer 2 missing
    with pytest.raises(TraceError, match="layers 1..3"):
        check(table)


def test_unsorted_samples():
    table = small_trace().table
    order = np.concatenate([np.arange(3, 6), np.arange(0, 3), np.arange(6, 15)])  # samples 1, 0, 2, ...
    with pytest.raises(TraceError, match="increasing order"):
        check(table.iloc[order].reset_index(drop=True))


@pytest.mark.parametrize("column, value", [("label", K), ("label", -1), ("pred", K)])
def test_out_of_range_labels(column, value):
    table = small_trace().table
    table.loc[7, column] = value
    with pytest.raises(TraceError, match=f"column {column} has values outside 0..{K - 1}"):
        check(table)


def save(trace, folder):
    folder.mkdir()
    trace.table.to_parquet(folder / TRACE_FILE, index=False)
    trace.samples.to_parquet(folder / SAMPLES_FILE, index=False)
    (folder / META_FILE).write_text(json.dumps(trace.meta), encoding="utf-8")
    return folder


def one_line_error(folder) -> str:
    with pytest.raises(TraceError) as info:
        load_trace(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_load_trace_round_trip(tmp_path):
    trace = small_trace()
    loaded = load_trace(save(trace, tmp_path / "t"))
    assert loaded.num_samples == N and loaded.num_layers == L
    np.testing.assert_array_equal(loaded.wide["dr"], trace.wide["dr"])


def test_load_trace_missing_folder_or_file(tmp_path):
    assert "not found" in one_line_error(tmp_path / "absent")
    folder = save(small_trace(), tmp_path / "t")
    (folder / SAMPLES_FILE).unlink()
    assert "missing samples.parquet" in one_line_error(folder)


@pytest.mark.parametrize("name", [TRACE_FILE, SAMPLES_FILE, META_FILE])
def test_load_trace_corrupt_file(tmp_path, name):
    folder = save(small_trace(), tmp_path / "t")
    (folder / name).write_bytes(b"PAR1 this is not\na parquet file \x00\xff")
    assert "unreadable" in one_line_error(folder)


def test_load_trace_meta_without_layers(tmp_path):
    trace = small_trace()
    del trace.meta["num_layers"]
    assert "num_layers" in one_line_error(save(trace, tmp_path / "t"))


def test_load_trace_samples_that_do_not_match(tmp_path):
    trace = small_trace()
    trace.samples = trace.samples.iloc[:-1]
    assert "does not match" in one_line_error(save(trace, tmp_path / "t"))


# ---- prediction-only traces of files without labels ----------------------------------------------------------


def unlabelled_trace():
    rng = np.random.default_rng(1)
    return trace_from_outputs(rng.normal(size=(L, N, K)), rng.uniform(size=(L, N, K)))


def test_an_unlabelled_trace_has_label_minus_one_and_nothing_correct(tmp_path):
    trace = unlabelled_trace()
    assert not trace.labelled and trace.meta["labelled"] is False
    assert (trace.table["label"] == -1).all() and not trace.table["correct"].any() and (trace.labels == -1).all()
    assert validate(trace.table, L, K, labelled=False) is trace.table
    loaded = load_trace(save(trace, tmp_path / "t"))
    assert not loaded.labelled and (loaded.labels == -1).all()
    np.testing.assert_array_equal(loaded.wide["pred"], trace.wide["pred"])
    assert small_trace().labelled and small_trace().meta["labelled"] is True


def test_unlabelled_validation_is_strict_both_ways():
    labelled, unlabelled = small_trace().table, unlabelled_trace().table
    with pytest.raises(TraceError, match="column label has values outside"):
        check(unlabelled)  # -1 labels in a trace that says it is labelled
    with pytest.raises(TraceError, match="unlabelled trace .* must have label -1"):
        validate(labelled, L, K, source="t.parquet", labelled=False)
    unlabelled.loc[4, "correct"] = True
    with pytest.raises(TraceError, match="correct"):
        validate(unlabelled, L, K, source="t.parquet", labelled=False)
    unlabelled.loc[4, "correct"], unlabelled.loc[5, "pred"] = False, K
    with pytest.raises(TraceError, match="column pred has values outside"):
        validate(unlabelled, L, K, source="t.parquet", labelled=False)


def test_load_trace_reads_the_labelled_key(tmp_path):
    old = small_trace()
    del old.meta["labelled"]  # a trace written before the key: labelled
    assert load_trace(save(old, tmp_path / "old")).labelled
    liar = unlabelled_trace()
    liar.meta["labelled"] = True  # says labelled, holds -1
    assert "column label has values outside" in one_line_error(save(liar, tmp_path / "liar"))


def test_reading_a_trace_imports_no_torch():
    """The read side (schema, ``Trace``, ``load_trace``) is light: the app's pages and any notebook that only reads
    traces never pay for torch."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, analysis.trace; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
