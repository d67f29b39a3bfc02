"""DE3Bert on a tiny random BERT: shapes, the output contract, prototypes, DAR and checkpoints."""

import json
import math

import pytest
import torch

from analysis.backbones import load_backbone
from analysis.config import ModelConfig
from analysis.errors import CheckpointError, DE3Error
from analysis.model import DE3Bert, DE3Output, PrototypeBank, dar_proto_ce, dar_ratio

B, T = 4, 7


def batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.backbone.config.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0  # one padded sample
    return {"input_ids": ids, "attention_mask": mask}


def test_forward_contract(tiny_model):
    out = tiny_model(**batch(tiny_model))
    L, K, H = 3, 3, 32
    assert isinstance(out, DE3Output)
    assert out.logits.shape == (L, B, K) and out.embeddings.shape == (L, B, H) and out.distances.shape == (L, B, K)
    assert out.loss is None
    labelled = tiny_model(**batch(tiny_model), labels=torch.tensor([0, 1, 2, 1]))
    assert labelled.loss.ndim == 0 and torch.isfinite(labelled.loss)
    s = out.signals()
    assert s.dr.shape == (L, B) and ((s.entropy >= 0) & (s.entropy <= 1)).all()


def test_padding_does_not_change_mean_pooling(tiny_model):
    inputs = batch(tiny_model)
    short = {k: v[:1, :4] for k, v in inputs.items()}  # sample 0 without its padding
    full = tiny_model(**inputs).logits[:, 0]
    alone = tiny_model(**short).logits[:, 0]
    assert torch.allclose(full, alone, atol=1e-5)


def test_exit_poolers_start_from_backbone_pooler(tiny_backbone):
    from analysis.backbones import load_backbone

    backbone = load_backbone(tiny_backbone)
    weight = backbone.pooler.dense.weight.detach().clone()
    model = DE3Bert(ModelConfig(backbone=tiny_backbone, label_names=("a", "b")), backbone)
    assert model.backbone.pooler is None  # unused parameters would break distributed training
    assert all(torch.equal(h.pooler.weight, weight) for h in model.heads)


def test_ema_prototype_update_hand_computed():
    bank = PrototypeBank(num_layers=1, num_labels=2, proto_dim=2, distance="euclidean")
    bank.apply_stats(*bank.batch_stats(torch.tensor([[[1.0, 1.0], [3.0, 3.0]]]), torch.tensor([0, 0]), 2), gamma=0.1)
    # first sight of class 0 initialises it to the batch mean; class 1 stays unset
    assert bank.prototypes[0, 0].tolist() == [2.0, 2.0] and bank.initialized.tolist() == [True, False]
    bank.apply_stats(*bank.batch_stats(torch.tensor([[[4.0, 4.0], [10.0, 0.0]]]), torch.tensor([0, 1]), 2), gamma=0.1)
    # class 0: 0.9 * 2 + 0.1 * 4 = 2.2; class 1 first seen -> its mean
    assert bank.prototypes[0, 0].tolist() == pytest.approx([2.2, 2.2])
    assert bank.prototypes[0, 1].tolist() == pytest.approx([10.0, 0.0])
    assert bank.is_fitted


def test_update_after_backward_keeps_old_prototypes_in_loss(tiny_model):
    tiny_model.train()
    labels = torch.tensor([0, 1, 2, 1])
    first = tiny_model(**batch(tiny_model), labels=labels)
    tiny_model.update_prototypes(first.embeddings, labels)  # initialises all three classes
    out = tiny_model(**batch(tiny_model, 1), labels=labels)
    before = tiny_model.bank.prototypes.clone()
    tiny_model.update_prototypes(out.embeddings, labels)  # buffer replaced, not modified in place
    out.loss.backward()  # would fail if the graph's prototypes had been changed in place
    assert not torch.equal(before, tiny_model.bank.prototypes)
    assert out.dar_loss > 0
    assert all(p.grad is not None for p in tiny_model.heads[0].proto.parameters())
    assert tiny_model.heads[-1].proto.weight.grad is None or tiny_model.heads[-1].proto.weight.grad.abs().sum() == 0  # display only


def test_dar_forms_hand_computed():
    d = torch.tensor([[[1.0, 2.0]]])  # (L'=1, B=1, K=2)
    y, valid = torch.tensor([0]), torch.tensor([True, True])
    assert dar_proto_ce(d, y, valid, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))  # -log softmax(-d)_0
    assert dar_ratio(d, y, valid, 1.0).item() == pytest.approx(0.25)  # 0.5 (1 + (1-2)/2)


def test_alpha_zero_removes_dar_from_loss(tiny_backbone):
    from analysis.backbones import load_backbone

    torch.manual_seed(0)
    model = DE3Bert(ModelConfig(backbone=tiny_backbone, label_names=("a", "b", "c"), alpha=0.0), load_backbone(tiny_backbone))
    labels = torch.tensor([0, 1, 2, 1])
    model.update_prototypes(model(**batch(model), labels=labels).embeddings, labels)
    out = model(**batch(model), labels=labels)
    assert out.dar_loss > 0 and torch.allclose(out.loss, out.ce_loss)


def test_needs_two_classes(tiny_backbone):
    from analysis.backbones import load_backbone

    with pytest.raises(DE3Error, match="at least 2 classes"):
        DE3Bert(ModelConfig(backbone=tiny_backbone, label_names=("only",)), load_backbone(tiny_backbone))


def test_bad_model_config_values():
    for bad in ({"pooling": "max"}, {"distance": "l1"}, {"dar_form": "x"}, {"alpha": -1}, {"gamma": 0}):
        with pytest.raises(DE3Error):
            ModelConfig(**bad)
    with pytest.raises(DE3Error, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"threshold": 0.5})


# ---- checkpoints ----


@pytest.fixture
def saved(tiny_model, tmp_path):
    labels = torch.tensor([0, 1, 2, 1])
    tiny_model.update_prototypes(tiny_model(**batch(tiny_model)).embeddings, labels)
    return tiny_model, tiny_model.save_pretrained(tmp_path / "ckpt")


def test_round_trip_identical_outputs(saved):
    model, folder = saved
    loaded = DE3Bert.from_pretrained(folder)
    inputs = batch(model, 3)
    a, b = model(**inputs), loaded(**inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.distances, b.distances)
    assert loaded.config == model.config and torch.equal(loaded.bank.prototypes, model.bank.prototypes)


def test_checkpoint_files_are_safetensors_not_pickle(saved):
    _, folder = saved
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["de3"]["label_names"] == ["neg", "pos", "mixed"]
    assert config["id2label"] == {"0": "neg", "1": "pos", "2": "mixed"}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_checkpoint_older_than_proto_input_keeps_its_meaning(saved):
    """config.json written before ``proto_input`` existed: its prototypes read the pooler output, whatever the
    field's default is now (``config.BEFORE_FIELD``)."""
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    del config["de3"]["proto_input"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = DE3Bert.from_pretrained(folder)
    assert loaded.config.proto_input == "pooler" and all(h.proto_input == "pooler" for h in loaded.heads)
    inputs = batch(model, 3)
    assert torch.equal(model(**inputs).distances, loaded(**inputs).distances)


def test_proto_input_round_trips(tiny_backbone, tmp_path):
    model = DE3Bert(ModelConfig(backbone=tiny_backbone, label_names=("a", "b"), proto_input="pooled"),
                    load_backbone(tiny_backbone)).eval()
    loaded = DE3Bert.from_pretrained(model.save_pretrained(tmp_path / "ck"))
    assert loaded.config.proto_input == "pooled" and loaded.heads[0].proto_input == "pooled"


def test_missing_weights(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="missing model.safetensors.*pickle weights are refused"):
        DE3Bert.from_pretrained(folder)


def test_corrupt_weights(saved):
    _, folder = saved
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        DE3Bert.from_pretrained(folder)


def test_label_count_mismatch(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["de3"]["label_names"] = ["neg", "pos"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="3 classes but config.json lists 2"):
        DE3Bert.from_pretrained(folder)


def test_not_a_checkpoint(tiny_backbone, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        DE3Bert.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="plain Hugging Face model"):
        DE3Bert.from_pretrained(tiny_backbone)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json"):
        DE3Bert.from_pretrained(tmp_path / "empty")


def test_resave_replaces_whole_folder(saved):
    model, folder = saved
    (folder / "stale.txt").write_text("old")
    model.save_pretrained(folder)
    assert not (folder / "stale.txt").exists() and (folder / "model.safetensors").is_file()


def test_compact_checkpoint_round_trip(saved, tmp_path):
    model, _ = saved
    model.heads[0].classifier.weight.data += 0.5  # a trained head differs from anything in the base
    compact = model.save_pretrained(tmp_path / "compact", half=True, omit_base=True)
    config = json.loads((compact / "config.json").read_text())
    omitted = config["de3_base_weights"]["tensors"]
    assert "backbone.embeddings.word_embeddings.weight" in omitted  # untouched backbone: taken from the base
    assert not any(k.startswith("heads.") for k in omitted)
    loaded = DE3Bert.from_pretrained(compact)
    assert all(v.dtype != torch.float16 for v in loaded.state_dict().values())
    inputs = batch(model, 5)
    assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=5e-3)  # float16 rounding only
    full = model.save_pretrained(tmp_path / "full")
    assert (compact / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size / 2


def test_compact_checkpoint_needs_its_base(saved, tmp_path):
    model, _ = saved
    compact = model.save_pretrained(tmp_path / "compact", omit_base=True)
    config = json.loads((compact / "config.json").read_text())
    config["de3_base_weights"]["backbone"] = str(tmp_path / "gone")
    (compact / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="takes some weights from backbone"):
        DE3Bert.from_pretrained(compact)
