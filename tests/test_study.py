"""The SST-2 study's report, on synthetic traces (the real run takes tens of minutes: docs/results/sst2.md)."""

import numpy as np
import pytest

from analysis.errors import DE3Error
from analysis.commands.study import StudySettings, analyse, cmd_study
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


def test_report_has_every_section(tmp_path):
    work = tmp_path / "work"
    for i, variant in enumerate(("de3", "no_dar")):
        for split in ("validation", "test"):
            synthetic(10 * i + (split == "test"), split).save(work / variant / "traces" / split)
    out = tmp_path / "docs" / "sst2.md"
    text = analyse(work, ["de3", "no_dar"], StudySettings(n_boot=200), {"de3": 60.0, "no_dar": 60.0}, out, log=lambda *_: None)
    assert out.read_text() == text and out.with_suffix(".png").stat().st_size > 10_000
    for heading in ("## Setup", "## Every exit's accuracy", "## Matched speed-up", "## Is the difference real?",
                    "## Ablations", "## Diagnostics", "## Findings"):
        assert heading in text
    assert "DE3-BERT (EDR) (λ=" in text and "oracle" in text.lower() and "95 % CI" in text
    assert "oracle frontier" in text and "Δ sentences" in text


def test_bootstrap_section_reads_the_shared_matched_vs_baseline(tmp_path):
    """The study's "Is the difference real?" rows are compare.matched_vs_baseline's numbers (DE3 vs each baseline)."""
    from analysis import compare

    work = tmp_path / "work"
    for split in ("validation", "test"):
        synthetic(1 + (split == "test"), split).save(work / "de3" / "traces" / split)
    text = analyse(work, ["de3"], StudySettings(n_boot=100), {"de3": 1.0}, tmp_path / "r.md", log=lambda *_: None)
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
