"""Maps you can read, across layers: aligned maps (a sample keeps its place), the figure's defaults (hollow stars
under the points, wrong on top, a view fitted to the samples, r1/r2 visible on a prototype, a path through the
layers, colour bars in the signal's units with τ marked) and the page (settings folded away, search, nearest
neighbours in the model's space, the shared selection, play).

The alignment is checked on the shipped SST-2 trace: the mean distance a sample moves between adjacent layers'
maps, aligned vs each layer mapped on its own (both centred and scaled the same way), on the pure function and once
through the page. Neighbours are checked against a brute-force argmin with the model's own distance function.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

os.environ["DE3_APP_WARMUP"] = "0"

from analysis.projection import (
    ProjectionConfig,
    displacement,
    nearest_samples,
    overlap_share,
    procrustes_rotation,
    project_layers,
)
from app import charts
from app.selection import Selection

from .conftest import REPO

CHECKPOINT = REPO / "pretrained" / "sst2-minilm-l6"
BBC = REPO / "pretrained" / "bbc-minilm-l6"
shipped = pytest.mark.skipif(not (CHECKPOINT / "trace-test" / "meta.json").is_file()
                             or not (BBC / "config.json").is_file(), reason="the shipped checkpoints are not present")
ALIGNED_AT_MOST = 0.7  # aligned displacement / independent displacement: "clearly smaller" (measured 0.44-0.51)


def sst2():
    from analysis.trace import load_trace

    return load_trace(CHECKPOINT / "trace-test")


def rotation(theta: float, reflect: bool = False) -> np.ndarray:
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return r @ np.diag([1.0, -1.0]) if reflect else r


# ---- aligned maps (pure) -------------------------------------------------------------------------------------------


def test_procrustes_recovers_a_known_rotation_and_a_reflection():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 2))
    a -= a.mean(axis=0)
    for r in (rotation(0.7), rotation(2.5, reflect=True)):
        found = procrustes_rotation(a, a @ r)
        np.testing.assert_allclose(found, r, atol=1e-5)
        np.testing.assert_allclose(found @ found.T, np.eye(2), atol=1e-5)  # orthogonal: no stretching


def test_a_layer_that_is_only_turned_in_d_dimensions_keeps_every_sample_in_place_when_aligned():
    """Layer 2 = layer 1 under a random orthogonal map of R^d: PCA may flip its axes, alignment undoes that."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(80, 6)) * [5, 3, 1, 1, 0.5, 0.2]
    protos = rng.normal(size=(3, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    stack, pstack = np.stack([emb, emb @ q]), np.stack([protos, protos @ q])
    aligned = project_layers(stack, pstack, ProjectionConfig(method="pca"))
    np.testing.assert_allclose(displacement(aligned.points), [0.0], atol=1e-4)
    np.testing.assert_allclose(aligned.proto_points[0], aligned.proto_points[1], atol=1e-4)


def test_prototypes_follow_their_layers_transform():
    """Aligned = unaligned turned by one orthogonal matrix per layer, the same for samples and prototypes."""
    rng = np.random.default_rng(2)
    stack, pstack = rng.normal(size=(4, 60, 8)), rng.normal(size=(4, 3, 8))
    aligned = project_layers(stack, pstack, ProjectionConfig(method="pca"))
    alone = project_layers(stack, pstack, ProjectionConfig(method="pca", align=False))
    assert aligned.aligned and not alone.aligned and aligned.method == "pca"
    for m in range(1, 5):
        a, ap = aligned.layer(m)
        b, bp = alone.layer(m)
        r = procrustes_rotation(b, a)
        np.testing.assert_allclose(b @ r, a, atol=1e-4)  # the samples: exactly a turn of the unaligned map
        np.testing.assert_allclose(bp @ r, ap, atol=1e-4)  # the prototypes: the same turn
    assert aligned.points.shape == (4, 60, 2) and aligned.proto_points.shape == (4, 3, 2)
    np.testing.assert_allclose(np.sqrt((alone.points ** 2).sum(axis=2).mean(axis=1)), 1.0, rtol=1e-4)  # unit RMS


def test_the_aligned_stack_lies_wide():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(100, 4)) * [1, 8, 1, 1]  # long along one axis
    stack = base + 0.1 * rng.normal(size=(3, 100, 4))  # the same samples at three layers
    maps = project_layers(stack, rng.normal(size=(3, 2, 4)), ProjectionConfig(method="pca"))
    spread = maps.points.reshape(-1, 2).std(axis=0)
    assert spread[0] > 2 * spread[1]


@shipped
def test_aligned_pca_maps_move_samples_far_less_than_independent_ones():
    trace = sst2()
    aligned = project_layers(trace.embeddings(), trace.prototypes(), ProjectionConfig(method="pca"))
    alone = project_layers(trace.embeddings(), trace.prototypes(), ProjectionConfig(method="pca", align=False))
    ratio = displacement(aligned.points).mean() / displacement(alone.points).mean()
    assert ratio < ALIGNED_AT_MOST, ratio  # 0.51 on the shipped trace
    again = project_layers(trace.embeddings(), trace.prototypes(), ProjectionConfig(method="pca"))
    np.testing.assert_array_equal(aligned.points, again.points)  # deterministic


@shipped
def test_aligned_umap_maps_move_samples_far_less_than_independent_ones():
    trace = sst2()
    rows = np.sort(np.random.default_rng(0).choice(trace.num_samples, 200, replace=False))
    emb = np.asarray(trace.embeddings())[:, rows]
    config = ProjectionConfig(method="umap")
    aligned = project_layers(emb, trace.prototypes(), config)
    alone = project_layers(emb, trace.prototypes(), replace(config, align=False))
    ratio = displacement(aligned.points).mean() / displacement(alone.points).mean()
    assert ratio < ALIGNED_AT_MOST, ratio  # 0.44 on this subsample


# ---- neighbours in the model's space (pure) --------------------------------------------------------------------------


@shipped
@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
def test_nearest_neighbours_equal_a_brute_force_argmin_with_the_models_distance(distance):
    import torch

    from analysis.signals import pairwise_distance

    emb = np.asarray(sst2().embeddings(3), dtype=np.float32)
    emb -= emb.mean(axis=0)  # centred: this euclidean model's raw cosines are all within 1e-5 of each other
    for i in (0, 7, 500):
        rows, dist = nearest_samples(emb, i, k=5, distance=distance)
        brute = pairwise_distance(torch.from_numpy(emb), torch.from_numpy(emb[i:i + 1]), distance)[:, 0].numpy()
        brute[i] = np.inf  # not its own neighbour
        assert rows[0] == int(np.argmin(brute))
        assert i not in rows and (np.diff(dist) >= 0).all() and len(rows) == 5
        np.testing.assert_allclose(dist, brute[rows], rtol=1e-3, atol=1e-4)


def test_neighbours_of_a_tiny_set_and_ties_by_row():
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    rows, dist = nearest_samples(emb, 0, k=10)
    assert rows.tolist() == [1, 2, 3] and dist.tolist() == [1.0, 1.0, 3.0]


def test_overlap_share_says_when_points_pile_up():
    assert overlap_share(np.zeros((50, 2)) + [[1.0, 2.0]]) == 1.0
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10)), axis=-1).reshape(-1, 2).astype(float)
    assert overlap_share(grid) == 0.0  # 60 px apart at 600 px


# ---- the figure --------------------------------------------------------------------------------------------------


def figure(n: int = 40, **kwargs):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(n, 2))
    protos = kwargs.pop("protos", np.array([[-1.0, 0.0], [1.0, 0.0]]))
    base = dict(sample_ids=np.arange(n), color=np.arange(n) % 2, color_label="right / wrong",
                categories=["right", "wrong"], category_colors=[charts.RIGHT, charts.WRONG],
                class_names=["neg", "pos"], hover=[f"s{i}" for i in range(n)])
    base.update(kwargs)
    return charts.prototype_map(points, protos, **base), points


def test_hollow_stars_under_the_points_and_wrong_on_top():
    fig, _ = figure()
    names = [t.name for t in fig.data]
    assert names[0] == "class prototypes" and fig.data[0].marker.symbol == "star-open"  # drawn first: underneath
    assert names.index("wrong (20)") > names.index("right (20)")  # wrong drawn after right: on top
    assert {a.text for a in fig.layout.annotations} >= {"<b>neg</b>", "<b>pos</b>"}  # names on top
    size, opacity = charts.map_point_style(40)
    assert fig.data[1].marker.size == size and fig.data[1].marker.opacity == opacity
    assert charts.map_point_style(5000) < charts.map_point_style(500) < charts.map_point_style(100)  # denser: smaller


def test_the_view_fits_the_samples_and_a_far_prototype_is_drawn_at_its_edge():
    fig, points = figure(protos=np.array([[-1.0, 0.0], [60.0, 0.0]]))
    x0, x1 = fig.layout.xaxis.range
    assert x0 <= points[:, 0].min() and x1 >= points[:, 0].max() and x1 < 10  # not stretched to x = 60
    stars = fig.data[0]
    assert x0 < stars.x[1] < x1  # drawn inside, at the edge
    assert "outside" in stars.hovertext[1] and "outside" not in stars.hovertext[0]
    assert any("pos</b> (outside the view)" in a.text for a in fig.layout.annotations)


def test_r1_and_r2_stay_visible_when_a_sample_sits_on_its_prototype():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    protos = np.array([points[4], [2.0, 2.0]])  # sample 4 exactly on its predicted class's prototype
    fig = charts.prototype_map(points, protos, sample_ids=np.arange(30), color=np.zeros(30, int), color_label="c",
                               categories=["a"], class_names=["a", "b"], hover=[""] * 30,
                               focus=dict(index=4, r1_class=0, r2_class=1, r1=0.25, r2=0.75, dr=0.3))
    r1 = next(t for t in fig.data if t.name.startswith("r1 = 0.25"))
    assert list(r1.marker.size) == [0, 34] and r1.marker.symbol == "circle-open"  # a ring on the prototype
    assert any("on its prototype" in (a.text or "") and "r1 = 0.25" in a.text for a in fig.layout.annotations)
    assert any(t.name.startswith("r2 = 0.75") for t in fig.data)


def test_a_path_through_the_layers_marks_the_current_one():
    trail = np.array([[0.0, 0.0], [0.5, 0.2], [1.0, 1.0], [1.5, 0.5]])
    fig, _ = figure(focus=dict(index=0, r1_class=0, r2_class=1, r1=1.0, r2=2.0, dr=0.4),
                    path=dict(points=trail, layer=3))
    path = next(t for t in fig.data if t.name == "its path, layers 1–4")
    assert list(path.x) == trail[:, 0].tolist() and list(path.text) == ["1", "2", "<b>3</b>", "4"]
    assert fig.layout.xaxis.range[1] >= 1.5  # the view holds the whole path


def test_search_neighbours_and_selection_are_drawn_as_rings():
    fig, _ = figure(selected=[1, 2, 3], search=dict(ids=[5, 6], label="search “x” (2)"),
                    neighbours=dict(ids=[8, 9, 10], label="3 nearest"))
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["selected (3)"].customdata) == [1, 2, 3]
    assert list(by_name["search “x” (2)"].customdata) == [5, 6]
    assert list(by_name["3 nearest"].customdata) == [8, 9, 10]
    right = by_name["right (20)"]
    assert list(right.selectedpoints) == [1]  # ids 1, 3 are "wrong" (odd); id 2 is the second "right" point


def test_colour_bar_ticks_are_values_not_exponents():
    vals, text = charts.colorbar_ticks(np.log10(0.0004), np.log10(0.9), log=True)
    assert text == ["0.001", "0.01", "0.1"]
    np.testing.assert_allclose(vals, np.log10([0.001, 0.01, 0.1]))
    _, narrow = charts.colorbar_ticks(np.log10(0.03), np.log10(0.7), log=True)
    assert narrow == ["0.05", "0.1", "0.2", "0.5"]  # under three decades: 1, 2, 5 steps
    assert charts.colorbar_ticks(0.1, 0.9, log=False) is None  # linear: Plotly's ticks are values already


def test_edr_colour_bar_in_its_units_with_tau_marked():
    edr = np.geomspace(1e-4, 0.9, 40)
    fig, _ = figure(color=edr, categories=None, color_label="EDR at this layer", log_color=True, tau=0.2)
    bar = fig.data[1].marker.colorbar
    assert list(bar.ticktext) == ["0.0001", "0.001", "0.01", "0.1"] and "log scale" in bar.title.text
    assert not any("e-" in t for t in bar.ticktext)
    cmin, cmax = fig.data[1].marker.cmin, fig.data[1].marker.cmax
    tau_line = next(s for s in fig.layout.shapes if s.name == "tau")
    assert tau_line.y0 == tau_line.y1 == pytest.approx((np.log10(0.2) - cmin) / (cmax - cmin))
    assert tau_line.xref == "paper" and tau_line.xsizemode == "pixel"
    assert any(a.text == "<b>τ = 0.2</b>" for a in fig.layout.annotations)


def test_dr_colour_bar_is_linear_and_tau_outside_the_values_widens_it():
    dr = np.linspace(0.3, 0.6, 40)
    fig, _ = figure(color=dr, categories=None, color_label="DR at this layer", tau=0.15)
    marker = fig.data[1].marker
    assert marker.cmin == pytest.approx(0.15) and marker.cmax == pytest.approx(0.6)  # τ is on the bar
    assert marker.colorbar.tickvals is None and "log" not in marker.colorbar.title.text
    assert next(s for s in fig.layout.shapes if s.name == "tau").y0 == pytest.approx(0.0)
    no_tau, _ = figure(color=dr, categories=None, color_label="DR at this layer")
    assert not [s for s in no_tau.layout.shapes if s.name == "tau"]


# ---- the page ------------------------------------------------------------------------------------------------------


def page(**query):
    from tests.test_app import app, goto

    return goto(app(**query), "prototype_map")


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def spec(at) -> dict:
    return json.loads(at.get("plotly_chart")[0].proto.spec)


def positions(at) -> dict[int, tuple[float, float]]:
    """Sample id -> (x, y) on the page's map (the class traces; no highlights drawn)."""
    from tests.test_app import values

    out = {}
    for t in spec(at)["data"]:
        if t.get("customdata") is not None and not t.get("name", "").startswith(("selected", "search", "sample")):
            for i, x, y in zip(values(t["customdata"]), values(t["x"]), values(t["y"])):
                out[int(i)] = (x, y)
    return out


def flat(node, out=None) -> list:
    out = [] if out is None else out
    children = getattr(node, "children", None)
    for child in (children.values() if isinstance(children, dict) else children or []):
        out.append(child)
        flat(child, out)
    return out


@shipped
def test_the_map_comes_before_any_form_and_its_settings_are_folded_away():
    at = ok(page())
    kinds = [getattr(e, "type", None) for e in flat(at.main)]
    assert kinds.index("plotly_chart") < kinds.index("form")  # nothing to fill in above the map
    settings = next(e for e in at.expander if e.label.startswith("Projection settings"))
    assert not settings.proto.expanded and "form" in [getattr(e, "type", None) for e in flat(settings)]
    assert "PCA" in settings.label and "layers aligned" in settings.label
    assert any("of layer 3's 872 samples" in c.value for c in at.caption)


@shipped
def test_the_pages_maps_are_aligned_from_layer_to_layer():
    at = ok(page())

    def moved(at) -> float:
        ok(at.slider(key="w_map_layer").set_value(2).run())
        a = positions(at)
        ok(at.slider(key="w_map_layer").set_value(3).run())
        b = positions(at)
        assert len(a) == len(b) == 872
        return float(np.mean([np.hypot(a[i][0] - b[i][0], a[i][1] - b[i][1]) for i in a]))

    aligned = moved(at)
    at.session_state["map_config"] = replace(at.session_state["map_config"], align=False)
    alone = moved(ok(at.run()))
    assert aligned < ALIGNED_AT_MOST * alone, (aligned, alone)


@shipped
def test_a_lasso_on_the_map_is_the_apps_selection_and_any_selection_is_highlighted():
    at = ok(page())
    at.session_state["map_chart"] = {"selection": {"points": [{"curve_number": 1, "point_index": 0, "customdata": 12},
                                                              {"curve_number": 2, "point_index": 3, "customdata": 40}],
                                                   "point_indices": [0, 3], "box": [], "lasso": [{"x": [0], "y": [0]}]}}
    ok(at.run())
    sel = at.session_state["selection"]
    assert sel.ids == (12, 40) and sel.source == "map lasso at layer 3"
    assert any(m.value.startswith("**2 selected**") for m in at.markdown)
    ok(at.button(key="map_clear").click().run())
    assert at.session_state["selection"] is None
    at.session_state["selection"] = Selection((3, 5, 9), "bucket: premature exit")  # made on another page
    ok(at.run())
    rings = next(t for t in spec(at)["data"] if t.get("name") == "selected (3)")
    from tests.test_app import values

    assert sorted(values(rings["customdata"])) == [3, 5, 9]
    assert any("bucket: premature exit" in m.value for m in at.markdown)


@shipped
def test_search_rings_the_matching_texts_or_ids_and_selects_them():
    from app.derive import search_samples
    from tests.test_app import values

    trace = sst2()
    expected = search_samples(trace.samples, "funny")["sample_id"].tolist()
    at = ok(page())
    ok(at.text_input(key="w_map_search").input("funny").run())
    ring = next(t for t in spec(at)["data"] if t.get("name", "").startswith("search “funny”"))
    assert sorted(values(ring["customdata"])) == sorted(expected) and len(expected) > 5
    ok(at.button(key="map_search_select").click().run())
    assert list(at.session_state["selection"].ids) == sorted(expected)
    ok(at.text_input(key="w_map_search").input("7, 12").run())
    ring = next(t for t in spec(at)["data"] if t.get("name", "").startswith("search id 7, 12"))
    assert sorted(values(ring["customdata"])) == [7, 12]


@shipped
def test_a_selected_samples_path_and_its_nearest_neighbours_in_the_models_space():
    trace = sst2()
    at = page()
    at.session_state["selection"] = Selection((7,), "test")
    ok(at.run())
    data = spec(at)["data"]
    path = next(t for t in data if t.get("name", "").startswith("its path"))
    from tests.test_app import values

    assert len(values(path["x"])) == 6
    ok(at.slider(key="w_map_layer").set_value(4).run())
    emb = np.asarray(trace.embeddings(4), dtype=np.float64)
    brute = np.sqrt(((emb - emb[7]) ** 2).sum(axis=1))  # the model's distance is euclidean
    brute[7] = np.inf
    table = at.dataframe[1].value
    assert table["sample"].iloc[0] == int(np.argmin(brute))
    assert table["sample"].tolist() == np.argsort(brute, kind="stable")[:10].tolist()
    assert {"true", "pred @L4", "euclidean distance", "text"} <= set(table.columns)
    marks = next(t for t in spec(at)["data"] if t.get("name", "").startswith("10 nearest"))
    assert sorted(values(marks["customdata"])) == sorted(table["sample"].tolist())
    second = int(table["sample"].iloc[1])
    ok(at.selectbox(key="map_nb_pick").set_value(second).run())
    ok(at.button(key="map_nb_open").click().run())
    assert at.title[0].value == "Sample inspector" and any(f"Sample {second}" in h.value for h in at.subheader)


@shipped
def test_colour_bars_on_the_page_mark_the_policys_tau_on_its_own_signal():
    at = ok(page(color="edr"))
    figure_ = spec(at)
    bar = next(t for t in figure_["data"] if t.get("marker", {}).get("colorbar"))["marker"]["colorbar"]
    assert all("e" not in t for t in bar["ticktext"]) and "0.1" in bar["ticktext"]
    assert [s for s in figure_["layout"].get("shapes", []) if s.get("name") == "tau"]  # DE3 thresholds EDR
    ok(at.segmented_control(key="w_map_color").set_value("dr").run())
    assert not [s for s in spec(at)["layout"].get("shapes", []) if s.get("name") == "tau"]  # DE3 does not test DR
    ok(at.selectbox(key="w_policy").set_value("dr").run())
    assert [s for s in spec(at)["layout"].get("shapes", []) if s.get("name") == "tau"]  # the DR policy does


@shipped
def test_play_steps_through_the_layers_and_stays_on_the_last():
    at = ok(page())
    ok(at.button(key="map_play").click().run())
    assert at.slider(key="w_map_layer").value == 6
    assert at.query_params["map_layer"] == "6"


@shipped
def test_while_umap_compiles_the_page_shows_pca_and_says_how_long(monkeypatch):
    from app import cache

    monkeypatch.setattr(cache, "umap_ready", lambda: False)
    monkeypatch.setattr(cache, "umap_compiling_for", lambda: 7.0)
    at = ok(page(method="umap"))
    lo, hi = cache.UMAP_COMPILE_SECONDS
    assert any(f"≈ {lo}–{hi} s; 7 s so far" in c.value for c in at.caption)
    assert any("PCA of layer 3's" in c.value for c in at.caption)
    assert at.query_params["method"] == "umap"  # the link still asks for UMAP
