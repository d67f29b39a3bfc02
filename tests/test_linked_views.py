"""Linked views (app/selection.py): a selection made on one view -- a bucket bar, a confusion-matrix cell, a histogram
bin, the Samples table's filters -- becomes the session's current selection, which the Samples table, the ranked
misclassified list and the inspector's stepping then read; named slices travel in the URL.

Pure tests of the selection's text forms and of the derive helpers first; then AppTests on the shipped SST-2 default.
A chart's click is simulated as ``tests/test_app.py`` does for the map: the chart's selection event is put in session
state under its key, as the browser sends it, and every expected id set is computed by hand from the trace.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["DE3_APP_WARMUP"] = "0"

from streamlit.testing.v1 import AppTest

from app import selection
from app.selection import Selection, decode_ids, decode_slices, encode_ids, encode_slices
from tests.test_policies import random_trace

from .conftest import REPO

APP = str(REPO / "streamlit_app.py")
CHECKPOINT = REPO / "pretrained" / "sst2-minilm-l6"
BBC = "pretrained/bbc-minilm-l6"
shipped = pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file() or not (REPO / BBC / "config.json").is_file(),
                             reason="the shipped checkpoints are not present")


# ---- the selection's text forms (pure) ---------------------------------------------------------------------------


def test_ids_encode_as_runs_and_decode_back():
    assert encode_ids([]) == ""
    assert encode_ids([5]) == "5"
    assert encode_ids([10, 9, 7, 3, 2, 1, 2]) == "1-3,7,9-10"  # sorted, unique, runs
    for ids in ([], [0], [0, 1], [4, 6, 8], list(range(50)), [0, 2, 3, 4, 99]):
        assert decode_ids(encode_ids(ids), 100) == tuple(ids)
    assert decode_ids(" 1 , 3-4 ,, ", 10) == (1, 3, 4)  # spaces and empty parts are fine
    assert decode_ids("8-12,15", 10) == (8, 9)  # beyond the trace: dropped, not an error


@pytest.mark.parametrize("bad", ["a", "-3", "3-1", "1-2-3", "1_000", "１", "0x10", "1.5", "0-1000", "1;2"])
def test_malformed_ids_are_refused(bad):
    with pytest.raises(ValueError):
        decode_ids(bad, 100)


def test_slices_round_trip_and_every_problem_is_said_not_raised():
    slices = {"hard ones": (1, 2, 3, 7), "één-2": (0,)}
    text = encode_slices(slices)
    assert text == "hard ones:1-3,7;één-2:0"
    assert decode_slices(text, 10) == (slices, [])
    got, problems = decode_slices("ok:1;bad!:2;nocolon;x:a-b;empty:;far:500;part:8-12", 10)
    assert got == {"ok": (1,), "part": (8, 9)}
    assert len(problems) == 6
    assert any("'bad!:2'" in p for p in problems) and any("'nocolon'" in p for p in problems)
    assert any("'x'" in p and "not numbers" in p for p in problems)
    assert any("'empty'" in p and "no ids" in p for p in problems)
    assert any("'far'" in p and "none of its ids" in p for p in problems)
    assert any("'part'" in p and "dropped" in p for p in problems)
    many = ";".join(f"s{i}:{i}" for i in range(selection.MAX_SLICES + 5))
    got, problems = decode_slices(many, 100)
    assert len(got) == selection.MAX_SLICES and len(problems) == 1
    assert decode_slices("a:1" * 50_000, 10)[0] == {}  # an absurd link: ignored whole
    assert decode_slices("", 10) == ({}, [])


def test_a_selection_is_sorted_unique_and_masks_sample_ids():
    sel = Selection([5, 1, 5, 3], "test")
    assert sel.ids == (1, 3, 5) and len(sel) == 3
    assert sel.mask(np.array([0, 1, 2, 3, 4, 5])).tolist() == [False, True, False, True, False, True]
    assert sel.describe() == "3 samples — test" and Selection([2], "x").describe() == "1 sample — x"


def test_step_goes_to_the_next_or_previous_id():
    ids = (3, 8, 20)
    assert selection.step(ids, 0, +1) == 3 and selection.step(ids, 3, +1) == 8 and selection.step(ids, 9, +1) == 20
    assert selection.step(ids, 20, +1) is None and selection.step(ids, 3, -1) is None
    assert selection.step(ids, 10, -1) == 8 and selection.step(range(5), 2, -1) == 1


def test_chart_points_read_any_event_shape():
    assert selection.chart_points(None) == [] and selection.chart_points({}) == []
    assert selection.chart_points({"selection": {"points": None}}) == []
    assert selection.chart_points({"selection": {"points": [{"x": 1}, "junk"]}}) == [{"x": 1}]


# ---- the helpers behind the views (pure) -------------------------------------------------------------------------


def test_sample_table_and_its_filters_by_hand():
    from analysis import taxonomy
    from analysis.policies import ExitPolicy, decide_exits
    from app import derive

    trace = random_trace(n=120, num_layers=4, k=3, seed=3)
    policy = ExitPolicy("de3", tau=0.3)
    decision = decide_exits(trace.wide, policy)
    table = derive.sample_table(trace, decision, policy)
    names = np.asarray(trace.label_names)
    assert list(table.columns) == ["sample_id", "text", "true", "answer", "exit_layer", "bucket", "right", "entropy",
                                   "dr", "edr", "max_prob"]
    rows = np.arange(120)
    e = decision.exit_layer
    assert np.allclose(table["dr"], trace.wide["dr"][rows, e - 1])
    assert np.allclose(table["entropy"], trace.wide["entropy"][rows, e - 1])
    tax = taxonomy.error_buckets(trace, decision)
    assert (table["bucket"] == tax["bucket"]).all() and (table["right"] == (decision.pred == trace.labels)).all()

    got = derive.filter_samples(table, true=[names[0]], right=False, layers=(2, 4))
    hand = np.flatnonzero((trace.labels == 0) & (decision.pred != trace.labels) & (e >= 2))
    assert got["sample_id"].tolist() == hand.tolist()
    got = derive.filter_samples(table, answer=[names[1], names[2]], buckets=["wasted"])
    hand = np.flatnonzero(np.isin(decision.pred, [1, 2]) & (tax["bucket"] == "wasted").to_numpy())
    assert got["sample_id"].tolist() == hand.tolist()
    got = derive.filter_samples(table, query="1  SAMPLE")  # every word, anywhere, in any case
    assert got["sample_id"].tolist() == [i for i in range(120) if "1" in str(i)]
    assert len(derive.filter_samples(table)) == 120  # no filter: every row

    from analysis.tracer import trace_from_outputs

    logits = np.random.default_rng(0).normal(size=(3, 30, 2))
    plain = trace_from_outputs(logits, np.ones((3, 30, 2)), None)
    plain_table = derive.sample_table(plain, decide_exits(plain.wide, policy), policy)
    assert not {"true", "bucket", "right"} & set(plain_table.columns)
    assert len(derive.filter_samples(plain_table, true=["0"], right=True, buckets=["wasted"])) == 30  # ignored


def test_histogram_bins_are_those_drawn_and_a_bin_selects_its_samples():
    from app import charts, derive

    trace = random_trace(n=150, num_layers=4, k=2, seed=5)
    values = derive.signals(trace, 1.0)["edr"]
    correct = trace.wide["correct"]
    index, edges = derive.signal_bins(values, tau=0.05, log_x=True, bins=30)
    x = np.log10(np.clip(values.astype(np.float64), derive.LOG_FLOOR, None))
    for m in range(4):  # the same counts as np.histogram over the same edges
        assert np.bincount(index[:, m], minlength=30).tolist() == np.histogram(x[:, m], bins=edges)[0].tolist()
    fig = charts.signal_histograms(values, correct, tau=0.05, signal_label="EDR")
    layer, b = 3, int(np.bincount(index[~correct[:, 2], 2], minlength=30).argmax())
    wrong_bar = [t for t in fig.data if t.name == "wrong at this layer"][layer - 1]
    assert list(wrong_bar.customdata[b]) == [pytest.approx(10 ** ((edges[b] + edges[b + 1]) / 2)), layer, b, 0]
    rows = derive.bin_samples(index, [(layer, b, False)], correct=correct)
    assert len(rows) == wrong_bar.y[b]  # a click on that bar selects exactly the samples it counts
    hand = [i for i in range(150) if edges[b] <= x[i, 2] < edges[b + 1] and not correct[i, 2]]
    assert rows.tolist() == hand


# ---- the app (AppTest on the shipped default) --------------------------------------------------------------------


def app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"method": "pca", **query})
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def goto(at: AppTest, page: str) -> AppTest:
    return ok(at.switch_page(f"app/pages/{page}.py").run())


def click(at: AppTest, key: str, *points: dict) -> AppTest:
    """What the browser sends when points of the chart ``key`` are clicked (Plotly's selection event)."""
    at.session_state[key] = {"selection": {"points": list(points), "point_indices": [p.get("point_index", 0)
                                                                                       for p in points],
                                           "box": [], "lasso": []}}
    return ok(at.run())


def current(at: AppTest) -> Selection | None:
    return at.session_state["selection"] if "selection" in at.session_state else None


def shown_ids(at: AppTest) -> list[int]:
    """The sample ids in the Samples page's table."""
    return at.dataframe[0].value["sample_id"].astype(int).tolist()


def default_run():
    from analysis import taxonomy
    from analysis.policies import ExitPolicy, decide_exits
    from analysis.trace import load_trace

    trace = load_trace(CHECKPOINT / "trace-test")
    policy = ExitPolicy("de3", tau=0.2, lambda_=1.0)  # the app's opening policy
    decision = decide_exits(trace.wide, policy)
    return trace, decision, taxonomy.error_buckets(trace, decision, policy)


@shipped
def test_a_bucket_bar_selects_its_samples_and_the_table_shows_them():
    trace, decision, tax = default_run()
    premature = tax.loc[tax["bucket"] == "premature", "sample_id"].tolist()
    assert premature  # the default lets a few out too early
    at = goto(app(), "misclassified")
    at = click(at, "mis_buckets", {"curve_number": 0, "point_index": 2, "customdata": "premature"})
    sel = current(at)
    assert list(sel.ids) == premature and "premature exit" in sel.source
    assert any(m.value.startswith(f"**Selection**: {len(premature)} samples — bucket: premature exit")
               for m in at.sidebar.markdown)
    bars = [c for c in at.get("plotly_chart")][0]
    assert '"in the selection"' in bars.proto.spec  # the bar chart marks the selection
    assert at.toggle(key="mis_only_sel").value  # the ranked list is restricted to the selection
    at = goto(at, "samples")
    assert shown_ids(at) == premature
    assert any(f"**{len(premature)} of the selection's {len(premature)} samples**" in m.value for m in at.markdown)
    ok(at.toggle(key="smp_only_sel").set_value(False).run())
    assert len(shown_ids(at)) == trace.num_samples
    at = goto(at, "misclassified")  # a new selection elsewhere: the table shows it again
    at = click(at, "mis_confusion", {"curve_number": 1, "point_index": 2, "customdata": [1, 0]})
    assert current(at).source.endswith("true positive, answered negative")
    at = goto(at, "samples")
    assert at.toggle(key="smp_only_sel").value
    assert shown_ids(at) == np.flatnonzero((trace.labels == 1) & (decision.pred == 0)).tolist()


@shipped
def test_a_confusion_cell_selects_that_true_class_and_answer():
    trace, decision, _ = default_run()
    at = goto(app(), "misclassified")
    at = click(at, "mis_confusion", {"curve_number": 1, "point_index": 1, "customdata": [0, 1]})
    hand = np.flatnonzero((trace.labels == 0) & (decision.pred == 1)).tolist()
    assert list(current(at).ids) == hand and current(at).source == "confusion at the exit: true negative, answered positive"
    ok(at.segmented_control(key="mis_conf_which").set_value("final").run())
    at = click(at, "mis_confusion", {"curve_number": 1, "point_index": 2, "customdata": [1, 0]})
    final = np.asarray(trace.wide["pred"])[:, -1]
    assert list(current(at).ids) == np.flatnonzero((trace.labels == 1) & (final == 0)).tolist()
    at = click(at, "mis_confusion", {"curve_number": 1, "point_index": 2, "customdata": [1, 0]})  # the same event again
    ok(at.button(key="w_sel_clear").click().run())
    assert current(at) is None  # cleared, and the chart's unchanged event does not bring it back
    ok(at.run())
    assert current(at) is None


@shipped
def test_a_histogram_bin_selects_the_samples_in_it():
    from app import derive

    trace, decision, _ = default_run()
    at = goto(app(), "tradeoff")
    values = derive.signals(trace, 1.0)["edr"]
    x = np.log10(np.clip(values.astype(np.float64), 1e-6, None))
    lo, hi = min(x.min(), np.log10(0.2)), max(x.max(), np.log10(0.2))  # the range stretched to τ
    edges = np.linspace(lo, hi, 31)
    layer = 2
    wrong = ~trace.wide["correct"][:, layer - 1]
    b = int(np.histogram(x[wrong, layer - 1], bins=edges)[0].argmax())  # the tallest orange bar at layer 2
    hand = [i for i in range(trace.num_samples) if edges[b] <= x[i, layer - 1] < edges[b + 1] and wrong[i]]
    assert len(hand) > 1
    at = click(at, "to_hist", {"curve_number": 3, "point_index": b, "customdata": [0.1, layer, b, 0]})
    assert list(current(at).ids) == hand
    assert current(at).source.startswith("histogram: EDR (λ=1)") and "at layer 2, wrong there" in current(at).source
    spec = [c for c in at.get("plotly_chart")][1].proto.spec
    assert '"in the selection"' in spec  # the histograms outline the selection


@shipped
def test_the_samples_filters_select_their_rows_and_a_row_opens_the_inspector():
    trace, decision, tax = default_run()
    at = goto(app(), "samples")
    assert len(shown_ids(at)) == trace.num_samples
    ok(at.multiselect(key="smp_answer").set_value(["positive"]).run())
    ok(at.segmented_control(key="smp_right").set_value("wrong").run())
    ok(at.text_input(key="smp_query").input("film").run())
    texts = trace.samples["text"].str.lower()
    hand = [i for i in range(trace.num_samples)
            if decision.pred[i] == 1 and decision.pred[i] != trace.labels[i] and "film" in texts[i]]
    assert shown_ids(at) == hand
    ok(at.button(key="smp_select").click().run())
    assert list(current(at).ids) == hand
    assert current(at).source == "table: answer positive · wrong · text “film”"
    ok(at.text_input(key="smp_query").input("").run())  # within the selection, the filters narrow it further
    assert shown_ids(at) == hand
    at.session_state["smp_table_0"] = {"selection": {"rows": [1], "columns": [], "cells": []}}  # a click on row 2
    ok(at.run())
    assert at.title[0].value == "Sample inspector" and any(f"Sample {hand[1]}" in h.value for h in at.subheader)
    at = goto(at, "inspector")  # AppTest runs the page it was last sent to; a browser stays on the inspector
    assert any(f"Sample {hand[1]}" in h.value for h in at.subheader)
    ok(at.button(key="insp_next").click().run())  # ▶ steps through the selection
    assert any(f"Sample {hand[2]}" in h.value for h in at.subheader)
    ok(at.button(key="insp_prev").click().run())
    ok(at.button(key="insp_prev").click().run())
    assert any(f"Sample {hand[0]}" in h.value for h in at.subheader)
    assert at.button(key="insp_prev").disabled  # the first of the selection
    assert any("step through the **selection**" in c.value for c in at.caption)


@shipped
def test_a_slice_round_trips_through_the_url():
    at = goto(app(), "misclassified")
    at = click(at, "mis_buckets", {"curve_number": 0, "point_index": 4, "customdata": "hopeless"})
    hopeless = current(at).ids
    ok(at.text_input(key="w_slice_name").input("no layer knows").run())
    ok(at.button(key="w_slice_save").click().run())
    link = at.query_params["slices"]
    assert link == f"no layer knows:{encode_ids(hopeless)}"
    other = app(slices=link)  # the link, opened in another session
    assert other.session_state["slices"] == {"no layer knows": hopeless}
    assert other.query_params["slices"] == link and current(other) is None
    ok(other.button(key="w_slice_use_no layer knows").click().run())
    assert current(other).ids == hopeless and "no layer knows" in current(other).source
    other = goto(other, "samples")
    assert shown_ids(other) == list(hopeless)
    ok(other.button(key="smp_slice_del_no layer knows").click().run())
    assert "slices" not in other.query_params


@shipped
def test_a_bad_slice_in_a_link_is_one_warning():
    at = app(slices="good:1-3;bad name!:4;worse:x-y;far:5000")
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith("Slices in the link:"), warnings
    assert "bad name!" in warnings[0] and "'worse'" in warnings[0] and "'far'" in warnings[0]
    assert at.session_state["slices"] == {"good": (1, 2, 3)}
    at = goto(at, "samples")
    assert not at.warning  # said once


@shipped
def test_another_trace_forgets_the_selection_and_the_slices():
    at = app(slices="mine:1-5")
    ok(at.button(key="w_slice_use_mine").click().run())
    assert current(at).ids == (1, 2, 3, 4, 5)
    ok(at.segmented_control(key="ov_example").set_value(BBC).run())
    assert current(at) is None and at.session_state["slices"] == {}
    assert "slices" not in at.query_params
    assert any("Selection**: none" in c.value for c in at.sidebar.caption)


@shipped
def test_without_labels_the_table_has_no_label_columns_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("DE3_CACHE_DIR", str(tmp_path))
    rows = "id,text\n" + "".join(f"{i},The minister said the vote on the budget is set for day {i}\n" for i in range(12))
    at = app(ckpt=BBC)
    ok(at.radio(key="ov_kind").set_value("file").run())
    ok(at.file_uploader(key="ov_upload").upload("no labels.csv", rows.encode(), "text/csv").run())
    ok(at.button(key="ov_load").click().run())
    at = goto(at, "samples")
    table = at.dataframe[0].value
    assert len(table) == 12 and not {"true", "bucket", "right"} & set(table.columns)
    assert {"answer", "exit_layer", "entropy", "dr", "edr", "max_prob", "text"} <= set(table.columns)
    assert any("needs the true labels" in i.value for i in at.info)
    assert [w.key for w in at.multiselect] == ["smp_answer"]  # no class or bucket filter without labels
    ok(at.text_input(key="smp_query").input("day 1").run())
    ok(at.button(key="smp_select").click().run())
    assert current(at).ids == (1, 10, 11)  # "day" and "1": rows 1, 10 and 11
