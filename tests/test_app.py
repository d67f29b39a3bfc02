"""Headless runs of every page of the Streamlit app (streamlit.testing.v1.AppTest) on the shipped default (SST-2),
and the one-click switch to the BBC example.

Each test checks that a page runs without an exception, that its key widgets and charts exist, and that moving
a widget changes what is shown. The model and trace caches are shared by all AppTest sessions of this process
(as by the sessions of a real server), so only the first test pays for loading them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

os.environ["DE3_APP_WARMUP"] = "0"  # no background numba compile while the tests run

from streamlit.testing.v1 import AppTest

from tests.test_policies import random_trace, toy_policy  # noqa: F401  (toy_policy: a fixture)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "streamlit_app.py")
CHECKPOINT = REPO / "pretrained" / "sst2-minilm-l6"  # the default
BBC = "pretrained/bbc-minilm-l6"
TIMEOUT = 180

pytestmark = pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file() or not (REPO / BBC / "config.json").is_file(),
                                reason="the shipped checkpoints pretrained/sst2-minilm-l6 and bbc-minilm-l6 are not present")


def app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"method": "pca", **query})  # PCA maps: no numba compile in the tests
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} among {[m.label for m in at.metric]}"
    return values[0]


def number(text: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?", text).group())


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(array) -> list:
    """A plotly JSON array: a plain list, or {"bdata": base64, "dtype": ...} for numpy data."""
    if isinstance(array, dict) and "bdata" in array:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def goto(at: AppTest, page: str) -> AppTest:
    return ok(at.switch_page(f"app/pages/{page}.py").run())


# ---- pages ---------------------------------------------------------------------------------------------------


def test_overview_shows_the_default_trace_and_reacts_to_tau():
    at = ok(app())
    assert "DE3-BERT" in at.title[0].value
    assert any("sst2-minilm-l6" in c.value and "872 samples" in c.value for c in at.caption)
    assert len(charts(at)) == 3  # each exit's metric, exit-layer distribution, the exit flow
    assert at.select_slider(key="w_tau_de3").value == 0.2
    assert at.selectbox(key="w_policy").value == "de3"
    before = number(metric(at, "speed-up"))
    assert {"accuracy", "speed-up", "saved fraction", "FLOPs ratio"} <= {m.label for m in at.metric}
    ok(at.select_slider(key="w_tau_de3").set_value(0.05).run())
    after = number(metric(at, "speed-up"))
    assert after < before  # a lower threshold lets fewer samples out early
    assert at.query_params["tau"] == "0.05"


def test_tradeoff_curves_table_histograms_and_no_exit_warning():
    at = goto(app(), "tradeoff")
    assert at.title[0].value == "Trade-off explorer"
    specs = charts(at)
    assert len(specs) == 2  # trade-off chart + histograms
    names = {t.get("name") for t in specs[0]["data"]}
    assert {"current setting", "oracle", "static exit"} <= names and any(n and n.startswith("DE3-BERT") for n in names)
    assert len(at.dataframe) == 1  # matched speed-up table
    before = number(metric(at, "speed-up"))
    current_x = values(next(t for t in specs[0]["data"] if t.get("name") == "current setting")["x"])[0]
    assert abs(current_x - before) < 0.01
    ok(at.select_slider(key="w_tau_de3").set_value(0.05).run())
    assert number(metric(at, "speed-up")) < before
    assert not at.warning
    ok(at.select_slider(key="w_tau_de3").set_value(0.0).run())  # τ = 0: nobody can exit early
    assert number(metric(at, "speed-up")) == 1.0
    assert any("No sample can exit before the last layer" in w.value for w in at.warning)


def test_tradeoff_other_policies_and_their_widgets():
    at = goto(app(), "tradeoff")
    ok(at.selectbox(key="w_policy").set_value("pabee").run())
    assert at.slider(key="w_patience").value == 2
    one = number(metric(at, "speed-up"))
    ok(at.slider(key="w_patience").set_value(4).run())
    assert number(metric(at, "speed-up")) < one
    ok(at.selectbox(key="w_policy").set_value("static").run())
    ok(at.slider(key="w_layer").set_value(3).run())
    assert metric(at, "speed-up") == "2.00×"
    ok(at.selectbox(key="w_policy").set_value("de3").run())  # back: DE3 kept its own τ
    assert at.select_slider(key="w_tau_de3").value == 0.2


def test_prototype_map_layers_colours_and_selection():
    at = goto(app(), "prototype_map")
    spec = charts(at)[0]
    protos = next(t for t in spec["data"] if t.get("name") == "class prototypes")
    assert len(values(protos["x"])) == 2  # negative and positive, projected with the samples
    samples = sum(len(values(t["x"])) for t in spec["data"] if t.get("customdata") is not None)
    assert samples == 872
    ok(at.slider(key="w_map_layer").set_value(1).run())
    assert at.query_params["map_layer"] == "1"
    moved = next(t for t in charts(at)[0]["data"] if t.get("name") == "class prototypes")
    assert values(moved["x"]) != values(protos["x"])  # another layer, another map
    ok(at.segmented_control(key="w_map_color").set_value("correct").run())
    assert any(t.get("name", "").startswith("right") for t in charts(at)[0]["data"])
    from app.selection import Selection

    at.session_state["selection"] = Selection((7,), "test")  # what a lasso on the map (or any page) makes
    ok(at.run())
    names = [t.get("name", "") for t in charts(at)[0]["data"]]
    assert any(n.startswith("r1 = ") for n in names) and any(n.startswith("r2 = ") for n in names)
    assert len(at.dataframe) == 2  # the selection's listing, sample 7's nearest neighbours
    assert at.button(key="map_inspect").label == "Inspect sample 7"
    ok(at.button(key="map_inspect").click().run())
    assert at.title[0].value == "Sample inspector" and any("Sample 7" in h.value for h in at.subheader)


def test_inspector_from_url_and_widgets():
    at = ok(app(sample="7"))
    at = goto(at, "inspector")
    assert any("Sample 7" in h.value for h in at.subheader)
    assert len(charts(at)) == 4  # signals, probabilities, distances, policy strip
    exit_before = metric(at, "exits at layer")
    ok(at.select_slider(key="w_tau_de3").set_value(0.0001).run())
    assert metric(at, "exits at layer") != exit_before
    ok(at.number_input(key="w_insp_id").set_value(12).run())
    assert any("Sample 12" in h.value for h in at.subheader)
    assert at.query_params["sample"] == "12"
    ok(at.text_input(key="w_insp_query").input("film").run())
    assert at.selectbox(key="w_insp_hit") is not None


def test_misclassified_buckets_and_jump_to_inspector():
    at = goto(app(), "misclassified")
    assert at.title[0].value == "Misclassified early exits"
    assert {"premature exits", "missed chances", "hopeless", "wasted layers"} <= {m.label for m in at.metric}
    assert len(charts(at)) == 2  # buckets, confusion matrix
    for bucket in ("hopeless", "missed", "premature", "wasted"):  # the first bucket with samples in it
        ok(at.segmented_control(key="w_mis_bucket").set_value(bucket).run())
        picks = [sb for sb in at.selectbox if (sb.key or "").startswith("mis_pick_")]
        if picks:
            break
    pick = picks[0].value
    ok(at.button(key="mis_open").click().run())
    assert at.title[0].value == "Sample inspector"
    assert any(f"Sample {pick}" in h.value for h in at.subheader)


def test_playground_real_early_exit():
    at = goto(app(), "playground")
    assert at.text_area(key="pg_text").value
    table = at.dataframe[0].value
    assert list(table["layer"]) == [1, 2, 3, 4, 5, 6]
    assert at.text_area(key="pg_text").value == "very bad ."  # examples come from the checkpoint's own trace
    assert {b.label for b in at.button if (b.key or "").startswith("pg_ex_")} == {"negative", "positive", "ambiguous"}
    assert any(s.value.startswith("Exited at layer") for s in at.success)
    ok(at.text_area(key="pg_text").input("a warm , funny and beautifully acted film .").run())
    assert "positive" in " ".join(at.dataframe[0].value["prediction"])
    ok(at.selectbox(key="w_policy").set_value("static").run())
    ok(at.slider(key="w_layer").set_value(6).run())  # nobody leaves early: said as such, not "6 instead of 6"
    assert any(s.value.startswith("No early exit") for s in at.success), [s.value for s in at.success]


def test_export_downloads_and_share_link():
    at = goto(app(policy="entropy", tau="0.05"), "export")
    keys = {b.key for b in at.get("download_button")}
    link = at.code[0].value
    assert "policy=entropy" in link and "tau=0.05" in link
    assert len(charts(at)) == 1
    assert {"ex_trace_csv", "ex_trace_parquet", "ex_samples_csv", "ex_exits", "ex_curves", "ex_html"} <= keys
    assert any("kaleido" in i.value for i in at.info) or "ex_png" in keys


def test_saved_settings_open_their_view_again():
    at = goto(app(policy="pcee", tau="0.03", patience="3", sample="12", ckpt=BBC), "export")
    saved = json.dumps(dict(at.query_params)).encode()
    other = goto(app(), "export")  # another session, at the defaults
    assert other.query_params["policy"] == "de3"
    ok(other.file_uploader(key="ex_load_settings").upload("de3-view.json", saved, "application/json").run())
    assert other.query_params["policy"] == "pcee" and other.query_params["patience"] == "3"
    assert other.query_params["ckpt"] == BBC and other.query_params["sample"] == "12"
    assert other.selectbox(key="w_policy").value == "pcee"
    ok(other.file_uploader(key="ex_load_settings").upload("bad.json", b"[1, 2]", "application/json").run())
    assert any("must hold a JSON object" in w.value for w in other.warning)


def test_exits_export_names_classes_and_texts():
    from analysis.policies import ExitPolicy, decide_exits
    from analysis.trace import load_trace
    from app.derive import exits_table

    trace = load_trace(CHECKPOINT / "trace-test")
    policy = ExitPolicy("de3", tau=0.2)
    table = exits_table(trace, decide_exits(trace.wide, policy), policy)
    assert {"true", "answer", "text", "bucket", "exit_layer"} <= set(table.columns)
    assert set(table["answer"]) <= {"negative", "positive"} and table["text"].iloc[0] == trace.samples["text"].iloc[0]


def test_cuda_is_offered_only_where_there_is_one():
    at = ok(app())
    import torch

    options = at.segmented_control(key="w_device").options
    assert ("cuda" in options) == torch.cuda.is_available()


def test_exit_flow_moves_with_tau():
    at = ok(app())
    flow = next(c for c in charts(at) if c["data"][0]["type"] == "sankey")["data"][0]
    into_2 = int(flow["node"]["label"][1].split("<br>")[1].split()[0])
    ok(at.select_slider(key="w_tau_de3").set_value(0.05).run())  # more careful: more samples go on to layer 2
    flow = next(c for c in charts(at) if c["data"][0]["type"] == "sankey")["data"][0]
    assert int(flow["node"]["label"][1].split("<br>")[1].split()[0]) > into_2
    assert flow["node"]["label"][0] == "layer 1<br>872 in"


def test_policy_diff_counts_equal_a_hand_count():
    """The page's counts and interval are those of derive.policy_diff / compare.paired_bootstrap on the same two
    settings, which a direct count over the trace reproduces."""
    import numpy as np

    from analysis.compare import paired_bootstrap
    from analysis.curves import best_setting_at, default_grid, sweep
    from analysis.policies import decide_exits
    from analysis.trace import load_trace

    at = goto(app(), "policy_diff")
    assert at.title[0].value == "Policy diff"
    got = {m.label: m.value for m in at.metric}
    trace = load_trace(CHECKPOINT / "trace-test")
    curves = sweep(trace, default_grid(trace))
    lam = at.selectbox(key="pd_lambda").value
    a, b = best_setting_at(curves, "de3", 2.0, lambda_=lam), best_setting_at(curves, "entropy", 2.0)
    right_a = decide_exits(trace.wide, a).pred == trace.labels
    right_b = decide_exits(trace.wide, b).pred == trace.labels
    assert int(got["only A right"]) == int((right_a & ~right_b).sum())
    assert int(got["only B right"]) == int((right_b & ~right_a).sum())
    boot = paired_bootstrap(trace, a, b)
    assert got["Δ accuracy (A − B)"] == f"{100 * boot['diff']:+.2f} pts"
    assert any(f"{100 * boot['low']:+.2f}" in m.value for m in at.markdown)
    assert len(charts(at)) == 2  # exit layers side by side, one sample's signals
    ok(at.select_slider(key="pd_target").set_value(3.0).run())
    ok(at.selectbox(key="pd_b").set_value("pabee").run())  # PABEE cannot reach 3x here: said, not raised
    assert any("cannot reach 3×" in w.value for w in at.warning)


def test_policy_diff_by_hand_on_a_small_trace():
    import numpy as np

    from analysis.policies import ExitPolicy
    from app.derive import diff_counts, policy_diff

    trace = _synthetic_trace([[1, 1, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    a, b = ExitPolicy("static", layer=1), ExitPolicy("static", layer=3)  # A answers at layer 1, B at layer 3
    diff = policy_diff(trace, a, b)
    assert diff["outcome"].tolist() == ["both right", "only B right", "only A right", "only B right", "both wrong"]
    assert diff_counts(diff) == {"only A right": 1, "only B right": 2, "both right": 1, "both wrong": 1}
    assert diff["exit_a"].tolist() == [1] * 5 and diff["exit_b"].tolist() == [3] * 5
    assert np.array_equal(diff["right_a"].to_numpy(), np.array([1, 0, 1, 0, 0], dtype=bool))


def test_the_default_shows_a_real_trade_off_and_wrong_early_exits():
    """SST-2 is the default because it teaches what BBC cannot: policies differ, and early exits go wrong."""
    at = goto(app(), "tradeoff")
    table = at.dataframe[0].value
    real = table[~table["policy"].str.startswith(("oracle", "static"))]
    at_2x = real["best at ≥2x"].tolist()
    assert len(set(at_2x)) > 1, at_2x  # the matched table differs between policies
    assert any("n = 872 samples" in c.value for c in at.caption)
    at = goto(at, "misclassified")
    assert number(metric(at, "premature exits")) > 0  # at the default policy


def test_one_click_to_the_bbc_example_and_back():
    at = ok(app())
    assert at.segmented_control(key="ov_example").value == "pretrained/sst2-minilm-l6"
    assert any("binary sentiment" in c.value and "five easy topics" in c.value for c in at.caption)
    ok(at.segmented_control(key="ov_example").set_value(BBC).run())
    assert any("bbc-minilm-l6" in c.value and "222 samples" in c.value for c in at.caption)
    assert at.query_params["ckpt"] == BBC
    at = goto(at, "prototype_map")
    protos = next(t for t in charts(at)[0]["data"] if t.get("name") == "class prototypes")
    assert len(values(protos["x"])) == 5  # the five BBC topics
    at = ok(at.switch_page("app/pages/overview.py").run())
    ok(at.segmented_control(key="ov_example").set_value("pretrained/sst2-minilm-l6").run())
    assert any("872 samples" in c.value for c in at.caption)


# ---- state ---------------------------------------------------------------------------------------------------


def test_two_sessions_do_not_share_settings():
    a, b = app(), app()
    ok(a.select_slider(key="w_tau_de3").set_value(0.3).run())
    ok(b.select_slider(key="w_tau_de3").set_value(0.001).run())
    ok(a.run())
    ok(b.run())
    assert a.session_state["policy"].tau["de3"] == 0.3
    assert b.session_state["policy"].tau["de3"] == 0.001
    assert number(metric(a, "speed-up")) > number(metric(b, "speed-up"))
    assert a.query_params["tau"] == "0.3" and b.query_params["tau"] == "0.001"


def test_url_settings_are_read_on_load():
    at = ok(app(policy="pcee", tau="0.03", patience="3"))
    assert at.selectbox(key="w_policy").value == "pcee"
    assert at.select_slider(key="w_tau_pcee").value == 0.03  # off the grid: inserted, not snapped
    assert at.slider(key="w_patience").value == 3
    assert at.query_params["policy"] == "pcee" and at.query_params["patience"] == "3"


def test_user_errors_are_shown_not_raised():
    at = ok(app(ckpt="/no/such/checkpoint"))
    assert any("outside the folders this app may read" in e.value for e in at.error)  # refused before it is looked at
    at = ok(app(ckpt="runs/no-such-checkpoint", policy="nonsense"))
    assert any("not found" in e.value for e in at.error)
    assert any("unknown policy" in w.value for w in at.warning)
    at = goto(at, "tradeoff")  # every page explains instead of crashing
    assert any("No trace to show" in e.value for e in at.error)


# ---- the pure helpers behind the pages ---------------------------------------------------------------------


def _synthetic_trace(correct_rows):
    """A trace whose per-layer right/wrong pattern is given: (N, L) of 0/1, label 0, K = 2."""
    import numpy as np

    from analysis.tracer import trace_from_outputs

    correct = np.asarray(correct_rows, dtype=bool)
    n, L = correct.shape
    logits = np.where(correct.T[..., None], [[3.0, 0.0]], [[0.0, 3.0]]).astype(np.float32)  # (L, N, 2)
    distances = np.ones((L, n, 2), dtype=np.float32)
    return trace_from_outputs(logits, distances, np.zeros(n, dtype=int))


def test_taxonomy_buckets_by_hand():
    import numpy as np

    from analysis.policies import ExitDecision
    from analysis.taxonomy import confusion, error_buckets

    trace = _synthetic_trace([
        [0, 1, 1, 1],  # exits at 4, right since layer 2 -> wasted 2 layers
        [0, 0, 1, 1],  # exits at 3, right first at 3 -> efficient
        [1, 0, 0, 1],  # exits at 2, wrong there, right at L -> premature
        [1, 1, 0, 0],  # exits at 3, wrong, wrong at L, right before -> missed chance
        [0, 0, 0, 0],  # wrong everywhere -> hopeless
        [1, 1, 1, 1],  # exits at 1 -> efficient
    ])
    exit_layer = np.array([4, 3, 2, 3, 4, 1])
    pred = np.asarray(trace.wide["pred"])[np.arange(6), exit_layer - 1]
    tax = error_buckets(trace, ExitDecision(exit_layer, pred))
    assert tax["bucket"].tolist() == ["wasted", "efficient", "premature", "missed", "hopeless", "efficient"]
    assert tax["wasted_layers"].tolist() == [2, 0, 0, 0, 0, 0]
    assert tax["settled_from"].tolist()[:2] == [2.0, 3.0]
    assert tax["first_correct"].fillna(-1).tolist() == [2, 3, 1, 1, -1, 1]
    assert confusion(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist() == [[1, 1], [0, 1]]


def test_matched_settings_pick_the_best_at_least_as_fast():
    import pandas as pd

    from app.derive import matched_settings

    curves = pd.DataFrame({
        "policy": ["entropy"] * 3 + ["static"] * 2, "label": "x",
        "tau": [0.1, 0.2, 0.3, float("nan"), float("nan")], "lambda_": float("nan"),
        "patience": float("nan"), "layer": [float("nan")] * 3 + [1.0, 2.0],
        "speedup": [1.5, 2.0, 3.0, 4.0, 2.0], "metric": [0.9, 0.85, 0.8, 0.7, 0.75],
        "saved_fraction": 0.0, "mean_exit_layer": 1.0, "flops_ratio": 1.0,
    })
    got = matched_settings(curves, 1.8)
    assert got["entropy"][0].tau == 0.2  # best metric among speed-ups >= 1.8
    assert got["static"][0].layer == 2
    assert matched_settings(curves, 5.0)["entropy"][0].tau == 0.3  # none fast enough: the fastest


def test_tau_grid_keeps_an_off_grid_value_from_a_link():
    from app.derive import LOG_GRID, tau_grid

    assert 0.0 in LOG_GRID and 1.0 in LOG_GRID and sorted(LOG_GRID) == list(LOG_GRID)
    assert 0.0123 in tau_grid("de3", 0.0123)
    assert all(0 <= t <= 1 for t in tau_grid("maxprob")) and 0.99 in tau_grid("maxprob")


def test_policy_state_opens_at_about_2x_and_keeps_each_policys_tau():
    from analysis.policies import ExitPolicy
    from app.state import PolicyState

    state = PolicyState()
    assert state.tau == {"de3": 0.2, "dr": 0.15, "entropy": 0.3, "maxprob": 0.95, "pcee": 0.7}  # PolicySpec.tau
    assert state.policy() == ExitPolicy("de3", tau=0.2, lambda_=1.0, patience=2, layer=2)
    state.adopt(ExitPolicy("maxprob", tau=0.9))
    state.name = "de3"
    assert state.policy().tau == 0.2 and state.tau["maxprob"] == 0.9  # switching back keeps each one's τ
    state.adopt(ExitPolicy("pabee", patience=9))
    assert state.policy(num_layers=4).patience == 3 and state.policy().tau == ExitPolicy.tau  # clamped; τ unused
    assert PolicyState().tau is not PolicyState().tau  # no session shares another's dict


def test_a_new_policy_reaches_the_app_with_no_change(toy_policy):
    """The toy policy of tests/test_policies.py, registered and nothing else: the sidebar's τ grid, the hint when
    nobody leaves early, the inspector's exit-test column, matched settings and the trade-off chart all take it."""
    from analysis.curves import default_grid, evaluate_policy, sweep
    from analysis.policies import ExitPolicy
    from app import charts as builders
    from app import derive

    trace = random_trace(n=80, num_layers=4, seed=2)
    nobody = ExitPolicy(toy_policy.name, tau=0.0)
    assert derive.tau_grid(toy_policy.name, 0.0123) == sorted({*derive.LOG_GRID, 0.0123})
    hint = derive.no_early_exit_hint(trace, nobody)
    assert hint.startswith("the smallest min(DR, entropy) at layers < 4 is") and "raise τ" in hint
    assert derive.exit_test_column(trace, nobody, 0, 4) == ["fails → continues"] * 3 + ["last layer answers"]
    curves = sweep(trace, default_grid(trace, lambdas=(1.0,), n_quantiles=10))
    assert derive.matched_settings(curves, 1.5)[toy_policy.name][0].name == toy_policy.name
    fig = builders.tradeoff_chart(curves, current=evaluate_policy(trace, nobody), current_label=nobody.describe(),
                                  lambda_=1.0, patience=2)
    assert [t.line.color for t in fig.data if t.name == "min(DR, entropy)"] == ["#999933"]


def test_trace_folders_never_point_into_the_repo_for_computed_traces(tmp_path, monkeypatch):
    from app import sources

    monkeypatch.setenv("DE3_CACHE_DIR", str(tmp_path))
    default = sources.TraceSource()
    if sources.shipped_trace(default) is not None:
        assert sources.trace_folder(default).name == "trace-test"
    other = sources.TraceSource(split="validation", max_samples=10)
    folder = sources.trace_folder(other)
    assert folder.parent == tmp_path / "traces"
    assert folder == sources.trace_folder(other)  # same source, same folder
    assert folder != sources.trace_folder(sources.TraceSource(split="validation", max_samples=11))


def test_analysis_does_not_import_streamlit():
    import subprocess
    import sys

    code = ("import sys, analysis.projection, analysis.trace, app.derive, app.sources, app.charts; "
            "print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
