"""2-D maps of one layer's prototype space: the samples and the class prototypes fitted together.

    X = [e_1 .. e_N ; c_1 .. c_K]   (N + K, d_p)   the layer's embeddings and its prototypes, stacked
    map X -> (N + K, 2)                            UMAP (neighbourhoods) or PCA (a linear view, fast)

The prototypes are part of the fit, not placed afterwards, so a sample drawn next to a prototype was a
neighbour of it in the fitted data. Distances in the map are *not* the model's distances (r1, r2, DR come
from the full d_p-dimensional space); the map shows neighbourhoods, nothing more.

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


class ProjectionError(DE3Error, ValueError):
    """A projection was asked for with bad settings or data (NaN embeddings, mismatched widths...)."""


@dataclass(frozen=True)
class ProjectionConfig:
    """How one layer's map is made. Frozen, so it is hashable and can key caches.

    method : "umap" (neighbourhood-preserving, ~0.3 s for 2,000 points once numba has compiled) or "pca".
    n_neighbors, min_dist : UMAP's own parameters (ignored by PCA). ``n_neighbors`` is capped at points - 1.
    seed : seed of UMAP and of the subsample.
    max_points : samples fitted at most; the rest are placed by ``transform``.
    metric : "euclidean" or "cosine": use the model's prototype distance so neighbourhoods agree with r1/r2.
    """

    method: str = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 42
    max_points: int = 2000
    metric: str = "euclidean"

    def __post_init__(self) -> None:
        check_fields(self, PROJECTION, ProjectionError)  # n_neighbors, min_dist, seed, max_points (validate.py)
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {shorten(self.method)}"),
            (self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}, got {shorten(self.metric)}"),
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


def project_layer(embeddings: np.ndarray, prototypes: np.ndarray,
                  config: ProjectionConfig = ProjectionConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Map one layer's samples and prototypes into one 2-D picture.

    Parameters
    ----------
    embeddings : (N, d_p) the layer's prototype-space embeddings (any float dtype; float16 from a trace).
    prototypes : (K, d_p) the layer's class prototypes.
    config : ProjectionConfig

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

    if method == "pca":
        model = _fit_pca(fit_x)
        fitted, transform = model.transform(fit_x), model.transform
    else:
        model = _fit_umap(fit_x, config)
        fitted, transform = model.embedding_, model.transform

    points = np.empty((len(emb), 2), dtype=np.float32)
    points[fit_idx] = fitted[: len(fit_idx)]
    if len(rest):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points[rest] = transform(emb[rest])
    return points, np.asarray(fitted[len(fit_idx):], dtype=np.float32)


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


def _fit_umap(x: np.ndarray, config: ProjectionConfig):
    try:
        import umap
    except ImportError:  # pragma: no cover - umap-learn is a requirement of the app
        raise ProjectionError("UMAP needs the package umap-learn (pip install umap-learn); use method='pca'") from None
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(config.n_neighbors, len(x) - 1)),
        min_dist=config.min_dist,
        metric=config.metric,
        random_state=config.seed,  # deterministic (and single-threaded)
        transform_seed=config.seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral-init and n_jobs notices: not actionable for a user
        reducer.fit(x)
    return reducer
