"""Per-layer 2-D maps: deterministic, prototypes in the same fit, PCA as the fast fallback."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.errors import DE3Error
from analysis.projection import (
    ProjectionConfig,
    _fit_umap,
    effective_method,
    project_layer,
    project_layers,
    subsample,
)


def blobs(n_per_class: int = 20, k: int = 3, d: int = 16, seed: int = 0):
    """k well-separated Gaussian blobs and their means as prototypes (float16, as a trace stores them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(k, d))
    labels = np.repeat(np.arange(k), n_per_class)
    emb = centres[labels] + rng.normal(size=(len(labels), d))
    return emb.astype(np.float16), centres.astype(np.float32), labels


def test_pca_shapes_dtype_and_prototypes_included():
    emb, protos, _ = blobs()
    points, proto_points = project_layer(emb, protos, ProjectionConfig(method="pca"))
    assert points.shape == (60, 2) and proto_points.shape == (3, 2)
    assert points.dtype == np.float32 and proto_points.dtype == np.float32
    # one fit over samples + prototypes: the prototypes are rows of the same PCA as the samples
    from sklearn.decomposition import PCA

    stacked = np.concatenate([emb.astype(np.float32), protos])
    expected = PCA(n_components=2, svd_solver="full").fit_transform(stacked)
    np.testing.assert_allclose(np.concatenate([points, proto_points]), expected, rtol=1e-4, atol=1e-3)


def test_pca_is_deterministic_and_does_not_modify_input():
    emb, protos, _ = blobs()
    before = emb.copy()
    a = project_layer(emb, protos, ProjectionConfig(method="pca"))
    b = project_layer(emb, protos, ProjectionConfig(method="pca"))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(emb, before)


def test_pca_subsample_places_the_rest_with_the_same_map():
    emb, protos, _ = blobs(n_per_class=30)
    full_cfg = ProjectionConfig(method="pca", max_points=10_000)
    sub_cfg = ProjectionConfig(method="pca", max_points=40, seed=3)
    points, _ = project_layer(emb, protos, sub_cfg)
    assert points.shape == (90, 2) and np.isfinite(points).all()
    fitted = subsample(90, 40, 3)
    assert len(fitted) == 40 and (np.diff(fitted) > 0).all()
    np.testing.assert_array_equal(fitted, subsample(90, 40, 3))  # deterministic subsample
    # a different subsample gives a (slightly) different map, the full fit another one
    assert not np.allclose(points, project_layer(emb, protos, full_cfg)[0])


def test_cosine_metric_ignores_vector_length_in_pca():
    emb, protos, _ = blobs()
    scaled = (emb.astype(np.float32) * np.linspace(1, 5, len(emb))[:, None]).astype(np.float32)
    cfg = ProjectionConfig(method="pca", metric="cosine")
    np.testing.assert_allclose(project_layer(emb, protos, cfg)[0], project_layer(scaled, protos * 7, cfg)[0],
                               rtol=1e-3, atol=1e-3)


def test_umap_deterministic_prototypes_land_in_their_class():
    emb, protos, labels = blobs(n_per_class=25)
    cfg = ProjectionConfig(method="umap", n_neighbors=10, seed=7)
    points, proto_points = project_layer(emb, protos, cfg)
    again, proto_again = project_layer(emb, protos, cfg)
    np.testing.assert_array_equal(points, again)
    np.testing.assert_array_equal(proto_points, proto_again)
    assert points.shape == (75, 2) and proto_points.shape == (3, 2)
    # each prototype's nearest map neighbours are samples of its own class
    for k in range(3):
        nearest = np.argsort(np.linalg.norm(points - proto_points[k], axis=1))[:5]
        assert (labels[nearest] == k).all()


def test_tiny_inputs_fall_back_to_pca():
    emb, protos, _ = blobs(n_per_class=1, k=2)
    cfg = ProjectionConfig(method="umap")
    assert effective_method(len(emb), len(protos), cfg) == "pca"
    points, proto_points = project_layer(emb, protos, cfg)
    assert points.shape == (2, 2) and proto_points.shape == (2, 2)


@pytest.mark.parametrize("kwargs", [dict(method="tsne"), dict(n_neighbors=1), dict(min_dist=2.0),
                                    dict(max_points=1), dict(metric="manhattan"), dict(align="yes")])
def test_bad_config_is_a_user_error(kwargs):
    with pytest.raises(DE3Error):
        ProjectionConfig(**kwargs)


def test_bad_inputs_are_user_errors():
    emb, protos, _ = blobs()
    with pytest.raises(DE3Error, match="same d"):
        project_layer(emb, protos[:, :5], ProjectionConfig(method="pca"))
    bad = emb.astype(np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(DE3Error, match="NaN"):
        project_layer(bad, protos, ProjectionConfig(method="pca"))


def test_config_is_hashable():
    assert hash(ProjectionConfig()) == hash(ProjectionConfig())
    assert ProjectionConfig(method="pca") != ProjectionConfig()


def test_umap_on_precomputed_distances_builds_the_same_neighbour_graph():
    """The fast path (the distance matrix handed to UMAP) builds the graph UMAP builds from the metric (to float
    rounding; the layout's 500 steps of SGD may then amplify that rounding into another, equally good, layout)."""
    emb, protos, _ = blobs(n_per_class=20)
    x = np.concatenate([emb.astype(np.float32), protos])
    for metric in ("euclidean", "cosine"):
        cfg = ProjectionConfig(method="umap", n_neighbors=8, seed=3, metric=metric)
        fast, slow = _fit_umap(x, cfg, precomputed=True).graph_, _fit_umap(x, cfg).graph_
        assert (fast != 0).toarray().tolist() == (slow != 0).toarray().tolist()  # the same edges
        assert abs(fast - slow).max() < 1e-4


def test_umap_started_from_another_map_stays_near_it_and_is_deterministic():
    emb, protos, labels = blobs(n_per_class=20)
    cfg = ProjectionConfig(method="umap", n_neighbors=8, seed=5)
    first, first_protos = project_layer(emb, protos, cfg)
    start = np.concatenate([first, first_protos])
    again, again_protos = project_layer(emb, protos, cfg, init=start)
    np.testing.assert_array_equal(again, project_layer(emb, protos, cfg, init=start)[0])
    for k in range(3):  # the same data from its own map: each class stays in one place, its prototype with it
        nearest = np.argsort(np.linalg.norm(again - again_protos[k], axis=1))[:5]
        assert (labels[nearest] == k).all()


def test_layer_maps_refuse_a_layer_they_do_not_have():
    emb, protos, _ = blobs()
    maps = project_layers(np.stack([emb, emb]), np.stack([protos, protos]), ProjectionConfig(method="pca"))
    assert maps.num_layers == 2 and maps.path(3).shape == (2, 2)
    for bad in (0, 3):
        with pytest.raises(DE3Error, match="mapped layers 1..2"):
            maps.layer(bad)
    with pytest.raises(DE3Error, match="same L"):
        project_layers(np.stack([emb, emb]), protos[None], ProjectionConfig(method="pca"))
