"""The SST-2 study's report, on synthetic traces (the real run takes tens of minutes: docs/results/sst2.md)."""

import json
import math
import re

import numpy as np
import pytest

from analysis import compare
from analysis.commands import main
from analysis.commands import study
from analysis.errors import DE3Error
from analysis.commands.study import (StudySettings, _fmt_interval, analyse, cmd_study, entropy_bins, exit_disagreement,
                                     run_name, seed_interval, verdict_agreement)
from analysis.tracer import trace_from_outputs


def synthetic(seed: int, split: str, n: int = 300, num_layers: int = 6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    right = rng.random((num_layers, n)) < np.linspace(0.6, 0.9, num_layers)[:, None]
    pred = np.where(right, labels, 1 - labels)
    logits = np.zeros((num_layers, n, 2))
    np.put_along_axis(logits, pred[..., None], rng.uniform(0.1, 4.0, (num_layers, n, 1)), axis=2)
    trace = trace_from_outputs(logits, rng.uniform(0.3, 2.0, (num_layers, n, 2)), labels)
    trace.meta["split"] = split
    return trace


def _seed_traces(j: int, i: int, split: str):
    """The synthetic trace of seed index j, variant index i."""
    return synthetic(100 * j + 10 * i + (split == "test"), split)


def test_report_has_every_section(tmp_path):
    settings = StudySettings(n_boot=200, seeds=2)
    work = tmp_path / "work"
    for i, variant in enumerate(("de3", "no_dar")):
        for j, seed in enumerate(settings.seed_list):
            for split in ("validation", "test"):
                _seed_traces(j, i, split).save(work / run_name(variant, seed, settings) / "traces" / split)
    out = tmp_path / "docs" / "sst2.md"
    text = analyse(work, ["de3", "no_dar"], settings, {"de3": 60.0, "no_dar": 60.0, "de3-seed-43": 120.0}, out,
                   log=lambda *_: None)
    assert out.read_text() == text and out.with_suffix(".png").stat().st_size > 10_000
    headings = ("## Over the seeds", "## Setup", "## Every exit's accuracy", "## Matched speed-up", "## Is the difference real?",
                "## Ablations", "## Diagnostics", "### Where DE3 and the entropy part ways at 2×",
                "### Does the distance help where the entropy is overconfident?", "## Findings")
    assert [text.index(h) for h in headings] == sorted(text.index(h) for h in headings)  # the headline on top
    assert "DE3-BERT (EDR) (λ=" in text and "oracle" in text.lower() and "95 % CI" in text
    assert "oracle frontier" in text and "Δ sentences" in text
    assert "t(0.975, 1) = 12.71" in text and "| seed 42 | seed 43 |" in text and "seeds agreeing" in text
    assert "| training time | de3: 1.0, 2.0 min; no_dar: 1.0, – min" in text and "| run time |" in text

    # the headline's DE3 − entropy cell at 2× is seed_interval over the seeds' own comparisons (λ on each validation)
    diffs = []
    for j in range(2):
        table = compare.compare(_seed_traces(j, 0, "test"), _seed_traces(j, 0, "validation"), (1.5, 2.0, 3.0),
                                n_boot=10).table.set_index("policy")
        diffs.append(table.loc["de3", "2x"] - table.loc["entropy", "2x"])
    row = next(line for line in text.splitlines() if line.startswith("| DE3 − entropy (points) |"))
    assert row.split("|")[3].strip() == _fmt_interval(seed_interval(diffs), 2, signed=True)


def test_one_seed_report_shows_single_values(tmp_path):
    settings = StudySettings(n_boot=50, seeds=1)
    for split in ("validation", "test"):
        synthetic(1 + (split == "test"), split).save(tmp_path / "work" / "de3" / "traces" / split)
    text = analyse(tmp_path / "work", ["de3"], settings, {}, tmp_path / "r.md", log=lambda *_: None)
    assert "one seed, so no interval" in text and "| mean of " not in text and "seeds' group edges" not in text
    head = text[text.index("## Over the seeds"):text.index("## Setup")]
    assert "[" not in head.split("| DeeBERT (entropy) |")[1].splitlines()[0]  # a single value, no interval
    assert "| 2× | " in head and "1 of 1: " in head


def test_bootstrap_section_reads_the_shared_matched_vs_baseline(tmp_path):
    """The study's "Is the difference real?" rows are compare.matched_vs_baseline's numbers (DE3 vs each baseline)."""
    from analysis import compare

    work = tmp_path / "work"
    for split in ("validation", "test"):
        synthetic(1 + (split == "test"), split).save(work / "de3" / "traces" / split)
    text = analyse(work, ["de3"], StudySettings(n_boot=100, seeds=1), {"de3": 1.0}, tmp_path / "r.md", log=lambda *_: None)
    test = synthetic(2, "test")
    comp = compare.compare(test, synthetic(1, "validation"), (1.5, 2.0, 3.0))
    vs = compare.matched_vs_baseline(test, comp.curves, (2.0,), lambda_=comp.lambda_, baseline="maxprob",
                                     policies=("de3",), n_boot=100, seed=42).iloc[0]
    row = next(line for line in text.splitlines() if line.startswith("| 2× | max-probability |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == [f"{100 * vs['diff']:+.2f}", f"[{100 * vs['low']:+.2f}, {100 * vs['high']:+.2f}]",
                          f"{int(vs['diff_samples']):+d}"]


def test_study_refuses_a_folder_without_sst2(tmp_path):
    class Args:
        variants, data_dir = "de3", str(tmp_path)

    with pytest.raises(DE3Error, match="no SST-2 folder"):
        cmd_study(Args())
    Args.variants = "de3,nope"
    with pytest.raises(DE3Error, match="unknown variant"):
        cmd_study(Args())


# ---- seeds: aggregation by hand, diagnostics, folders and the flag ----


def test_seed_interval_by_hand():
    got = seed_interval([0.80, 0.82, 0.84])  # mean 0.82, sd 0.02, t(0.975, 2) = 4.302652729911275
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.82)
    assert (got["low"], got["high"]) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    got = seed_interval([0.80, math.nan, 0.84])  # NaN (unreachable) left out: n = 2, t(0.975, 1) = 12.706204736174705
    half = 12.706204736174705 * math.sqrt(0.0008) / math.sqrt(2)
    assert got["n"] == 2 and (got["low"], got["high"]) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    one = seed_interval([0.5])
    assert one["mean"] == 0.5 and one["n"] == 1 and math.isnan(one["low"]) and math.isnan(one["high"])
    assert seed_interval([math.nan, math.nan])["n"] == 0
    assert _fmt_interval({"mean": 0.82, "low": 0.7703, "high": 0.8697, "n": 3}, 3) == "82.00 [77.03, 86.97]"
    assert _fmt_interval({"mean": 0.82, "low": 0.7703, "high": 0.8697, "n": 2}, 3) == "82.00 [77.03, 86.97] (2 of 3 seeds)"
    assert _fmt_interval({"mean": -0.0033, "low": -0.02, "high": 0.0134, "n": 2}, 2, signed=True) == "-0.33 [-2.00, +1.34]"
    assert _fmt_interval(one, 1) == "50.00" and _fmt_interval({"n": 0}, 3) == "–"


def test_verdict_agreement_by_hand():
    nsd = "no significant difference"
    a = verdict_agreement(["ahead", "ahead", nsd])
    assert (a["better"], a["worse"], a["no difference"], a["verdict"], a["agree"], a["n"]) == (2, 0, 1, "better", 2, 3)
    a = verdict_agreement(["behind", "unreachable", "behind"])
    assert (a["worse"], a["unreachable"], a["verdict"], a["agree"], a["n"]) == (2, 1, "worse", 2, 2)
    a = verdict_agreement(["ahead", "behind", nsd])
    assert (a["verdict"], a["agree"], a["n"]) == ("split", 1, 3)
    assert study._agreement_text(a) == "split: 1 better, 1 worse, 1 no difference"
    assert study._agreement_text(verdict_agreement([nsd] * 3)) == "3 of 3: no difference"
    a = verdict_agreement(["unreachable", "unreachable"])
    assert (a["verdict"], a["agree"], a["n"]) == ("unreachable", 0, 0)


def test_diagnostics_add_up_to_the_matched_table():
    """At matched 2×, the entropy groups' accuracies average to each policy's 2× value in the matched table, and
    'only DE3 right' − 'only entropy right' is their difference."""
    test = synthetic(2, "test")
    comp = compare.compare(test, synthetic(1, "validation"), (1.5, 2.0, 3.0), n_boot=10)
    table = comp.table.set_index("policy")
    bins = entropy_bins(test, comp.curves, comp.lambda_)
    assert list(bins["bin"]) == [1, 2, 3, 4] and list(bins["samples"]) == [75] * 4
    assert (bins["entropy_low"].to_numpy()[1:] >= bins["entropy_high"].to_numpy()[:-1]).all()
    for column, policy in (("de3_acc", "de3"), ("entropy_acc", "entropy")):
        assert (bins[column] * bins["samples"]).sum() / 300 == pytest.approx(table.loc[policy, "2x"])
    part = exit_disagreement(test, comp.curves, comp.lambda_)
    assert part["only_de3_right"] - part["only_entropy_right"] == pytest.approx(table.loc["de3", "2x"] - table.loc["entropy", "2x"])
    assert part["exit_differs"] == pytest.approx(part["de3_later"] + part["de3_earlier"])
    assert part["answer_differs"] <= part["exit_differs"] and "λ=" in part["de3_setting"]
    far = exit_disagreement(test, comp.curves, comp.lambda_, speedup=50.0)  # nobody gets there
    assert math.isnan(far["exit_differs"]) and far["de3_setting"] == ""
    assert entropy_bins(test, comp.curves, comp.lambda_, speedup=50.0).empty


def test_seed_folders_and_training_argv(tmp_path, monkeypatch):
    """The first seed keeps the single-seed folder (old work folders stay reusable); each run trains with its seed."""
    settings = StudySettings(seeds=3)
    assert settings.seed_list == (42, 43, 44)
    assert [run_name("de3", s, settings) for s in settings.seed_list] == ["de3", "de3-seed-43", "de3-seed-44"]
    argv = study._train_argv(settings, "glue", tmp_path / "x", {}, tmp_path / "x.json", 43)
    assert argv[argv.index("--seed") + 1] == "43"
    monkeypatch.setattr(study, "_is_trained", lambda folder, settings, overrides, seed: True)
    for name in ("de3", "de3-seed-43", "de3-seed-44"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"train_seconds": 60.0 * len(name)}))
    assert study.train_variants(settings, "glue", tmp_path, ["de3"], retrain=False, log=lambda *_: None) == \
        {"de3": 180.0, "de3-seed-43": 660.0, "de3-seed-44": 660.0}


@pytest.mark.parametrize("value", ["0", "21", "1.5", "abc", "-1"])
def test_bad_seeds_flag_is_one_line(value, tmp_path, capsys):
    (tmp_path / "SST-2").mkdir()
    code = main(["study", "--data-dir", str(tmp_path), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md"),
                 "--seeds", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --seeds: must be an integer in [1, 20]"), err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.md").exists()


def test_seeds_flag_parses():
    from analysis.commands import build_parser

    assert build_parser().parse_args(["study", "--data-dir", "x", "--seeds", "5"]).seeds == 5
    assert build_parser().parse_args(["study", "--data-dir", "x"]).seeds == StudySettings.seeds == 3


# ---- any data: bbc, another GLUE task, a labelled file ----


def test_short_names_and_words():
    assert [study.short_name(s) for s in ("glue/sst2", "glue/SST-2", "bbc", "BBC", "data/My reviews.v2.csv")] == \
        ["sst2", "sst2", "bbc", "bbc", "My-reviews.v2"]
    words = study.data_words("glue/sst2")
    assert (words.title, words.split, words.split_long, words.units, words.glue) == \
        ("SST-2", "dev", "GLUE SST-2 dev", "sentences", True)
    assert study.data_words("glue/mrpc").units == "samples"
    words = study.data_words("bbc")
    assert (words.title, words.split, words.split_long, words.units, words.glue) == \
        ("bbc", "the test split", "the bbc test split", "samples", False)


def test_training_argv_names_the_data(tmp_path):
    """glue passes its --data-dir; bbc and a file pass --data and no --data-dir; a file's columns travel along."""
    def argv(settings, data_dir):
        return study._train_argv(settings, data_dir, tmp_path / "x", {}, tmp_path / "x.json", 42)

    glue = argv(StudySettings(), "glue")
    assert glue[glue.index("--data") + 1] == "glue/sst2" and glue[glue.index("--data-dir") + 1] == "glue"
    bbc = argv(StudySettings(data="bbc"), None)
    assert bbc[bbc.index("--data") + 1] == "bbc" and "--data-dir" not in bbc and "--text-column" not in bbc
    f = argv(StudySettings(data="reviews.csv", text_columns=("title", "body"), label_column=2), None)
    assert f[f.index("--data") + 1] == "reviews.csv" and "--data-dir" not in f
    assert [f[i + 1] for i, a in enumerate(f) if a == "--text-column"] == ["title", "body"]
    assert f[f.index("--label-column") + 1] == "2"


def _fake_checkpoint(folder, spec, seed=42, **data):
    folder.mkdir(parents=True)
    files = {"config.json": {"de3": {"alpha": 1.0, "dar_form": "proto_ce", "max_length": StudySettings.max_length}},
             "train_config.json": {"epochs": StudySettings.epochs, "batch_size": StudySettings.batch_size, "seed": seed},
             "data.json": {"spec": spec, "max_train_samples": None, "text_columns": None, "label_column": None, **data},
             "metrics.json": {"test": {"accuracy": 0.9}}}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return folder


def test_a_checkpoint_of_other_data_is_not_reused(tmp_path):
    sst2 = _fake_checkpoint(tmp_path / "sst2", "glue/sst2")
    assert study._is_trained(sst2, StudySettings(), {}, 42)
    assert study._is_trained(sst2, StudySettings(data="glue/SST-2"), {}, 42)  # the same task, spelt otherwise
    assert not study._is_trained(sst2, StudySettings(data="bbc"), {}, 42)
    assert not study._is_trained(sst2, StudySettings(data="glue/sst2"), {}, 43)
    bbc = _fake_checkpoint(tmp_path / "bbc", "bbc")
    assert study._is_trained(bbc, StudySettings(data="bbc"), {}, 42) and not study._is_trained(bbc, StudySettings(), {}, 42)
    f = _fake_checkpoint(tmp_path / "file", "r.csv", text_columns=["body"])
    assert study._is_trained(f, StudySettings(data="r.csv", text_columns=("body",)), {}, 42)
    assert not study._is_trained(f, StudySettings(data="r.csv"), {}, 42)  # other columns
    assert not study._is_trained(f, StudySettings(data="other.csv", text_columns=("body",)), {}, 42)


def test_report_on_other_data_uses_its_words(tmp_path):
    settings = StudySettings(data="bbc", n_boot=50, seeds=2)
    work = tmp_path / "work"
    for i, variant in enumerate(("de3", "no_dar")):
        for j, seed in enumerate(settings.seed_list):
            for split in ("validation", "test"):
                trace = _seed_traces(j, i, split)
                trace.meta["label_names"] = ["business", "tech"]
                trace.save(work / run_name(variant, seed, settings) / "traces" / split)
    text = analyse(work, ["de3", "no_dar"], settings, {}, tmp_path / "bbc.md", log=lambda *_: None)
    for word in ("SST-2", "GLUE", "sentence"):
        assert word not in text, word
    assert not re.search(r"\bdev\b", text)
    labels = np.asarray(_seed_traces(0, 0, "test").labels)
    n1 = int(labels.sum())
    counts = f"{max(n1, 300 - n1)} {'tech' if n1 >= 150 else 'business'} / {min(n1, 300 - n1)}"
    assert text.startswith("# bbc study: DE3-BERT against the baselines on the bbc test split (300 samples, 2 seeds)")
    assert f"| reported split | the bbc test split (300 samples: {counts}" in text and "one sample = 0.33 points" in text
    assert "`python -m analysis study --data bbc --work " in text and "Δ samples" in text
    assert "never on the test split" in text and "best test accuracy" in text


def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    for argv, message in ((["--data", str(tmp_path / "missing.csv")], "missing.csv"),
                          (["--data", "glue/sst2"], "needs --data-dir"),
                          (["--data", "glue/mrpc", "--data-dir", str(tmp_path)], "no MRPC folder"),
                          (["--data", "bbc", "--text-column", "text"], "only to data files")):
        code = main(["study", *argv, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (tmp_path / "w").exists() and not (tmp_path / "r.md").exists()


def test_default_folders_follow_the_data(tmp_path, monkeypatch):
    """No --work / --out: runs/study-<name> and docs/results/<name>.md (sst2's stay as they were)."""
    from analysis.commands import build_parser

    seen = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "train_variants", lambda settings, data_dir, work, *a, **k: seen.update(
        settings=settings, data_dir=data_dir, work=work) or (_ for _ in ()).throw(DE3Error("stop")))
    (tmp_path / "g" / "SST-2").mkdir(parents=True)
    (tmp_path / "r.csv").write_text("body,stars\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    for argv, work, data_dir in ((["--data-dir", "g"], "runs/study-sst2", "g"), (["--data", "bbc"], "runs/study-bbc", None),
                                 (["--data", "r.csv", "--text-column", "body", "--label-column", "stars"], "runs/study-r", None)):
        args = build_parser().parse_args(["study", *argv])
        with pytest.raises(DE3Error, match="stop"):
            cmd_study(args)
        assert str(seen["work"]) == work and args.out == f"docs/results/{work.split('-', 1)[1]}.md"
        assert seen["data_dir"] == data_dir and seen["settings"].data == args.data
    assert seen["settings"].text_columns == ("body",) and seen["settings"].label_column == "stars"


# ---- variants of your own: --define ----


def test_parse_changes_round_trips_and_refuses_with_one_line():
    changes = study.parse_changes("alpha=3,distance=cosine,proto_input=pooled,proto_dim=32", "--define x")
    assert changes == {"alpha": 3, "distance": "cosine", "proto_input": "pooled", "proto_dim": 32}
    assert study.parse_changes(study.setting_name(changes), "x") == changes
    assert study.setting_name({}) == "default" and study.setting_name({"gamma": 0.5}) == "gamma=0.5"
    for text, message in (("alpha", "not FIELD=VALUE"), ("alpha=", "not FIELD=VALUE"), ("max_length=32", "not a field"),
                          ("backbone=x", "not a field"), ("alpha=-1", "alpha"), ("distance=manhattan", "distance"),
                          ("proto_input=cls", "proto_input"), ("proto_dim=2.5", "proto_dim")):
        with pytest.raises(DE3Error, match=message):
            study.parse_changes(text, "--define x")


def test_defined_variants_train_and_are_reused_by_their_settings(tmp_path):
    settings = StudySettings(defined=(("cos", (("distance", "cosine"), ("alpha", 3))),))
    assert settings.variant_table["cos"] == ("defined: distance=cosine,alpha=3", {"distance": "cosine", "alpha": 3})
    argv = study._train_argv(settings, "glue", tmp_path / "x", settings.variant_table["cos"][1], tmp_path / "x.json", 42)
    assert json.loads((tmp_path / "x.json").read_text())["model"] == {"distance": "cosine", "alpha": 3}
    assert argv[argv.index("--config") + 1] == str(tmp_path / "x.json")
    # a checkpoint is reused only when every field a variant may change agrees (absent = the default)
    plain = _fake_checkpoint(tmp_path / "plain", "glue/sst2")
    assert study._is_trained(plain, settings, {}, 42)
    assert not study._is_trained(plain, settings, {"distance": "cosine", "alpha": 3}, 42)
    cos = _fake_checkpoint(tmp_path / "cos", "glue/sst2")
    config = json.loads((cos / "config.json").read_text())
    config["de3"].update(distance="cosine", alpha=3.0)
    (cos / "config.json").write_text(json.dumps(config))
    assert study._is_trained(cos, settings, {"distance": "cosine", "alpha": 3}, 42)
    assert not study._is_trained(cos, settings, {"distance": "cosine"}, 42) and not study._is_trained(cos, settings, {}, 42)


def test_define_flag(tmp_path, monkeypatch, capsys):
    from analysis.commands import build_parser

    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    seen = {}
    monkeypatch.setattr(study, "train_variants", lambda settings, data_dir, work, variants, *a, **k: seen.update(
        settings=settings, variants=variants) or (_ for _ in ()).throw(DE3Error("stop")))
    base = ["study", "--data-dir", str(tmp_path / "glue"), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md")]
    args = build_parser().parse_args([*base, "--define", "best", "alpha=3,proto_input=pooled", "--variants", "de3,best"])
    with pytest.raises(DE3Error, match="stop"):
        cmd_study(args)
    assert seen["variants"] == ["de3", "best"]
    assert seen["settings"].variant_table["best"][1] == {"alpha": 3, "proto_input": "pooled"}
    for extra, message in ((["--define", "de3", "alpha=3"], "must be new"),
                           (["--define", "a/b", "alpha=3"], "must be new"),
                           (["--define", "x", "alpha=3", "--variants", "de3,y"], "unknown variant(s) y"),
                           (["--define", "x", "colour=red"], "not a field")):
        code = main([*base, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.md").exists()
