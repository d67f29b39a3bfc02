"""The design search (``analysis search``): exits on a frozen tiny backbone, settings x seeds, its report and reuse."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.commands import main, search
from analysis.commands.study import seed_interval


@pytest.fixture(scope="module")
def searched(tiny_backbone, tiny_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    argv = ["search", "--data", str(tiny_csv), "--model", tiny_backbone, "--work", str(root / "work"),
            "--out", str(root / "out" / "report.md"), "--seeds", "2", "--epochs", "2",
            "--only", "default,alpha=0,proto_input=pooled,combined"]
    assert main(argv) == 0
    return root, argv


def test_report_and_runs(searched):
    root, _ = searched
    text = (root / "out" / "report.md").read_text()
    assert (root / "out" / "report.png").stat().st_size > 5_000
    runs = [json.loads(p.read_text()) for p in sorted((root / "work" / "runs").glob("*.json"))]
    names = {search.setting_name(r["changes"]) for r in runs}
    assert {"default", "alpha=0", "proto_input=pooled"} <= names and len(runs) == 2 * len(names)
    for heading in ("## How it was measured", "## Every setting, best AUC margin first", "## Findings", "## Setup"):
        assert heading in text
    assert "`default`" in text and "`alpha=0`" in text and "`proto_input=pooled`" in text
    assert "**Recommendation**" in text and "| run time |" in text and "| hardware |" in text
    # the default row's AUC margin is seed_interval over the two runs' own AUCs, as printed
    default = [r for r in runs if r["changes"] == {}]
    margin = seed_interval([r["auc"]["de3"] - r["auc"]["entropy"] for r in default])
    row = next(line for line in text.splitlines() if line.startswith("| `default` |"))
    assert f"{100 * margin['mean']:+.2f} [{100 * margin['low']:+.2f}, {100 * margin['high']:+.2f}]" in row


def test_a_second_run_reuses_every_run(searched, monkeypatch, capsys):
    root, argv = searched
    before = {p.name: p.stat().st_mtime for p in (root / "work" / "runs").glob("*.json")}
    monkeypatch.setattr(search, "run_setting", lambda *a, **k: pytest.fail("a saved run was trained again"))
    assert main(argv) == 0
    assert {p.name: p.stat().st_mtime for p in (root / "work" / "runs").glob("*.json")} == before
    assert "cache: " in capsys.readouterr().out  # the cached vectors were read back, not recomputed


def test_seeds_differ_and_lambda_is_chosen_per_run(searched):
    root, _ = searched
    runs = [json.loads(p.read_text()) for p in (root / "work" / "runs").glob("*.json")]
    default = sorted((r for r in runs if r["changes"] == {}), key=lambda r: r["seed"])
    assert [r["seed"] for r in default] == [42, 43]
    assert default[0]["layers"] != default[1]["layers"]  # another initialisation and batch order
    assert all(r["lambda"] in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0) for r in runs)


def test_the_grid_changes_one_thing_at_a_time():
    grid = search.one_at_a_time()
    assert grid["default"] == {} and all(len(c) == 1 for n, c in grid.items() if n != "default")
    fields = {next(iter(c)) for c in grid.values() if c}
    assert fields == {field for field, _ in search.FACTORS.values()}
    assert {"dar_form", "alpha", "gamma", "proto_dim", "distance", "proto_input", "epochs"} == fields
    assert all(search.factor_of(c) for n, c in grid.items() if n != "default")


def _summary(rows):
    frame = pd.DataFrame([{"setting": n, "changes": c, "factor": search.factor_of(c) or "reference",
                           "diff_auc": {"mean": m, "low": lo, "high": hi, "n": 3}, "de3_auc": {"mean": d, "n": 3},
                           "rank_key": m} for n, c, m, lo, hi, d in rows])
    return frame.sort_values("rank_key", ascending=False).reset_index(drop=True)


def test_combined_and_recommendation_by_hand():
    summary = _summary([("default", {}, 0.000, -0.01, 0.01, 0.85),
                        ("alpha=3", {"alpha": 3.0}, 0.004, -0.001, 0.009, 0.86),
                        ("alpha=0.3", {"alpha": 0.3}, 0.002, -0.01, 0.014, 0.85),
                        ("distance=cosine", {"distance": "cosine"}, 0.003, 0.001, 0.005, 0.84),
                        ("gamma=0.5", {"gamma": 0.5}, -0.002, -0.01, 0.006, 0.85)])
    # each factor's best level, when it beats the default: α = 3 (not 0.3), cosine; γ = 0.5 is worse than default
    assert search.combined_setting(summary) == {"alpha": 3.0, "distance": "cosine"}
    # cosine's margin is above 0 but DE3's own AUC fell below the default's: no recommendation from it
    assert search.recommend(summary) == {"setting": "default", "changes": {}, "significant": False}
    summary.loc[summary["setting"] == "distance=cosine", "de3_auc"] = [{"mean": 0.86, "n": 3}]
    assert search.recommend(summary) == {"setting": "distance=cosine", "changes": {"distance": "cosine"},
                                         "significant": True}


def test_bad_only_is_one_line(tiny_csv, tmp_path, capsys):
    code = main(["search", "--data", str(tiny_csv), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md"),
                 "--only", "default,alpha=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown setting(s) alpha=7" in err[0], err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.md").exists()


def test_the_report_cannot_overwrite_the_data(tiny_csv, tmp_path, capsys):
    code = main(["search", "--data", str(tiny_csv), "--work", str(tmp_path / "w"), "--out", str(tiny_csv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "input" in err[0], err
    assert not (tmp_path / "w").exists()


def test_a_file_with_its_own_columns(tiny_backbone, tiny_csv, tmp_path):
    data = tmp_path / "reviews.csv"
    rows = tiny_csv.read_text().splitlines()
    data.write_text("\n".join(["stars,body"] + [",".join(reversed(r.rsplit(",", 1))) for r in rows[1:]]) + "\n")
    argv = ["search", "--data", str(data), "--text-column", "body", "--label-column", "stars", "--model", tiny_backbone,
            "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md"), "--seeds", "1", "--epochs", "1",
            "--only", "default", "--no-combined"]
    assert main(argv) == 0
    text = (tmp_path / "r.md").read_text()
    assert "--text-column body --label-column stars" in text and "`default`" in text


def test_columns_only_for_files(tmp_path, capsys):
    code = main(["search", "--data", "bbc", "--text-column", "x", "--work", str(tmp_path / "w"), "--out",
                 str(tmp_path / "r.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "only to data files" in err[0], err


def test_damaged_cache_and_runs_are_made_again(tiny_backbone, tiny_csv, tmp_path, capsys):
    argv = ["search", "--data", str(tiny_csv), "--model", tiny_backbone, "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "r.md"), "--seeds", "1", "--epochs", "1", "--only", "default", "--no-combined"]
    assert main(argv) == 0
    first = (tmp_path / "r.md").read_text()
    (tmp_path / "w" / "cache" / "train.npy").write_bytes(b"not an array")
    run = next((tmp_path / "w" / "runs").glob("*.json"))
    run.write_text(json.dumps({"key": "edited"}))
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cannot be read" in out and "computing it again" in out and "[1/1] default seed 42" in out
    assert set(search.RUN_FIELDS) <= set(json.loads(run.read_text()))
    row = lambda text: next(line for line in text.splitlines() if line.startswith("| `default` |"))
    assert row((tmp_path / "r.md").read_text()) == row(first)  # the same numbers again
