"""Exit policies (spec §5) as pure functions of recorded signals.

Every policy is one *causal* rule, ``exit_mask``: given per-layer signals (N, M) for layers 1..M, it says for
each sample and layer whether that layer's exit test passes, using only that layer and the ones before it.
The trace simulation applies it to all L layers at once; the real early-exit engine applies it to the layers
computed so far. One rule, so the two agree sample for sample.

A sample leaves at the first layer m < L whose test passes and answers with that layer's prediction; if none
passes, the last layer answers. ``oracle`` needs the labels and exists only in simulation: each sample leaves at
its first correct layer, and a sample that no layer gets right leaves at layer 1 (it is wrong anyway, so the bound
spends nothing on it) — the highest accuracy any exit assignment can have, at the fewest layers (spec §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import DE3Error, shorten
from .signals import edr
from .validate import POLICY, check_fields

POLICIES = ("de3", "dr", "entropy", "maxprob", "pabee", "pcee", "static", "oracle")
POLICY_LABELS = {
    "de3": "DE3-BERT (EDR)",
    "dr": "DR only",
    "entropy": "DeeBERT (entropy)",
    "maxprob": "max-probability",
    "pabee": "PABEE (patience)",
    "pcee": "PCEE-BERT",
    "static": "static exit",
    "oracle": "oracle",
}
# which signals each policy reads, (N, M) arrays named as trace columns
POLICY_INPUTS = {
    "de3": ("entropy", "dr"),
    "dr": ("dr",),
    "entropy": ("entropy",),
    "maxprob": ("max_prob",),
    "pabee": ("pred",),
    "pcee": ("entropy",),
    "static": (),
    "oracle": ("correct",),
}


# the signal each threshold policy compares with τ ("edr" is computed from entropy and DR with the policy's λ)
THRESHOLD_SIGNAL = {"de3": "edr", "dr": "dr", "entropy": "entropy", "pcee": "entropy", "maxprob": "max_prob"}


@dataclass(frozen=True)
class ExitPolicy:
    """An exit rule and its parameters. Frozen, so it is hashable and can key caches.

    name : one of ``POLICIES``.
    tau : threshold (de3, dr, entropy, pcee: exit when the signal is *below* tau; maxprob: *above*). Any number
        but NaN: +inf exits everyone at layer 1 (max-probability: -inf).
    lambda_ : EDR weight of DR against entropy (de3 only), finite, >= 0.
    patience : consecutive layers (pabee: unchanged predictions; pcee: entropy below tau), an integer >= 1.
    layer : the fixed exit layer, 1-based (static only), an integer >= 1.

    Every number is checked against its declaration (``validate.POLICY``); a bad one is a ``DE3Error``.
    """

    name: str
    tau: float = 0.5
    lambda_: float = 1.0
    patience: int = 2
    layer: int = 1

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise DE3Error(f"unknown exit policy {shorten(self.name)}; choose one of {', '.join(POLICIES)}")
        check_fields(self, POLICY)  # tau not NaN (±inf are the sweep's ends), lambda_ >= 0, patience, layer >= 1

    @property
    def label(self) -> str:
        return POLICY_LABELS[self.name]

    def params(self) -> dict[str, float | int]:
        """Only the parameters this policy uses."""
        used = {"de3": ("tau", "lambda_"), "dr": ("tau",), "entropy": ("tau",), "maxprob": ("tau",),
                "pabee": ("patience",), "pcee": ("tau", "patience"), "static": ("layer",), "oracle": ()}[self.name]
        return {k: getattr(self, k) for k in used}

    def describe(self) -> str:
        params = ", ".join(f"{'λ' if k == 'lambda_' else 'τ' if k == 'tau' else k}={v:g}" for k, v in self.params().items())
        return f"{self.label}" + (f" ({params})" if params else "")


def run_lengths(cond: np.ndarray) -> np.ndarray:
    """Length of the run of True ending at each column: (N, M) bool -> (N, M) int."""
    out = np.zeros(cond.shape, dtype=np.int32)
    run = np.zeros(cond.shape[0], dtype=np.int32)
    for m in range(cond.shape[1]):
        run = np.where(cond[:, m], run + 1, 0)
        out[:, m] = run
    return out


def exit_mask(policy: ExitPolicy, signals: Mapping[str, np.ndarray]) -> np.ndarray:
    """Whether each layer's exit test passes: (N, M) bool from (N, M) signal arrays (layers 1..M).

    Causal: column m depends only on columns <= m, so the engine can call it on the layers computed so far.
    The one exception is ``oracle`` (simulation only: it reads the labels): layer 1 passes for a sample that
    no layer gets right, which needs every layer.
    """
    p = policy
    arrays = {k: np.asarray(signals[k]) for k in POLICY_INPUTS[p.name]}
    if p.name == "de3":
        return edr(arrays["dr"], arrays["entropy"], p.lambda_) < p.tau
    if p.name in ("dr", "entropy"):
        return arrays[p.name] < p.tau
    if p.name == "maxprob":
        return arrays["max_prob"] > p.tau
    if p.name == "pcee":
        return run_lengths(arrays["entropy"] < p.tau) >= p.patience
    if p.name == "pabee":
        pred = arrays["pred"]
        unchanged = np.zeros(pred.shape, dtype=bool)
        unchanged[:, 1:] = pred[:, 1:] == pred[:, :-1]
        return run_lengths(unchanged) >= p.patience  # PABEE: `patience` consecutive unchanged predictions
    if p.name == "oracle":  # first correct layer; never right at any layer -> layer 1 (wrong anyway, costs least)
        correct = arrays["correct"].astype(bool)
        mask = correct.copy()
        mask[:, 0] |= ~correct.any(axis=1)
        return mask
    # static: compare the 1-based layer index of each column with the chosen layer
    n, m = _shape(signals)
    return np.broadcast_to(np.arange(1, m + 1) >= p.layer, (n, m))


def threshold_signal(signals: Mapping[str, np.ndarray], policy: ExitPolicy) -> np.ndarray | None:
    """The (N, L) values ``policy``'s τ is compared with (EDR(λ) for de3, entropy for entropy and pcee, DR for
    dr, max_prob for maxprob), or None for policies without a threshold (pabee, static, oracle)."""
    name = THRESHOLD_SIGNAL.get(policy.name)
    if name is None:
        return None
    if name == "edr":
        return edr(np.asarray(signals["dr"]), np.asarray(signals["entropy"]), policy.lambda_)
    return np.asarray(signals[name])


def _shape(signals: Mapping[str, np.ndarray]) -> tuple[int, int]:
    for value in signals.values():
        return np.asarray(value).shape
    raise DE3Error("static exits need at least one signal array to know N and M")


@dataclass(frozen=True)
class ExitDecision:
    """Where each sample leaves and what it answers."""

    exit_layer: np.ndarray  # (N,) 1-based
    pred: np.ndarray  # (N,) the exit layer's prediction


def first_exit(mask: np.ndarray) -> np.ndarray:
    """1-based index of the first True per row of an (N, L) mask, with the last layer forced to answer."""
    mask = np.array(mask, dtype=bool, copy=True)
    mask[:, -1] = True  # the final classifier answers whoever is left
    return mask.argmax(1) + 1


def decide_exits(signals: Mapping[str, np.ndarray], policy: ExitPolicy) -> ExitDecision:
    """Exit layer and answer of every sample under ``policy``, from (N, L) arrays including ``pred``.

    ``signals`` is any mapping of trace columns in wide form, e.g. ``Trace.wide``.
    """
    pred = np.asarray(signals["pred"])
    layers = first_exit(exit_mask(policy, signals))
    return ExitDecision(layers, pred[np.arange(len(layers)), layers - 1])
