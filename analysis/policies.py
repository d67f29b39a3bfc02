"""Exit policies (spec §5): every policy declared once, in ``REGISTRY``, and the causal rule they all share.

Every policy is one *causal* rule, ``exit_mask``: given per-layer signals (N, M) for layers 1..M, it says for
each sample and layer whether that layer's exit test passes, using only that layer and the ones before it.
The trace simulation applies it to all L layers at once; the real early-exit engine applies it to the layers
computed so far. One rule, so the two agree sample for sample.

A sample leaves at the first layer m < L whose test passes and answers with that layer's prediction; if none
passes, the last layer answers. ``oracle`` needs the labels and exists only in simulation: each sample leaves at
its first correct layer, and a sample that no layer gets right leaves at layer 1 (it is wrong anyway, so the bound
spends nothing on it) — the highest accuracy any exit assignment can have, at the fewest layers (spec §5).

The registry
------------
``REGISTRY`` maps each name to a ``PolicySpec``: its label, the trace columns it reads, the ``ExitPolicy`` fields it
uses, its exit test (a *threshold* test on one value, or any other causal ``rule``), the wording of that test and of
the policy, its chart colour, what its sweep visits, whether it needs labels and whether it can run in the real
engine. Everything else reads it: ``exit_mask``, ``threshold_signal``, ``ExitPolicy.params`` / ``describe`` /
``exit_test``, the sweep and its grids (``curves``), the engine's checks, and the app's sidebar, charts and texts.
Its order is the order of every table, legend and menu.

How to add a policy
~~~~~~~~~~~~~~~~~~~
Declare it, and nothing else changes::

    register(PolicySpec(
        name="dr_entropy_min", label="min(DR, entropy)", words="...",
        inputs=("dr", "entropy"), params=("tau",),
        value=lambda s, p: np.minimum(np.asarray(s["dr"]), np.asarray(s["entropy"])), value_name="min(DR, entropy)",
        test=lambda p: f"min(DR, entropy) < τ={p.tau:g}", tau=0.2, color="#999933"))

A *threshold* policy gives ``value`` (the (N, M) number compared with τ, from its ``inputs``): it exits when the
value is below τ (``above=True``: above τ; ``consecutive=True``: at ``patience`` layers in a row). From that one
declaration come the exit rule, the sweep's fast exact form ``exit_signal`` ("exit ⇔ signal < τ′"), its data-driven
τ grid and the app's τ slider; its other parameters (λ, patience) each pick one curve, and ``settings`` says which
values the sweep visits. Any other policy gives ``rule(policy, signals) -> (N, M) bool`` (causal) and ``settings``.
``params`` names the ``ExitPolicy`` fields it reads (their ranges are ``validate.POLICY``); ``earliest`` (optional) is
the first layer whose test can pass, before which the real engine runs no test.

The same functions run in the simulation (NumPy arrays) and in the real engine on the model's device (torch
tensors): the shipped ones use only operators, slicing and ``xp_of(x)``'s functions (``xp.maximum``,
``xp.zeros_like``), which NumPy and torch share. A policy written with NumPy calls alone (``np.minimum`` above) works
the same; on a GPU the engine then evaluates its test on the host. The test
``test_a_new_policy_needs_only_its_spec`` (tests/test_policies.py) does exactly this, and tests/test_app.py shows the
app taking it. ``POLICIES``, ``POLICY_LABELS``, ``POLICY_INPUTS`` and ``THRESHOLD_SIGNAL`` are plain views of the
shipped registry, for callers that want tables; code that should follow a newly registered policy reads ``REGISTRY``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import DE3Error, shorten
from .signals import edr
from .validate import POLICY, check_fields

Signals = Mapping[str, np.ndarray]  # trace columns in wide form, (N, M) each, e.g. ``Trace.wide`` (or torch tensors)
SYMBOLS = {"tau": "τ", "lambda_": "λ"}  # how a parameter is printed; the others by their field name
TAU_GRIDS = ("log", "1-log")  # slider steps: log-spaced near 0 (signals that are small when sure), or 1 − that


def xp_of(x):
    """The array namespace of ``x``: torch for a torch tensor, else NumPy. Their shared functions (``maximum``,
    ``zeros_like``, ``where``, dtypes ``bool`` and ``int32``, ``inf``) let one exit test run on a trace's arrays and on
    the engine's tensors, on whatever device they are. Importing this module never imports torch: a tensor means
    torch is loaded already."""
    return sys.modules["torch"] if type(x).__module__.split(".")[0] == "torch" else np


def as_array(x):
    """``x`` as an array: a NumPy array or torch tensor as it is, anything else (a list, a pandas column) via NumPy."""
    return x if type(x).__module__.split(".")[0] == "torch" else np.asarray(x)


def _copy(x):
    return x.clone() if xp_of(x) is not np else x.copy()


@dataclass(frozen=True)
class GridArgs:
    """What a sweep's settings may depend on (``curves.default_grid``'s arguments)."""

    num_layers: int
    lambdas: tuple[float, ...] = (1.0,)  # EDR weights
    patiences: tuple[int, ...] = (2,)  # patience values of a threshold policy that has one (PCEE)


@dataclass(frozen=True)
class PolicySpec:
    """One exit policy, declared once (see the module docstring for how to add one).

    name : the key: ``ExitPolicy(name)``, the URL, the curves' ``policy`` column.
    label : as tables, legends and the sidebar print it; ``short``: where space is tight (default ``label``).
    words : one line for the app: what the policy does.
    test : the exit test in words, with a setting's numbers, e.g. "EDR(λ=1) < τ=0.02".
    inputs : trace columns it reads, (N, M) each.
    params : ``ExitPolicy`` fields it uses, in the order ``describe`` prints them (ranges: ``validate.POLICY``).
    color : its colour on every chart.

    A threshold policy (exactly one of ``value`` and ``rule``):
    value : (signals, policy) -> (N, M), the number compared with τ; ``value_name`` says what it is ("edr", a
        trace column, ...). Exit at layer m when value_m < τ — ``above``: value_m > τ; ``consecutive``: at
        ``patience`` layers in a row ending at m.
    bounds : the range the value lies in (the sweep's "exit no one" end).
    tau : the τ the app opens with; ``tau_grid``: its slider's steps, "log" or "1-log" (values near 1).

    Any other policy:
    rule : (policy, signals) -> (N, M) bool, causal: column m reads columns <= m only.
    stuck : (policy, L) -> why no sample leaves before layer L, and what to change (threshold policies derive it).
    earliest : policy -> the first layer (1-based) whose test can pass for some sample; the real engine tests (and
        waits for the device) only from there. Default: ``patience`` for a ``consecutive`` test, else 1.

    settings : GridArgs -> the values of its parameters other than τ that a sweep visits (default: one setting of
        the defaults); a threshold policy sweeps τ over data quantiles at each.
    needs_labels : reads the labels (the oracle): a bound, not a method; refused on traces without labels.
    in_engine : can run in the real early-exit engine (it cannot read labels).
    featured : the paper's method: drawn on top of the others.
    style : how a trade-off chart draws its sweep: "line", "layers" (one labelled marker per layer) or "point".
    """

    name: str
    label: str
    words: str
    test: Callable[[ExitPolicy], str]
    inputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    color: str = "#7F7F7F"
    short: str = ""
    value: Callable[[Signals, ExitPolicy], np.ndarray] | None = None
    value_name: str | None = None
    above: bool = False
    consecutive: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)
    tau: float | None = None
    tau_grid: str = "log"
    rule: Callable[[ExitPolicy, Signals], np.ndarray] | None = None
    stuck: Callable[[ExitPolicy, int], str] | None = None
    earliest: Callable[[ExitPolicy], int] | None = None
    settings: Callable[[GridArgs], Iterable[dict]] | None = None
    needs_labels: bool = False
    in_engine: bool = True
    featured: bool = False
    style: str = "line"

    def __post_init__(self) -> None:
        where = f"exit policy {self.name!r}"
        if (self.value is None) == (self.rule is None):
            raise DE3Error(f"{where}: give exactly one of value (a threshold test) and rule")
        unknown = [k for k in self.params if k not in POLICY]
        if unknown:
            raise DE3Error(f"{where}: unknown parameter(s) {', '.join(unknown)}; ExitPolicy has {', '.join(POLICY)}")
        if self.threshold != ("tau" in self.params) or self.threshold != (self.tau is not None):
            raise DE3Error(f"{where}: a threshold policy (value) uses tau and gives its opening tau; a rule does not")
        if self.threshold and self.value_name is None:
            raise DE3Error(f"{where}: say what its value is (value_name)")
        if self.consecutive and "patience" not in self.params:
            raise DE3Error(f"{where}: a test at `patience` layers in a row needs the patience parameter")
        if self.tau_grid not in TAU_GRIDS or self.style not in ("line", "layers", "point"):
            raise DE3Error(f"{where}: tau_grid is one of {', '.join(TAU_GRIDS)}; style is line, layers or point")
        if self.in_engine and self.needs_labels:
            raise DE3Error(f"{where}: a policy that reads the labels cannot run in the real engine")
        if not self.short:
            object.__setattr__(self, "short", self.label)

    @property
    def threshold(self) -> bool:
        """Whether the test compares one value with τ."""
        return self.value is not None

    @property
    def sign(self) -> float:
        """−1 when the policy exits *above* τ: the sweep compares −value with −τ."""
        return -1.0 if self.above else 1.0

    @property
    def curve_params(self) -> tuple[str, ...]:
        """The parameters that pick one of a threshold policy's curves (each curve sweeps τ): λ, patience."""
        return tuple(k for k in self.params if k != "tau") if self.threshold else ()

    def first_layer(self, policy: ExitPolicy) -> int:
        """The first layer (1-based) whose exit test can pass for some sample (``earliest``)."""
        if self.earliest is not None:
            return max(1, int(self.earliest(policy)))
        return policy.patience if self.consecutive else 1

    def exit_signal(self, signals: Signals, policy: ExitPolicy) -> np.ndarray:
        """The (N, M) signal whose test is ``signal < signal_tau(τ)`` — the form the sweep needs: the value,
        negated when the policy exits above τ (exact), and with ``consecutive`` the largest over the last
        ``patience`` layers (+inf before there are that many: never). Arrays or tensors, as ``value`` returns."""
        signal = self.value(signals, policy)
        signal = -signal if self.above else signal
        if self.consecutive:  # value < τ at `patience` layers in a row  <=>  their largest value < τ
            window = _copy(signal)
            for shift in range(1, policy.patience):
                window[:, shift:] = xp_of(signal).maximum(window[:, shift:], signal[:, :-shift])
            window[:, : policy.patience - 1] = np.inf
            signal = window
        return signal

    def signal_tau(self, tau):
        """τ as ``exit_signal`` is compared with it (negated when the policy exits above τ; same type)."""
        return -tau if self.above else tau

    def sweep_settings(self, args: GridArgs) -> list[dict]:
        """The parameter values (besides τ) a sweep visits: ``settings(args)``, or one setting of the defaults."""
        return [{}] if self.settings is None else list(self.settings(args))


REGISTRY: dict[str, PolicySpec] = {}


def register(spec: PolicySpec) -> PolicySpec:
    """Add ``spec`` to ``REGISTRY``, after the policies already there."""
    if spec.name in REGISTRY:
        raise DE3Error(f"exit policy {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


@dataclass(frozen=True)
class ExitPolicy:
    """An exit rule and its parameters. Frozen, so it is hashable and can key caches.

    name : a key of ``REGISTRY``.
    tau : threshold of a threshold policy: exit when its value is *below* tau (``PolicySpec.above``, max-probability:
        *above*). Any number but NaN: +inf exits everyone at layer 1 (max-probability: -inf).
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
        if not isinstance(self.name, str) or self.name not in REGISTRY:
            raise DE3Error(f"unknown exit policy {shorten(self.name)}; choose one of {', '.join(REGISTRY)}")
        check_fields(self, POLICY)  # tau not NaN (±inf are the sweep's ends), lambda_ >= 0, patience, layer >= 1

    @property
    def spec(self) -> PolicySpec:
        return REGISTRY[self.name]

    @property
    def label(self) -> str:
        return self.spec.label

    def params(self) -> dict[str, float | int]:
        """Only the parameters this policy uses."""
        return {k: getattr(self, k) for k in self.spec.params}

    def describe(self) -> str:
        params = ", ".join(f"{SYMBOLS.get(k, k)}={v:g}" for k, v in self.params().items())
        return f"{self.label}" + (f" ({params})" if params else "")

    def exit_test(self) -> str:
        """The exit test in words, e.g. "EDR(λ=1) < τ=0.02"."""
        return self.spec.test(self)


def run_lengths(cond: np.ndarray) -> np.ndarray:
    """Length of the run of True ending at each column: (N, M) bool -> (N, M) int32 (arrays or tensors)."""
    cond = as_array(cond)
    xp = xp_of(cond)
    out = xp.zeros_like(cond, dtype=xp.int32)
    run = out[:, 0] if cond.shape[1] else None
    for m in range(cond.shape[1]):
        run = (run + 1) * cond[:, m]  # +1 where True, back to 0 where False
        out[:, m] = run
    return out


def exit_mask(policy: ExitPolicy, signals: Signals) -> np.ndarray:
    """Whether each layer's exit test passes: (N, M) bool from (N, M) signal arrays (layers 1..M).

    Causal: column m depends only on columns <= m, so the engine can call it on the layers computed so far.
    The one exception is ``oracle`` (simulation only: it reads the labels): layer 1 passes for a sample that
    no layer gets right, which needs every layer.
    """
    spec = policy.spec
    if spec.rule is not None:
        return spec.rule(policy, signals)
    return spec.exit_signal(signals, policy) < spec.signal_tau(policy.tau)


def threshold_signal(signals: Signals, policy: ExitPolicy) -> np.ndarray | None:
    """The (N, L) values ``policy``'s τ is compared with (EDR(λ) for de3, entropy for entropy and pcee, DR for
    dr, max_prob for maxprob), or None for policies without a threshold (pabee, static, oracle)."""
    spec = policy.spec
    return spec.value(signals, policy) if spec.threshold else None


def input_columns() -> tuple[str, ...]:
    """``pred`` and every trace column some policy reads: what deciding one sample's exits needs."""
    return tuple(dict.fromkeys(["pred", *(c for spec in REGISTRY.values() for c in spec.inputs)]))


def _first(signals: Signals):
    for value in signals.values():
        return as_array(value)
    raise DE3Error("static exits need at least one signal array to know N and M")


# ---------------------------------------------------------------------------------------------------------
# The rules that are not a threshold on one value
# ---------------------------------------------------------------------------------------------------------


def _pabee(policy: ExitPolicy, signals: Signals) -> np.ndarray:
    pred = as_array(signals["pred"])
    xp = xp_of(pred)
    unchanged = xp.zeros_like(pred, dtype=xp.bool)
    unchanged[:, 1:] = pred[:, 1:] == pred[:, :-1]
    return run_lengths(unchanged) >= policy.patience  # `patience` consecutive unchanged predictions


def _static(policy: ExitPolicy, signals: Signals) -> np.ndarray:
    first = _first(signals)  # (N, M): columns from the chosen layer on pass
    xp = xp_of(first)
    mask = xp.zeros_like(first, dtype=xp.bool)
    mask[:, policy.layer - 1 :] = True
    return mask


def _oracle(policy: ExitPolicy, signals: Signals) -> np.ndarray:
    """First correct layer; a sample never right at any layer -> layer 1 (wrong anyway, costs least)."""
    correct = np.asarray(signals["correct"]).astype(bool)
    mask = correct.copy()
    mask[:, 0] |= ~correct.any(axis=1)
    return mask


def _column(name: str) -> Callable[[Signals, ExitPolicy], np.ndarray]:
    return lambda signals, policy: as_array(signals[name])


# ---------------------------------------------------------------------------------------------------------
# The policies, in the order of every table, legend and menu
# ---------------------------------------------------------------------------------------------------------

DE3 = "de3"  # the paper's method: λ is chosen for it (``compare.choose_lambda``)
ORACLE = "oracle"  # the bound of spec §5: curves draw its frontier (``curves.oracle_frontier``)

register(PolicySpec(
    name=DE3, label="DE3-BERT (EDR)", short="DE3", color="#0072B2", featured=True,
    words="DE3-BERT: EDR(λ) < τ — local entropy fused with the global distance ratio.",
    inputs=("entropy", "dr"), params=("tau", "lambda_"),
    value=lambda s, p: edr(as_array(s["dr"]), as_array(s["entropy"]), p.lambda_), value_name="edr",
    test=lambda p: f"EDR(λ={p.lambda_:g}) < τ={p.tau:g}", tau=0.2,
    settings=lambda g: [{"lambda_": float(lam)} for lam in g.lambdas]))
register(PolicySpec(
    name="dr", label="DR only", color="#56B4E9",
    words="DR only: DR < τ — the prototype geometry alone.",
    inputs=("dr",), params=("tau",), value=_column("dr"), value_name="dr",
    test=lambda p: f"DR < τ={p.tau:g}", tau=0.15))
register(PolicySpec(
    name="entropy", label="DeeBERT (entropy)", color="#E69F00",
    words="DeeBERT: entropy < τ — the classifier's own uncertainty alone.",
    inputs=("entropy",), params=("tau",), value=_column("entropy"), value_name="entropy",
    test=lambda p: f"entropy < τ={p.tau:g}", tau=0.3))
register(PolicySpec(
    name="maxprob", label="max-probability", color="#CC79A7",
    words="max-probability: the top class probability > τ.",
    inputs=("max_prob",), params=("tau",), value=_column("max_prob"), value_name="max_prob", above=True,
    test=lambda p: f"max-probability > τ={p.tau:g}", tau=0.95, tau_grid="1-log"))
register(PolicySpec(
    name="pabee", label="PABEE (patience)", color="#009E73",
    words="PABEE: the prediction has stayed the same for `patience` consecutive layers.",
    inputs=("pred",), params=("patience",), rule=_pabee,
    test=lambda p: f"prediction unchanged {p.patience} time(s) in a row",
    stuck=lambda p, L: f"patience {p.patience} needs {p.patience + 1} layers < {L}; lower the patience",
    earliest=lambda p: p.patience + 1,  # layer 1 has no previous prediction to compare with
    settings=lambda g: [{"patience": t} for t in range(1, g.num_layers)]))
register(PolicySpec(
    name="pcee", label="PCEE-BERT", color="#D55E00",
    words="PCEE-BERT: entropy < τ at `patience` consecutive layers.",
    inputs=("entropy",), params=("tau", "patience"), value=_column("entropy"), value_name="entropy",
    consecutive=True, test=lambda p: f"entropy < τ={p.tau:g} at {p.patience} layer(s) in a row", tau=0.7,
    settings=lambda g: [{"patience": int(t)} for t in g.patiences]))
register(PolicySpec(
    name="static", label="static exit", color="#7F7F7F", style="layers",
    words="static: every sample leaves at the same layer.",
    inputs=(), params=("layer",), rule=_static, test=lambda p: f"layer = {p.layer}",
    stuck=lambda p, L: f"the static exit layer is {p.layer}; pick a layer below {L}", earliest=lambda p: p.layer,
    settings=lambda g: [{"layer": k} for k in range(1, g.num_layers + 1)]))
register(PolicySpec(
    name=ORACLE, label="oracle", color="#8C6D31", style="point", needs_labels=True, in_engine=False,
    words="oracle: each sample leaves at the first layer whose prediction is right; one that no layer gets right "
          "leaves at layer 1 (it is wrong anyway). Uses the label — the best accuracy at the fewest layers, not a method.",
    inputs=("correct",), rule=_oracle,
    test=lambda p: "the prediction is correct; never right at any layer → layer 1 (needs the label: an upper bound)",
    stuck=lambda p, L: "every sample is first right at the last layer"))

# Views of the registry, for callers that want plain tables (the registry's order; shipped policies).
POLICIES = tuple(REGISTRY)
POLICY_LABELS = {name: spec.label for name, spec in REGISTRY.items()}
POLICY_INPUTS = {name: spec.inputs for name, spec in REGISTRY.items()}  # (N, M) arrays named as trace columns
THRESHOLD_SIGNAL = {name: spec.value_name for name, spec in REGISTRY.items() if spec.threshold}  # what τ is compared with


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


def decide_exits(signals: Signals, policy: ExitPolicy) -> ExitDecision:
    """Exit layer and answer of every sample under ``policy``, from (N, L) arrays including ``pred``.

    ``signals`` is any mapping of trace columns in wide form, e.g. ``Trace.wide``.
    """
    pred = np.asarray(signals["pred"])
    layers = first_exit(exit_mask(policy, signals))
    return ExitDecision(layers, pred[np.arange(len(layers)), layers - 1])
