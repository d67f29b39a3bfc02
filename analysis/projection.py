"""2-D maps of the prototype space: the samples and the class prototypes fitted together, layer by layer.

    X_m = [e_1 .. e_N ; c_1 .. c_K]   (N + K, d_p)   layer m's embeddings and its prototypes, stacked
    map X_m -> (N + K, 2)                            UMAP (neighbourhoods) or PCA (a linear view, fast)

The prototypes are part of the fit, not placed afterwards, so a sample drawn next to a prototype was a
neighbour of it in the fitted data. Distances in the map are *not* the model's distances (r1, r2, DR come
from the full d_p-dimensional space); the map shows neighbourhoods, nothing more -- ``nearest_samples`` gives
a sample's true neighbours, in the model's own distance.

``project_layers`` maps every layer in one frame of reference, so a sample keeps its place from layer to layer:
each layer's map is centred and scaled to unit RMS radius (over the samples), then turned onto the previous
layer's by orthogonal Procrustes on the samples' coordinates (a rotation, or a reflection: PCA's signs and
UMAP's orientation are arbitrary); the prototypes follow the same transform. UMAP also starts each layer from
the previous layer's aligned map (``init``), so its clusters stay where they were unless the data moves them.
Last, the whole stack is turned once so that it lies wide (its long axis along x).

Deterministic: a fixed seed for UMAP (``random_state``, which also makes it single-threaded) and exact PCA.
Above ``max_points`` samples, a seeded subsample (plus every prototype) is fitted and the other samples are
placed with the fitted map's ``transform``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .errors import DE3Error, shorten
from .validate import PROJECTION, check_fields

METHODS = ("umap", "pca")
METRICS = ("euclidean", "cosine")
MIN_UMAP_POINTS = 8  # below this UMAP's graph is too small to be meaningful; PCA is used instead
UMAP_EXACT = 4096  # below this many points UMAP finds exact neighbours from all distances (then we compute them)


class ProjectionError(DE3Error, ValueError):
    """A projection was asked for with bad settings or data (NaN embeddings, mismatched widths...)."""


@dataclass(frozen=True)
class ProjectionConfig:
    """How one layer's map is made. Frozen, so it is hashable and can key caches.

    method : "umap" (neighbourhood-preserving; ~2 s a layer for 1,000 points on a CPU core once numba has
        compiled) or "pca" (milliseconds).
    n_neighbors, min_dist : UMAP's own parameters (ignored by PCA). ``n_neighbors`` is capped at points - 1.
        ``min_dist`` 0.5 (UMAP's default is 0.1) keeps a class from collapsing into a few pixels.
    seed : seed of UMAP and of the subsample.
    max_points : samples fitted at most; the rest are placed by ``transform``.
    metric : "euclidean" or "cosine": use the model's prototype distance so neighbourhoods agree with r1/r2.
    align : ``project_layers`` only: each layer's map turned onto the previous one (and UMAP started from it),
        so samples keep their places across layers; False maps every layer on its own.
    """

    method: str = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.5
    seed: int = 42
    max_points: int = 2000
    metric: str = "euclidean"
    align: bool = True

    def __post_init__(self) -> None:
        check_fields(self, PROJECTION, ProjectionError)  # n_neighbors, min_dist, seed, max_points (validate.py)
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {shorten(self.method)}"),
            (self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}, got {shorten(self.metric)}"),
            (isinstance(self.align, bool), f"align must be True or False, got {shorten(self.align)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ProjectionError(f"ProjectionConfig: {message}")

    def to_dict(self) -> dict:
        return asdict(self)


def metric_for_distance(distance: str) -> str:
    """The map metric matching a model's prototype distance ("euclidean", "sqeuclidean" or "cosine")."""
    return "cosine" if distance == "cosine" else "euclidean"


def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` rows, the same for the same arguments."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def effective_method(n_samples: int, num_prototypes: int, config: ProjectionConfig) -> str:
    """The method ``project_layer`` will use: PCA when UMAP has too few points to build a graph."""
    fitted = min(n_samples, config.max_points) + num_prototypes
    return "pca" if config.method == "umap" and fitted < MIN_UMAP_POINTS else config.method


def project_layer(embeddings: np.ndarray, prototypes: np.ndarray, config: ProjectionConfig = ProjectionConfig(),
                  *, init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map one layer's samples and prototypes into one 2-D picture.

    Parameters
    ----------
    embeddings : (N, d_p) the layer's prototype-space embeddings (any float dtype; float16 from a trace).
    prototypes : (K, d_p) the layer's class prototypes.
    config : ProjectionConfig (``align`` is not used here).
    init : (N + K, 2) where UMAP starts: samples then prototypes (another layer's map); None: UMAP's own
        spectral start. PCA ignores it.

    Returns
    -------
    points : (N, 2) float32, in the order of ``embeddings``.
    proto_points : (K, 2) float32, in the order of ``prototypes``.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    protos = np.asarray(prototypes, dtype=np.float32)
    if emb.ndim != 2 or protos.ndim != 2 or emb.shape[1] != protos.shape[1]:
        raise ProjectionError(f"embeddings {emb.shape} and prototypes {protos.shape} must be (N, d) and (K, d) "
                              "with the same d")
    if len(emb) == 0 or len(protos) == 0:
        raise ProjectionError("nothing to project: no samples or no prototypes")
    if not (np.isfinite(emb).all() and np.isfinite(protos).all()):
        raise ProjectionError("embeddings or prototypes hold NaN or infinite values; re-create the trace")
    if config.metric == "cosine":  # cosine geometry = Euclidean geometry of unit vectors (for PCA; UMAP is told)
        emb, protos = _unit(emb), _unit(protos)

    fit_idx = subsample(len(emb), config.max_points, config.seed)
    rest = np.setdiff1d(np.arange(len(emb)), fit_idx, assume_unique=True)
    fit_x = np.concatenate([emb[fit_idx], protos])  # (n_fit + K, d): prototypes are part of the fit
    method = effective_method(len(emb), len(protos), config)

    with _one_blas_thread():
        if method == "pca":
            model = _fit_pca(fit_x)
            fitted, transform = model.transform(fit_x), model.transform
        else:
            start = None if init is None else np.concatenate([np.asarray(init)[fit_idx], np.asarray(init)[len(emb):]])
            model = _fit_umap(fit_x, config, init=start, precomputed=not len(rest) and len(fit_x) < UMAP_EXACT)
            fitted, transform = model.embedding_, model.transform

        points = np.empty((len(emb), 2), dtype=np.float32)
        points[fit_idx] = fitted[: len(fit_idx)]
        if len(rest):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                points[rest] = transform(emb[rest])
    return points, np.asarray(fitted[len(fit_idx):], dtype=np.float32)


def _one_blas_thread():
    """BLAS on one thread while a map is fitted: its matrices are small, and on a busy machine (a server with
    other sessions, 2 cores) BLAS threads waiting on each other made one 872 x 384 PCA take 5 s instead of 0.08 s."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    return threadpool_limits(limits=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Pca2:
    """The first two principal axes (exact SVD, signs fixed as sklearn's ``svd_flip`` does)."""

    def __init__(self, x: np.ndarray):
        from sklearn.decomposition import PCA

        n_components = min(2, x.shape[0], x.shape[1])
        self._pca = PCA(n_components=n_components, svd_solver="full").fit(x)

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = self._pca.transform(x).astype(np.float32)
        if out.shape[1] < 2:  # one point or one dimension: pad so callers always get (n, 2)
            out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
        return out


def _fit_pca(x: np.ndarray) -> _Pca2:
    return _Pca2(x)


def _fit_umap(x: np.ndarray, config: ProjectionConfig, init: np.ndarray | None = None, precomputed: bool = False):
    """UMAP fitted to ``x``. ``precomputed``: hand UMAP the distance matrix -- the same neighbour graph (to float
    rounding), 2-3x faster: for fewer than 4,096 points UMAP itself calls its metric once per pair from Python; the
    fitted map then cannot ``transform`` new points."""
    try:
        import umap
    except ImportError:  # pragma: no cover - umap-learn is a requirement of the app
        raise ProjectionError("UMAP needs the package umap-learn (pip install umap-learn); use method='pca'") from None
    if precomputed:
        from sklearn.metrics import pairwise_distances

        x = pairwise_distances(x.astype(np.float64), metric=config.metric)  # (n, n), zero diagonal
    if init is not None:  # into UMAP's own starting box, [0, 10]^2 (each axis filled, as its spectral start is;
        # keeping the aspect instead moved samples more: mean step 0.50 -> 0.52 on SST-2, 0.42 -> 0.50 on BBC)
        lo, span = init.min(axis=0), np.maximum(np.ptp(init, axis=0), 1e-12)
        init = (10.0 * (init - lo) / span).astype(np.float32)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(config.n_neighbors, len(x) - 1)),
        min_dist=config.min_dist,
        metric="precomputed" if precomputed else config.metric,
        random_state=config.seed,  # deterministic (and single-threaded)
        transform_seed=config.seed,
        n_jobs=1,
        **({} if init is None else dict(init=init, n_epochs=200)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral-init and n_jobs notices: not actionable for a user
        reducer.fit(x)
    return reducer


# ---- every layer in one frame of reference ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LayerMaps:
    """Every layer's map of one trace (``project_layers``): samples and prototypes, layer m at index m - 1.

    points : (L, N, 2) float32.   proto_points : (L, K, 2) float32.
    method : the method used ("pca" when UMAP had too few points).   aligned : whether layers share one frame.
    """

    points: np.ndarray
    proto_points: np.ndarray
    method: str
    aligned: bool

    @property
    def num_layers(self) -> int:
        return len(self.points)

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 2), prototype points (K, 2)) of 1-based ``layer``."""
        if not 1 <= layer <= self.num_layers:
            raise ProjectionError(f"layer {layer} is not one of the mapped layers 1..{self.num_layers}")
        return self.points[layer - 1], self.proto_points[layer - 1]

    def path(self, index: int) -> np.ndarray:
        """(L, 2) where sample ``index`` (a row, 0-based) sits at every layer."""
        return self.points[:, index]

    def view(self, layer: int | None = None, pad: float = 0.05) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x0, x1), (y0, y1)): the samples -- not the prototypes -- of 1-based ``layer``, or of every layer (one
        view for all, so stepping through the layers does not move the axes), with ``pad`` of the span around."""
        pooled = (self.points if layer is None else self.layer(layer)[0][None]).reshape(-1, 2)
        lo, hi = pooled.min(axis=0), pooled.max(axis=0)
        margin = pad * np.maximum(hi - lo, 1e-6)
        return (float(lo[0] - margin[0]), float(hi[0] + margin[0])), (float(lo[1] - margin[1]), float(hi[1] + margin[1]))


def project_layers(embeddings: np.ndarray, prototypes: np.ndarray, config: ProjectionConfig = ProjectionConfig(),
                   on_layer=None) -> LayerMaps:
    """Map every layer; with ``config.align``, in one frame of reference so a sample keeps its place.

    Each layer is mapped by ``project_layer`` (UMAP started from the previous layer's aligned map when aligned),
    centred on its samples and scaled to unit RMS radius, then -- aligned -- turned by the orthogonal Procrustes
    rotation (or reflection) that best carries its samples onto the previous layer's. The prototypes follow their
    layer's transform. Aligned, the whole stack is then turned once to lie wide (one rotation for every layer, so
    the alignment stays). Unaligned, each layer is only centred and scaled.

    Parameters
    ----------
    embeddings : (L, N, d_p) every layer's embeddings (a trace's ``embeddings()``, memory-mapped is fine).
    prototypes : (L, K, d_p) every layer's class prototypes.
    config : ProjectionConfig
    on_layer : called as ``on_layer(layer, num_layers)`` after each layer is mapped (a progress bar).
    """
    if np.ndim(embeddings) != 3 or np.ndim(prototypes) != 3 or len(embeddings) != len(prototypes):
        raise ProjectionError(f"embeddings {np.shape(embeddings)} and prototypes {np.shape(prototypes)} must be "
                              "(L, N, d) and (L, K, d) with the same L")
    L, n, k = len(embeddings), np.shape(embeddings)[1], np.shape(prototypes)[1]
    points = np.empty((L, n, 2), dtype=np.float32)
    proto_points = np.empty((L, k, 2), dtype=np.float32)
    previous = None  # (N + K, 2) the previous layer's aligned map
    for m in range(L):
        p, c = project_layer(embeddings[m], prototypes[m], config, init=previous if config.align else None)
        p, c = _normalise(p, c)
        if config.align and previous is not None:
            rotation = procrustes_rotation(p, previous[:n])
            p, c = p @ rotation, c @ rotation
        points[m], proto_points[m] = p, c
        previous = np.concatenate([p, c])
        if on_layer is not None:
            on_layer(m + 1, L)
    if config.align:  # one turn of the whole stack, so it lies wide on a wide screen (alignment unchanged)
        turn = _landscape(points.reshape(-1, 2), proto_points)
        points, proto_points = points @ turn, proto_points @ turn
    return LayerMaps(points, proto_points, effective_method(n, k, config), config.align)


def _landscape(pooled: np.ndarray, proto_points: np.ndarray) -> np.ndarray:
    """The orthogonal (2, 2) turn putting the pooled samples' long axis along x; signs set so that the first
    prototype sits left of the last one and below it (on average over the layers), the same way every time."""
    _, vecs = np.linalg.eigh(np.cov(np.asarray(pooled, dtype=np.float64).T))
    turn = vecs[:, ::-1].copy()  # columns: long axis, short axis
    first, last = proto_points[:, 0].mean(axis=0) @ turn, proto_points[:, -1].mean(axis=0) @ turn
    turn[:, 0] *= -1 if first[0] > last[0] else 1
    turn[:, 1] *= -1 if first[1] > last[1] else 1
    return turn.astype(np.float32)


def _normalise(points: np.ndarray, proto_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred on the samples' mean and scaled so their RMS distance from it is 1 (prototypes alike)."""
    centre = points.mean(axis=0)
    radius = float(np.sqrt(((points - centre) ** 2).sum(axis=1).mean()))
    scale = 1.0 / radius if radius > 1e-12 else 1.0
    return (points - centre) * scale, (proto_points - centre) * scale


def procrustes_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The orthogonal (2, 2) R minimising ||a R - b|| for centred (n, 2) point sets (rotation or reflection).

    a.T b = U S V^T  =>  R = U V^T   (orthogonal Procrustes, Schönemann 1966)
    """
    u, _, vt = np.linalg.svd(np.asarray(a, dtype=np.float64).T @ np.asarray(b, dtype=np.float64))
    return (u @ vt).astype(np.float32)


def displacement(points: np.ndarray) -> np.ndarray:
    """(L - 1,) how far samples move, on average, from each layer's map to the next; ``points`` (L, N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return np.linalg.norm(np.diff(points, axis=0), axis=2).mean(axis=1)


def overlap_share(points: np.ndarray, pixels: int = 600, within: float = 3.0) -> float:
    """Share of the samples drawn within ``within`` px of another when the map's longer side is ``pixels`` wide:
    how much a map crowds (UMAP with a small ``min_dist`` puts most of a class on a few pixels)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return 0.0
    lo, span = points.min(axis=0), float(np.ptp(points, axis=0).max())
    scaled = (points - lo) * (pixels / span if span > 0 else 1.0)
    gap, _ = cKDTree(scaled).query(scaled, k=2)
    return float((gap[:, 1] < within).mean())


# ---- neighbours in the model's own space ------------------------------------------------------------------------


def nearest_samples(embeddings: np.ndarray, index: int, k: int = 10,
                    distance: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` samples nearest to sample ``index`` in one layer's prototype space, in the model's distance.

    Not the 2-D map's neighbours: the full d_p-dimensional embeddings, measured as the model measures r1 and r2
    (``analysis.signals.pairwise_distance``: "euclidean", "sqeuclidean" or "cosine" = 1 - cosine similarity).

    Returns
    -------
    rows : (min(k, N - 1),) row indices, nearest first (ties by row), the sample itself left out.
    distances : (min(k, N - 1),) float64, their distances.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or not 0 <= index < len(emb):
        raise ProjectionError(f"no sample row {index} among {len(emb)} embeddings")
    if distance == "cosine":
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        d = 1.0 - unit @ unit[index]
    elif distance in ("euclidean", "sqeuclidean"):
        sq = ((emb - emb[index]) ** 2).sum(axis=1)
        d = sq if distance == "sqeuclidean" else np.sqrt(sq)
    else:
        raise ProjectionError(f"unknown distance {shorten(distance)}; choose euclidean, sqeuclidean or cosine")
    d[index] = np.inf
    order = np.argsort(d, kind="stable")[: max(0, min(k, len(emb) - 1))]
    return order, d[order]
