"""The real early-exit engine equals the trace simulation sample for sample, and really skips layers."""

import random

import numpy as np
import pytest
import torch

from analysis.backbones import load_backbone, load_tokenizer
from analysis.config import ModelConfig
from analysis.engine import EarlyExitEngine, safe_threshold, threshold_values
from analysis.errors import DE3Error
from analysis.model import DE3Bert
from analysis.policies import ExitPolicy, decide_exits
from analysis.trace import load_trace
from analysis.tracer import trace_from_outputs, write_trace
from tests.conftest import WORDS

LABELS = ("neg", "pos", "mixed")


def make_texts(n=40, seed=0):
    """Texts of 1..30 words, so batches are padded and rows end at different widths."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def fitted_model(backbone, tokenizer, texts):
    """A DE3Bert on ``backbone`` with every class's prototypes set from one batch."""
    torch.manual_seed(0)
    model = DE3Bert(ModelConfig(backbone="tiny", label_names=LABELS), backbone).eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
    model.update_prototypes(out.embeddings, torch.arange(len(texts)) % len(LABELS))
    assert model.bank.is_fitted
    return model


def trace_of(model, tokenizer, texts, batch_size=16, pairs=None):
    """An in-memory trace of ``texts``: the model's full forward in padded batches, signals as write_trace makes them."""
    logits, dists = [], []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            second = None if pairs is None else pairs[i : i + batch_size]
            enc = tokenizer(texts[i : i + batch_size], second, padding=True, return_tensors="pt")
            out = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
            logits.append(out.logits)
            dists.append(out.distances)
    return trace_from_outputs(torch.cat(logits, 1).numpy(), torch.cat(dists, 1).numpy(), np.zeros(len(texts), dtype=np.int64))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is ~8x faster than two on a shared machine, and the result is the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tiny_backbone):
    texts = make_texts()
    tokenizer = load_tokenizer(tiny_backbone)
    model = fitted_model(load_backbone(tiny_backbone), tokenizer, texts[:12])
    return model, tokenizer, texts, trace_of(model, tokenizer, texts)


def policies_for(trace):
    """One policy of each kind with τ at the median of its signal at layer 1 (pcee: layer 2, where a run of 2 can
    first end), moved off the recorded values: about half the samples leave there, the rest later."""
    out = []
    for policy in (ExitPolicy("de3", lambda_=1.0), ExitPolicy("dr"), ExitPolicy("entropy"), ExitPolicy("maxprob"),
                   ExitPolicy("pcee", patience=2)):
        values = threshold_values(trace.wide, policy)[:, :-1]
        target = np.median(values[:, 1 if policy.name == "pcee" else 0])
        out.append(ExitPolicy(policy.name, tau=safe_threshold(values, target), lambda_=policy.lambda_,
                              patience=policy.patience))
    return out + [ExitPolicy("pabee", patience=1), ExitPolicy("static", layer=2)]


POLICY_NAMES = ["de3", "dr", "entropy", "maxprob", "pcee", "pabee", "static"]


@pytest.mark.parametrize("host_math", [None, False], ids=["host", "device"])
@pytest.mark.parametrize("batch_size", [1, 4, 32])
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_engine_equals_simulation(setup, name, batch_size, host_math):
    """Both paths: signals and test in NumPy (the CPU default) and in torch on the device (what a GPU runs)."""
    model, tokenizer, texts, trace = setup
    policy = next(p for p in policies_for(trace) if p.name == name)
    expected = decide_exits(trace.wide, policy)
    engine = EarlyExitEngine(model, tokenizer, host_math=host_math)
    result = engine.run(texts, policy=policy, batch_size=batch_size, record=True)
    np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
    np.testing.assert_array_equal(result.pred, expected.pred)
    assert result.layers_computed == int(expected.exit_layer.sum())
    if name not in ("pabee", "static"):  # the test could fail: exits are spread over layers, not all at one
        assert len(np.unique(result.exit_layer)) >= 2, policy
    # the signals of every layer a sample went through match the trace; none after it left
    L = trace.num_layers
    went = np.arange(1, L + 1)[None, :] <= result.exit_layer[:, None]  # (N, L)
    for col in ("entropy", "max_prob", "r1", "r2", "dr"):
        np.testing.assert_allclose(result.signals[col][went], trace.wide[col][went], atol=1e-4)
        assert np.isnan(result.signals[col][~went]).all()
    np.testing.assert_array_equal(result.signals["pred"][went], trace.wide["pred"][went])
    # unrecorded, the same exits and answers
    plain = engine.run(texts, policy=policy, batch_size=batch_size)
    assert plain.signals is None
    np.testing.assert_array_equal(plain.exit_layer, expected.exit_layer)
    np.testing.assert_array_equal(plain.pred, expected.pred)


def test_engine_equals_written_trace(setup, tmp_path):
    from analysis.data import Split

    model, tokenizer, texts, _ = setup
    split = Split(texts, None, [i % 3 for i in range(len(texts))])
    trace = load_trace(write_trace(model, tokenizer, split, tmp_path / "trace", label_names=list(LABELS), batch_size=8,
                                   progress=False))
    values = threshold_values(trace.wide, ExitPolicy("de3"))[:, :-1]
    policy = ExitPolicy("de3", tau=safe_threshold(values, np.quantile(values, 0.4)))
    expected = decide_exits(trace.wide, policy)
    result = EarlyExitEngine(model, tokenizer).run(texts, policy=policy, batch_size=4)
    np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
    np.testing.assert_array_equal(result.pred, expected.pred)


def test_engine_on_sentence_pairs(setup):
    model, tokenizer, texts, _ = setup
    firsts, seconds = texts[:20], texts[20:]
    trace = trace_of(model, tokenizer, firsts, pairs=seconds)
    values = threshold_values(trace.wide, ExitPolicy("dr"))[:, :-1]
    policy = ExitPolicy("dr", tau=safe_threshold(values, np.median(values[:, 0])))
    expected = decide_exits(trace.wide, policy)
    for batch_size in (1, 8):
        result = EarlyExitEngine(model, tokenizer).run(firsts, seconds, policy=policy, batch_size=batch_size)
        np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
        np.testing.assert_array_equal(result.pred, expected.pred)


def test_engine_really_skips_rows_and_padding(setup):
    """Each backbone layer sees only the rows still active, and only the columns some active row needs."""
    model, tokenizer, texts, trace = setup
    policy = next(p for p in policies_for(trace) if p.name == "de3")
    seen = []  # (layer, rows, width) of every layer call
    hooks = [layer.register_forward_hook(lambda mod, args, out, m=m: seen.append((m, *args[0].shape[:2])))
             for m, layer in enumerate(model.backbone.encoder.layer)]
    try:
        result = EarlyExitEngine(model, tokenizer).run(texts, policy=policy, batch_size=32)
    finally:
        for h in hooks:
            h.remove()
    rows = sum(r for _, r, _ in seen)
    assert rows == result.layers_computed == result.exit_layer.sum() < len(texts) * trace.num_layers
    runs, widths_shrank = [], False  # the calls of each batch, which starts again at layer 0
    for m, r, w in seen:
        if m == 0:
            runs.append([])
        runs[-1].append((r, w))
    for run in runs:  # inside a batch, rows and width only go down
        assert [r for r, _ in run] == sorted((r for r, _ in run), reverse=True)
        assert [w for _, w in run] == sorted((w for _, w in run), reverse=True)
        widths_shrank |= run[-1][1] < run[0][1]
    assert widths_shrank  # the longest rows left early, so padding columns were cut
    assert result.speedup == pytest.approx(trace.num_layers / result.exit_layer.mean())


@pytest.mark.parametrize("name", ["de3", "dr", "entropy"])
@pytest.mark.parametrize("batch_size", [1, 32])
def test_threshold_invariants(setup, name, batch_size):
    model, tokenizer, texts, trace = setup
    engine = EarlyExitEngine(model, tokenizer)
    everyone = engine.run(texts, policy=ExitPolicy(name, tau=float("inf")), batch_size=batch_size)
    assert (everyone.exit_layer == 1).all() and everyone.layers_computed == len(texts)
    np.testing.assert_array_equal(everyone.pred, trace.wide["pred"][:, 0])
    nobody = engine.run(texts, policy=ExitPolicy(name, tau=0.0), batch_size=batch_size)
    assert (nobody.exit_layer == trace.num_layers).all()
    np.testing.assert_array_equal(nobody.pred, trace.wide["pred"][:, -1])


def test_oracle_and_bad_inputs_raise(setup):
    model, tokenizer, texts, _ = setup
    engine = EarlyExitEngine(model, tokenizer)
    with pytest.raises(DE3Error, match="oracle"):
        engine.run(texts, policy=ExitPolicy("oracle"))
    with pytest.raises(DE3Error, match="batch_size"):
        engine.run(texts, policy=ExitPolicy("static"), batch_size=0)
    with pytest.raises(DE3Error, match="no texts"):
        engine.run([], policy=ExitPolicy("static"))


def _model_state(model) -> tuple:
    """Everything a policy could leave on a model: parameters and buffers, the config, every module's attributes."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attributes = {(name, k): repr(v) for name, module in model.named_modules() for k, v in vars(module).items()
                  if not k.startswith("_")}
    return tensors, model.config, attributes


def test_a_policy_is_an_argument_never_model_state(setup):
    """One cached model serves every session (STYLE 3): running it under one policy changes nothing that a run under
    another policy sees. The model's tensors, config and attributes are unchanged after runs of every policy, and a
    policy's exits are the same before and after the others ran."""
    model, tokenizer, texts, trace = setup
    engine = EarlyExitEngine(model, tokenizer)
    tensors, config, attributes = _model_state(model)
    policies = policies_for(trace)
    first = {p: engine.run(texts, policy=p, batch_size=8) for p in policies}
    for p in reversed(policies):  # the same policies again, in the other order
        again = engine.run(texts, policy=p, batch_size=8)
        np.testing.assert_array_equal(again.exit_layer, first[p].exit_layer)
        np.testing.assert_array_equal(again.pred, first[p].pred)
    assert len({tuple(r.exit_layer) for r in first.values()}) > 1  # the policies did decide differently
    after_tensors, after_config, after_attributes = _model_state(model)
    assert after_config == config and after_attributes == attributes
    assert after_tensors.keys() == tensors.keys()
    assert all(torch.equal(after_tensors[k], v) for k, v in tensors.items())


def test_engine_packs_the_signals_it_records_by_name(setup):
    """A run's per-layer signals are the model's own ``exit_signals``, each under its own name (not a row order kept
    in step by hand)."""
    from analysis.engine import SIGNALS
    from analysis.signals import exit_signals

    model, tokenizer, texts, _ = setup
    enc = tokenizer(texts[:1], return_tensors="pt")
    result = EarlyExitEngine(model, tokenizer).run(texts[:1], policy=ExitPolicy("static", layer=model.num_layers),
                                                   record=True)
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
    s = exit_signals(out.logits, out.distances)
    for name in SIGNALS:
        np.testing.assert_allclose(result.signals[name][0], getattr(s, name)[:, 0].float().numpy(), atol=1e-5,
                                   err_msg=name)


def test_unsupported_backbone_names_its_type():
    from transformers import DistilBertConfig, DistilBertModel

    backbone = DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37))
    model = DE3Bert(ModelConfig(backbone="tiny", label_names=("a", "b")), backbone)
    with pytest.raises(DE3Error, match="distilbert"):
        EarlyExitEngine(model, tokenizer=None)


@pytest.mark.parametrize("kind", ["roberta", "electra"])
def test_other_bert_family_backbones(tiny_backbone, kind):
    """RoBERTa (positions from input ids) and ELECTRA (embedding projection) replay their forward exactly."""
    from transformers import ElectraConfig, ElectraModel, RobertaConfig, RobertaModel

    tokenizer = load_tokenizer(tiny_backbone)
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=72, pad_token_id=0)
    torch.manual_seed(0)
    backbone = RobertaModel(RobertaConfig(**common)) if kind == "roberta" else ElectraModel(ElectraConfig(embedding_size=16, **common))
    texts = make_texts(24, seed=1)
    model = fitted_model(backbone.eval(), tokenizer, texts[:9])
    trace = trace_of(model, tokenizer, texts)
    values = threshold_values(trace.wide, ExitPolicy("entropy"))[:, :-1]
    policy = ExitPolicy("entropy", tau=safe_threshold(values, np.median(values)))
    expected = decide_exits(trace.wide, policy)
    for batch_size in (1, 8):
        result = EarlyExitEngine(model, tokenizer).run(texts, policy=policy, batch_size=batch_size)
        np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
        np.testing.assert_array_equal(result.pred, expected.pred)


def test_safe_threshold_hand_computed():
    values = np.array([[0.4, 0.1], [0.2, np.nan]])
    assert safe_threshold(values, 0.2) == pytest.approx(0.15)  # on a value: into the gap below it
    assert safe_threshold(values, 0.3) == pytest.approx(0.3)  # (0.2, 0.4) -> its midpoint
    assert safe_threshold(values, 0.39) == pytest.approx(0.3)
    assert safe_threshold(values, 0.05) == pytest.approx(0.0)  # below all: one mean spacing (0.1) below the least
    assert safe_threshold(values, 0.9) == pytest.approx(0.5)
    assert safe_threshold(values, float("inf")) == float("inf")
    # the set of values below tau is what it was below the target
    rng = np.random.default_rng(0)
    v = rng.random(1000).astype(np.float32)
    for target in rng.random(20):
        tau = safe_threshold(v, target)
        assert ((v < tau) == (v < target)).all()


# ---- the per-layer work: only what the policy reads, its test where it can pass, one transfer per layer ----------


def test_signals_on_the_host_equal_the_trace_formulas():
    """The CPU path's NumPy signals are ``signals.exit_signals`` (the trace's torch formulas) to float rounding, and the
    device path's are the same torch operations; every distance, 2 to 5 classes, ties and large logits."""
    from analysis.engine import SIGNALS, device_signals, host_signals
    from analysis.signals import exit_signals, pairwise_distance

    rng = np.random.default_rng(0)
    for distance in ("euclidean", "sqeuclidean", "cosine"):
        for k in (2, 3, 5):
            logits = rng.normal(0, 3, size=(7, k)).astype(np.float32)
            logits[0] = 0.0  # a tie: the first class, as torch's max
            logits[1, 0] = 80.0  # near-certain: entropy ~0
            emb = rng.normal(size=(7, 16)).astype(np.float32)
            protos = rng.normal(size=(k, 16)).astype(np.float32)
            protos[1] = emb[2]  # an embedding on a prototype: a zero distance
            dist = pairwise_distance(torch.from_numpy(emb), torch.from_numpy(protos), distance)
            ref = exit_signals(torch.from_numpy(logits)[None], dist[None])
            host = host_signals(logits, emb, protos, distance, SIGNALS)
            dev = device_signals(torch.from_numpy(logits), torch.from_numpy(emb), torch.from_numpy(protos), distance,
                                 SIGNALS)
            for name in SIGNALS:
                want = getattr(ref, name)[0].numpy()
                np.testing.assert_allclose(host[name], want, rtol=1e-5, atol=1e-6, err_msg=f"{distance} K={k} {name}")
                np.testing.assert_array_equal(dev[name].numpy(), want, err_msg=f"{distance} K={k} {name}")
            for i in range(len(logits)):  # one row (batch 1) takes the plain-float path: the same values
                one = host_signals(logits[i : i + 1], emb[i : i + 1], protos, distance, SIGNALS)
                for name in SIGNALS:
                    assert one[name].shape == (1,) and one[name].dtype == host[name].dtype, name
                    np.testing.assert_allclose(one[name], getattr(ref, name)[0].numpy()[i : i + 1], rtol=1e-5,
                                               atol=1e-6, err_msg=f"one row {i}: {distance} K={k} {name}")
            # only what is asked for: no distances for a policy that reads none
            assert set(host_signals(logits, None, protos, distance, ("pred", "entropy"))) == {"pred", "entropy"}


def test_a_plain_head_is_applied_as_its_operations(setup):
    """The engine's head is ``ExitHead.forward`` to the bit (mean and [CLS] pooling, padded rows), and a head it cannot
    replay (a hook on it) is called as a module."""
    from analysis.engine import _Pooling, _plain_head
    from analysis.model import ExitHead

    model, tokenizer, texts, _ = setup
    enc = tokenizer(texts[:5], padding=True, return_tensors="pt")
    torch.manual_seed(1)
    hidden = torch.randn(5, enc["input_ids"].shape[1], 32)
    cls_head = ExitHead(32, 3, 32, "cls", 0.1).eval()
    with torch.inference_mode():
        for head in (model.heads[0], model.heads[-1], cls_head):
            fast = _plain_head(head)
            logits, emb = fast(hidden, _Pooling(enc["attention_mask"], hidden.dtype), True)
            want_logits, want_emb = head(hidden, enc["attention_mask"])
            assert torch.equal(logits, want_logits) and torch.equal(emb, want_emb)
            assert fast(hidden, _Pooling(enc["attention_mask"], hidden.dtype), False)[1] is None
            ones = torch.ones_like(enc["attention_mask"])  # no padding: the mask is not multiplied in, same bits
            assert torch.equal(fast(hidden, _Pooling(ones, hidden.dtype, dense=True), True)[1], head(hidden, ones)[1])
    handle = cls_head.register_forward_hook(lambda *a: None)
    try:
        assert _plain_head(cls_head) is None
    finally:
        handle.remove()


@pytest.mark.parametrize("name, patience, layer", [("de3", 2, 1), ("dr", 2, 1), ("entropy", 2, 1), ("maxprob", 2, 1),
                                                   ("pcee", 1, 1), ("pcee", 3, 1), ("pabee", 1, 1), ("pabee", 2, 1),
                                                   ("static", 2, 1), ("static", 2, 3)])
def test_no_test_passes_before_the_first_layer_it_can(name, patience, layer):
    """``PolicySpec.first_layer``: the engine skips tests (and their wait for the device) before it, so no rule may
    pass there — checked on random signals, on NumPy arrays and torch tensors alike."""
    from analysis.policies import exit_mask

    rng = np.random.default_rng(0)
    n, L = 200, 6
    signals = {"pred": rng.integers(0, 2, (n, L)), "entropy": rng.random((n, L)), "dr": rng.random((n, L)),
               "max_prob": rng.random((n, L)), "r1": rng.random((n, L)), "r2": rng.random((n, L))}
    policy = ExitPolicy(name, tau=0.5, patience=patience, layer=layer)
    first = policy.spec.first_layer(policy)
    mask = exit_mask(policy, signals)
    assert not mask[:, : first - 1].any() and mask[:, first - 1 :].any()
    tensors = {k: torch.from_numpy(v) for k, v in signals.items()}
    assert torch.equal(exit_mask(policy, tensors), torch.from_numpy(np.asarray(mask)))  # the device path's rule


def _count_transfers(monkeypatch):
    """Count every way a tensor's values reach the host (what waits for a GPU)."""
    counts = {"n": 0}
    for method in ("cpu", "item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    return counts


@pytest.mark.parametrize("policy, tested_layers", [(ExitPolicy("de3", tau=-1.0), 2), (ExitPolicy("pabee", patience=2), 0),
                                                   (ExitPolicy("pcee", tau=-1.0, patience=2), 1),
                                                   (ExitPolicy("static", layer=3), 0)])
def test_the_device_path_waits_once_per_tested_layer(setup, monkeypatch, policy, tested_layers):
    """On an accelerator (the torch path, run here on the CPU): one transfer per layer where some row can leave, none
    where none can (PABEE before patience + 1 layers, static before its layer), one per batch for the answers."""
    model, tokenizer, texts, _ = setup
    engine = EarlyExitEngine(model, tokenizer, host_math=False)
    enc = tokenizer(texts[:1], return_tensors="pt")
    engine.run_batch(enc, policy=policy)  # warm: the policy's test is probed once on tensors
    counts = _count_transfers(monkeypatch)
    result = engine.run_batch(enc, policy=policy)
    assert result.exit_layer.tolist() == [3] and result.signals is None  # nobody leaves early: every layer runs
    assert counts["n"] == tested_layers + 1


def test_the_engine_moves_inputs_to_the_model_device(setup, monkeypatch):
    """``run_batch`` puts every input on ``model.device`` (on a GPU, inputs collated on the CPU still run)."""
    model, tokenizer, texts, _ = setup
    engine = EarlyExitEngine(model, tokenizer)
    enc = dict(tokenizer(texts[:3], padding=True, return_tensors="pt"))
    moved = []
    original = torch.Tensor.to

    def recording(self, *args, **kwargs):
        if any(self is v for v in enc.values()):
            moved.append((next(k for k, v in enc.items() if v is self), args[0] if args else kwargs.get("device")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording)
    engine.run_batch(enc, policy=ExitPolicy("static", layer=3))
    assert set(moved) == {(k, model.device) for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_a_policy_written_with_numpy_alone_runs_on_both_paths(setup, monkeypatch):
    """A new policy needs nothing for the engine: one whose value is NumPy-only is tested on the host by the device
    path (its first probe on tensors says so), with the same exits."""
    from analysis import policies
    from tests.test_policies import toy_spec

    spec = toy_spec()
    monkeypatch.setitem(policies.REGISTRY, spec.name, spec)
    model, tokenizer, texts, trace = setup
    values = threshold_values(trace.wide, ExitPolicy(spec.name))[:, :-1]
    policy = ExitPolicy(spec.name, tau=safe_threshold(values, np.median(values[:, 0])))
    expected = decide_exits(trace.wide, policy)
    for host_math in (None, False):
        engine = EarlyExitEngine(model, tokenizer, host_math=host_math)
        result = engine.run(texts, policy=policy, batch_size=4)
        np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
        np.testing.assert_array_equal(result.pred, expected.pred)
        assert len(np.unique(result.exit_layer)) >= 2
    assert engine._torch_tests == {spec.name: False}


@pytest.mark.parametrize("host_math", [None, False], ids=["host", "device"])
def test_compiled_engine_equals_simulation(setup, host_math):
    """compile: every layer and head under torch.compile (dynamic batch and length; the "eager" backend checks the
    graphs here without code generation), the same exits and answers, recorded signals included."""
    model, tokenizer, texts, trace = setup
    engine = EarlyExitEngine(model, tokenizer, compile="eager", host_math=host_math)
    for policy in (p for p in policies_for(trace) if p.name in ("de3", "pabee")):
        expected = decide_exits(trace.wide, policy)
        for batch_size in (1, 4, 32):
            result = engine.run(texts, policy=policy, batch_size=batch_size, record=batch_size == 4)
            np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
            np.testing.assert_array_equal(result.pred, expected.pred)
    went = np.arange(1, trace.num_layers + 1)[None, :] <= result.exit_layer[:, None]
    np.testing.assert_allclose(engine.run(texts, policy=policy, batch_size=4, record=True).signals["dr"][went],
                               trace.wide["dr"][went], atol=1e-4)


@pytest.mark.parametrize("host_math", [None, False], ids=["host", "device"])
def test_engine_equals_simulation_when_the_prototypes_read_the_pooled_tokens(tiny_backbone, host_math):
    """``proto_input="pooled"``: the prototypical network reads the pooled tokens, not the pooler's output; the engine
    applies the head the same way, so it still equals the trace."""
    texts = make_texts()
    tokenizer = load_tokenizer(tiny_backbone)
    torch.manual_seed(0)
    model = DE3Bert(ModelConfig(backbone="tiny", label_names=LABELS, proto_input="pooled"),
                    load_backbone(tiny_backbone)).eval()
    enc = tokenizer(texts[:12], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
        pooled = (model.backbone(**enc, output_hidden_states=True).hidden_states[1] * enc["attention_mask"][..., None]
                  ).sum(1) / enc["attention_mask"].sum(1, keepdim=True)
    torch.testing.assert_close(out.embeddings[0], model.heads[0].proto(pooled))  # the pooled tokens, not the pooler
    model.update_prototypes(out.embeddings, torch.arange(12) % len(LABELS))
    trace = trace_of(model, tokenizer, texts)
    for policy in policies_for(trace)[:3]:
        expected = decide_exits(trace.wide, policy)
        result = EarlyExitEngine(model, tokenizer, host_math=host_math).run(texts, policy=policy, batch_size=4)
        np.testing.assert_array_equal(result.exit_layer, expected.exit_layer)
        np.testing.assert_array_equal(result.pred, expected.pred)
