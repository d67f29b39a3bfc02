"""Tests of analysis.data: every loader on small files written here, bad inputs, metrics, and real SST-2 if present."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.data import (
    GLUE_MAX_VALIDATION,
    TRACE_SPLITS,
    UNLABELLED,
    DataBundle,
    Split,
    class_ids,
    load_data,
    reload_data,
)
from analysis.data.sources import read_bbc
from analysis.errors import DataError
from analysis.metrics import compute_metric

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def rows_of(bundle: DataBundle) -> Counter:
    """Multiset of (text, pair, label) over all three splits."""
    out: Counter = Counter()
    for name in ("train", "validation", "test"):
        split = bundle.split(name)
        pairs = split.text_pairs or [None] * len(split)
        out.update(zip(split.texts, pairs, split.labels))
    return out


def as_tuples(split: Split) -> list[tuple]:
    return list(zip(split.texts, split.text_pairs or [None] * len(split), split.labels))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def sentiment_rows(n: int = 40) -> list[tuple[str, str]]:
    """n (text, label) rows, balanced between 'neg' and 'pos'."""
    return [(f"review number {i} is {'bad' if i % 2 else 'good'}", "neg" if i % 2 else "pos") for i in range(n)]


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------------


def test_split_subset_and_len():
    split = Split(texts=["a", "b", "c"], text_pairs=["x", "y", "z"], labels=[0, 1, 0])
    sub = split.subset(np.array([2, 0]))
    assert len(split) == 3 and len(sub) == 2
    assert sub.texts == ["c", "a"] and sub.text_pairs == ["z", "x"] and sub.labels == [0, 0]
    assert all(type(v) is int for v in sub.labels)
    assert Split(["a"], None, [1]).subset([0]).text_pairs is None
    with pytest.raises(DataError):
        Split(["a", "b"], None, [0])


def test_bundle_split_names(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\n" + "".join(f"t{t},{lab}\n" for t, lab in sentiment_rows()))
    bundle = load_data(str(path))
    assert bundle.split("train") is bundle.train and bundle.split("test") is bundle.test
    assert bundle.num_labels == 2 and not bundle.is_pair and bundle.metric == "accuracy"
    with pytest.raises(DataError, match="unknown split 'dev'"):
        bundle.split("dev")


# ---------------------------------------------------------------------------------------------------------
# bbc
# ---------------------------------------------------------------------------------------------------------


def test_bbc_loads_deterministic_disjoint_stratified():
    bundle = load_data("bbc")
    again = load_data("bbc")
    assert bundle.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert bundle.num_labels == 5 and not bundle.is_pair and bundle.metric == "accuracy"
    sizes = (len(bundle.train), len(bundle.validation), len(bundle.test))
    assert sum(sizes) == 2225
    assert sizes == (1781, 222, 222)
    for name in ("train", "validation", "test"):
        assert as_tuples(bundle.split(name)) == as_tuples(again.split(name))
    # The three splits partition the corpus: together they are exactly the articles, each once.
    texts, labels, _ = read_bbc()
    assert rows_of(bundle) == Counter(zip(texts, [None] * len(texts), labels))
    # Stratified: each class's share in validation and test is close to its share overall.
    overall = np.bincount(labels, minlength=5) / len(labels)
    for split in (bundle.validation, bundle.test):
        share = np.bincount(split.labels, minlength=5) / len(split)
        assert np.abs(share - overall).max() < 0.02
    assert all(t and "\n" in t for t in bundle.train.texts[:20])  # title, newline, body


def test_bbc_seed_and_max_train_samples():
    base = load_data("bbc")
    other = load_data("bbc", seed=7)
    assert as_tuples(base.test) != as_tuples(other.test)
    small = load_data("bbc", max_train_samples=100)
    assert len(small.train) == 100
    assert np.bincount(small.train.labels).min() >= 15  # stratified: every class present
    assert as_tuples(small.test) == as_tuples(base.test)
    assert set(as_tuples(small.train)) <= set(as_tuples(base.train))
    assert as_tuples(small.train) == as_tuples(load_data("bbc", max_train_samples=100).train)


def test_bbc_rejects_file_options():
    with pytest.raises(DataError, match="apply only to data files"):
        load_data("bbc", text_columns=["text"])


def test_bad_fractions():
    with pytest.raises(DataError, match="val_fraction"):
        load_data("bbc", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataError, match="max_train_samples"):
        load_data("bbc", max_train_samples=0)


# ---------------------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------------------


def test_csv_with_header_default_columns(tmp_path):
    rows = sentiment_rows(50)
    lines = "".join(f"{i},{t},{lab}\n" for i, (t, lab) in enumerate(rows))
    path = write(tmp_path / "reviews.csv", "id,text,label\n" + lines)
    bundle = load_data(str(path))
    assert bundle.label_names == ["neg", "pos"]
    assert (len(bundle.train), len(bundle.validation), len(bundle.test)) == (40, 5, 5)
    assert rows_of(bundle) == Counter((t, None, 0 if lab == "neg" else 1) for t, lab in rows)
    assert bundle.name == str(path)


def test_csv_named_columns_quoted_commas(tmp_path):
    rows = [(f'"great, really ""great"" film {i}"', str(i % 3)) for i in range(30)]
    path = write(tmp_path / "films.csv", "sentiment,review\n" + "".join(f"{lab},{t}\n" for t, lab in rows))
    bundle = load_data(str(path), text_columns=["review"], label_column="sentiment")
    assert bundle.label_names == ["0", "1", "2"]
    assert ('great, really "great" film 0', None, 0) in rows_of(bundle)


def test_headerless_tsv_by_index(tmp_path):
    rows = sentiment_rows(30)
    path = write(tmp_path / "plain.tsv", "".join(f"{lab}\t{t}\n" for t, lab in rows))
    bundle = load_data(str(path), text_columns=[1], label_column=0)
    assert bundle.label_names == ["neg", "pos"]
    assert sum(rows_of(bundle).values()) == 30  # the first line is data, not a header
    # Index strings, as a CLI passes them, work too; .txt is read as TSV.
    txt = write(tmp_path / "plain.txt", path.read_text())
    assert rows_of(load_data(str(txt), text_columns=["1"], label_column="0")) == rows_of(bundle)


def test_tsv_with_header_by_index(tmp_path):
    rows = sentiment_rows(20)
    path = write(tmp_path / "h.tsv", "label\ttext\n" + "".join(f"{lab}\t{t}\n" for t, lab in rows))
    bundle = load_data(str(path), text_columns=[1], label_column=0, header=True)
    assert sum(rows_of(bundle).values()) == 20


def test_pair_file_defaults_and_indices(tmp_path):
    lines = "".join(f"premise {i}\thypothesis {i}\t{i % 2}\n" for i in range(30))
    path = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tlabel\n" + lines)
    bundle = load_data(str(path))
    assert bundle.is_pair and bundle.label_names == ["0", "1"]
    assert ("premise 3", "hypothesis 3", 1) in rows_of(bundle)
    by_index = load_data(str(path), text_columns=[0, 1], label_column=2, header=True)
    assert rows_of(by_index) == rows_of(bundle)
    assert all(len(s.text_pairs) == len(s) for s in (bundle.train, bundle.validation, bundle.test))


def test_parquet(tmp_path):
    frame = pd.DataFrame({"sentence": [f"s {i}" for i in range(30)], "target": [i % 3 for i in range(30)],
                          "number_text": list(range(30))})
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    bundle = load_data(str(path))
    assert bundle.label_names == ["0", "1", "2"]
    assert ("s 4", None, 1) in rows_of(bundle)
    numbers = load_data(str(path), text_columns=["number_text"], label_column="target")
    assert all(type(t) is str for t in numbers.train.texts) and ("4", None, 1) in rows_of(numbers)


def test_jsonl_and_json_array(tmp_path):
    records = [{"text": f"doc {i}", "labels": ["sport", "art", "war"][i % 3]} for i in range(30)]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    bundle = load_data(str(path))
    assert bundle.label_names == ["art", "sport", "war"]
    assert ("doc 0", None, 1) in rows_of(bundle)
    array = write(tmp_path / "d.json", json.dumps(records))
    assert rows_of(load_data(str(array))) == rows_of(bundle)


def test_string_and_integer_labels_sorted(tmp_path):
    words = ["zebra", "apple", "mango"]
    path = write(tmp_path / "w.csv", "text,class\n" + "".join(f"t{i},{words[i % 3]}\n" for i in range(30)))
    bundle = load_data(str(path))
    assert bundle.label_names == ["apple", "mango", "zebra"]
    assert ("t0", None, 2) in rows_of(bundle)
    nums = write(tmp_path / "n.csv", "text,label\n" + "".join(f"t{i},{[10, 2, 5][i % 3]}\n" for i in range(30)))
    bundle = load_data(str(nums))
    assert bundle.label_names == ["2", "5", "10"]  # numeric order, not string order
    assert ("t0", None, 2) in rows_of(bundle) and ("t1", None, 0) in rows_of(bundle)


def test_deterministic_and_tiny_class_does_not_crash(tmp_path):
    lines = "".join(f"t{i},{'rare' if i == 0 else ('a' if i % 2 else 'b')}\n" for i in range(12))
    path = write(tmp_path / "tiny.csv", "text,label\n" + lines)
    one, two = load_data(str(path)), load_data(str(path))
    assert sum(rows_of(one).values()) == 12
    assert all(as_tuples(one.split(s)) == as_tuples(two.split(s)) for s in ("train", "validation", "test"))


def test_relative_path_with_data_dir(tmp_path):
    write(tmp_path / "sub" / "r.csv", "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in sentiment_rows(20)))
    assert sum(rows_of(load_data("r.csv", data_dir=tmp_path / "sub")).values()) == 20


# ---------------------------------------------------------------------------------------------------------
# A source whole ("all"), separate validation / test files, labels by name, unlabelled files
# ---------------------------------------------------------------------------------------------------------


def csv_of(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    return header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows)


@pytest.mark.parametrize("n", [1, 2, 3, 25])
def test_all_is_every_row_in_file_order_however_few(tmp_path, n):
    rows = sentiment_rows(n)
    path = write(tmp_path / "few.csv", csv_of(rows))
    bundle = load_data(str(path), training=False)
    assert TRACE_SPLITS == ("train", "validation", "test", "all")
    everything = bundle.split("all")
    assert everything.texts == [t for t, _ in rows]
    assert [bundle.label_names[k] for k in everything.labels] == [lab for _, lab in rows]
    if n == 25:  # a splittable file: the three splits partition "all"
        assert rows_of(bundle) == Counter(as_tuples(bundle.split("all")))
    if n <= 2:  # too few to split: only asking for a split says so, with the way out
        with pytest.raises(DataError) as excinfo:
            bundle.split("test")
        assert_one_line_error(excinfo, "few.csv", "too few to split", "--split all")
        with pytest.raises(DataError, match="too few to split" if n == 2 else "single class"):
            load_data(str(path))  # training data is split (and refused) at load


def test_all_of_bbc_and_glue(tmp_path):
    bbc = load_data("bbc")
    texts, labels, _ = read_bbc()
    assert bbc.split("all").texts == texts and bbc.split("all").labels == labels
    make_glue(tmp_path, "RTE", n=40)
    glue = load_data("glue/rte", data_dir=tmp_path)
    everything = glue.split("all")
    assert [t.split()[0] for t in everything.texts] == ["train"] * 40 + ["dev"] * 20  # train rows, then dev rows
    assert [row_number(t) for t in everything.texts] == list(range(40)) + list(range(20))
    assert everything.text_pairs[41] == "dev claim 1" and everything.labels[41] == 1


def test_separate_test_file_carves_validation_from_train(tmp_path):
    train_rows, test_rows = sentiment_rows(40), [(f"held out {i}", "pos") for i in range(7)]  # test: one class
    train, test = write(tmp_path / "train.csv", csv_of(train_rows)), write(tmp_path / "test.csv", csv_of(test_rows))
    bundle = load_data(str(train), test_data=str(test))
    assert bundle.label_names == ["neg", "pos"]
    assert as_tuples(bundle.test) == [(t, None, 1) for t, _ in test_rows]  # the file, in order, in train's ids
    assert len(bundle.validation) == 4 and len(bundle.train) == 36  # val_fraction of the training file
    assert Counter(bundle.train.texts + bundle.validation.texts) == Counter(t for t, _ in train_rows)
    assert sorted(Counter(bundle.validation.labels).values()) == [2, 2]  # stratified
    assert bundle.split("all").texts == [t for t, _ in train_rows + test_rows]
    again = reload_data({"spec": str(train), "seed": 42, "test_data": str(test)})
    assert all(as_tuples(again.split(s)) == as_tuples(bundle.split(s)) for s in TRACE_SPLITS)


def test_separate_validation_and_test_files(tmp_path):
    rows = sentiment_rows(30)
    train = write(tmp_path / "sub" / "train.csv", csv_of(rows[:20]))
    val = write(tmp_path / "sub" / "val.csv", csv_of(rows[20:25]))
    test = write(tmp_path / "sub" / "test.tsv", "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows[25:]))
    bundle = load_data("train.csv", data_dir=tmp_path / "sub", validation_data="val.csv", test_data="test.tsv")
    assert [r[0] for r in as_tuples(bundle.train)] == [t for t, _ in rows[:20]]  # every training row trains
    assert [r[0] for r in as_tuples(bundle.validation)] == [t for t, _ in rows[20:25]]
    assert [r[0] for r in as_tuples(bundle.test)] == [t for t, _ in rows[25:]]
    assert bundle.name == "train.csv" and all(p.exists() for p in (train, val, test))
    # validation file only: test is carved from the training file
    only_val = load_data(str(train), validation_data=str(val))
    assert len(only_val.test) == 2 and len(only_val.train) == 18 and len(only_val.validation) == 5


def test_separate_files_are_checked(tmp_path):
    train = write(tmp_path / "train.csv", csv_of(sentiment_rows(20)))
    extra = write(tmp_path / "extra.csv", csv_of([("a", "pos"), ("b", "meh"), ("c", "odd")]))
    with pytest.raises(DataError) as excinfo:
        load_data(str(train), test_data=str(extra))
    assert_one_line_error(excinfo, "extra.csv", "classes the training file", "lacks: 'meh', 'odd'", "'neg', 'pos'")
    pairs = write(tmp_path / "pairs.csv", "sentence1,sentence2,label\na,b,pos\n")
    with pytest.raises(DataError) as excinfo:
        load_data(str(train), validation_data=str(pairs))
    assert_one_line_error(excinfo, "pairs.csv", "2 text columns", "1 text column")
    with pytest.raises(DataError) as excinfo:
        load_data(str(train), test_data=str(write(tmp_path / "nolabel.csv", "text\na\n")))
    assert_one_line_error(excinfo, "nolabel.csv", "no label column found")
    with pytest.raises(DataError, match="separate validation / test files go with a training file"):
        load_data("bbc", test_data=str(train))
    ints = write(tmp_path / "ints.csv", csv_of([("a", "1"), ("b", "0"), ("c", "1")]))  # class ids of neg / pos
    assert load_data(str(train), test_data=str(ints)).test.labels == [1, 0, 1]


def test_class_ids_by_name_or_integer_id():
    assert class_ids(["pos", "neg"], ["neg", "neutral", "pos"]) == [2, 0]
    assert class_ids(["pos", "zzz"], ["neg", "pos"]) == [1, None]
    assert class_ids(["0", "1", "2"], ["negative", "positive"]) == [0, 1, None]  # integers are ids for named classes
    assert class_ids(["2", "5"], ["1", "2", "5"]) == [1, 2]  # integer classes match by name
    assert class_ids(["cafe\u0301", " pos\u200b"], ["café", "pos"]) == [0, 1]  # cleaned on both sides


def test_relabel_maps_ids_and_keeps_the_split(tmp_path):
    rows = [(f"t{i}", "abc"[i % 3]) for i in range(60)]
    bundle = load_data(str(write(tmp_path / "abc.csv", csv_of(rows))), training=False)
    mapped = bundle.relabel(["c", "x", "b", "a"])  # another order, and a class the data lack
    assert mapped.label_names == ["c", "x", "b", "a"]
    assert mapped.split("all").labels == [[3, 2, 0][i % 3] for i in range(60)]
    for name in ("train", "validation", "test"):  # the same rows as the source's own split
        assert mapped.split(name).texts == bundle.split(name).texts
        assert [mapped.label_names[k] for k in mapped.split(name).labels] == \
               [bundle.label_names[k] for k in bundle.split(name).labels]
    with pytest.raises(DataError, match="classes 'c' are not among 'a', 'b'"):
        bundle.relabel(["a", "b"])


def test_a_file_without_labels_loads_unlabelled_only_for_scoring(tmp_path):
    path = write(tmp_path / "plain.csv", "id,text\n" + "".join(f"{i},text {i}\n" for i in range(12)))
    bundle = load_data(str(path), training=False)
    assert not bundle.labelled and bundle.label_names == []
    assert bundle.split("all").labels == [UNLABELLED] * 12 and not bundle.split("test").labelled
    assert bundle.relabel(["neg", "pos"]).split("all").labels == [UNLABELLED] * 12
    with pytest.raises(DataError) as excinfo:
        load_data(str(path))  # training data must have labels: today's message
    assert_one_line_error(excinfo, "plain.csv", "no label column found (looked for label, labels, target, class)",
                          "--label-column")
    with pytest.raises(DataError, match="no label column 'y'"):
        load_data(str(path), label_column="y", training=False)  # a label column asked for must exist
    holes = write(tmp_path / "holes.csv", "text,label\na,pos\nb,\nc,neg\n")
    with pytest.raises(DataError, match="1 empty or missing labels"):
        load_data(str(holes), training=False)  # some labels missing is an error, not "unlabelled"
    one_class = write(tmp_path / "one.csv", "text,label\na,pos\nb,pos\n")
    assert load_data(str(one_class), training=False).label_names == ["pos"]  # fine to score, not to train


def test_labels_are_cleaned_into_one_class_each(tmp_path):
    spellings = ["caf\u00e9", "cafe\u0301", " caf\u00e9 ", "pos", "pos\u200b", "\ufeffpos", "\u2060pos\u200d", " pos\t"]
    path = write(tmp_path / "u.csv", csv_of([(f"t{i}", s) for i, s in enumerate(spellings * 3)]))
    bundle = load_data(str(path), training=False)
    assert bundle.label_names == ["caf\u00e9", "pos"]
    assert bundle.split("all").labels == [0, 0, 0, 1, 1, 1, 1, 1] * 3
    ints = write(tmp_path / "i.csv", csv_of([("a", " 1\u200b"), ("b", "0"), ("c", "1 ")]))
    assert load_data(str(ints), training=False).label_names == ["0", "1"]


@pytest.mark.parametrize("spelling", ["nan", "NaN", "NA", "n/a", "N/A", "null", "NULL", "None", "none", " \u200b "])
def test_missing_value_spellings_are_not_classes(tmp_path, spelling):
    path = write(tmp_path / "m.csv", csv_of([("a", "pos"), ("b", "neg"), ("c", spelling), ("d", "pos")]))
    with pytest.raises(DataError) as excinfo:
        load_data(str(path), training=False)
    assert_one_line_error(excinfo, "m.csv", "'label'", "1 empty or missing labels", "data row 3 (line 4)")


@pytest.mark.parametrize("column, value, kind", [
    ("label", ["a", "b"], "list"), ("label", {"name": "pos"}, "dict"), ("label", True, "boolean"),
    ("text", ["two", "words"], "list"), ("text", {"t": 1}, "dict"), ("text", False, "boolean"),
])
def test_jsonl_cells_that_are_not_one_value(tmp_path, column, value, kind):
    records = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    records[3][column] = value
    path = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(DataError) as excinfo:
        load_data(str(path))
    assert_one_line_error(excinfo, "c.jsonl", f"column '{column}' holds a {kind} at data row 4 (line 4)")


def test_parquet_list_and_bool_cells(tmp_path):
    lists = tmp_path / "lists.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [["x"], ["y"], ["x", "y"]]}).to_parquet(lists)
    with pytest.raises(DataError) as excinfo:
        load_data(str(lists))
    assert_one_line_error(excinfo, "lists.parquet", "column 'label' holds a list at data row 1", "['x']")
    bools = tmp_path / "bools.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [True, False, True]}).to_parquet(bools)
    with pytest.raises(DataError) as excinfo:
        load_data(str(bools))
    assert_one_line_error(excinfo, "bools.parquet", "column 'label' holds a boolean at data row 1")


# ---------------------------------------------------------------------------------------------------------
# Bad user files: one-line DataErrors naming the file and the row or column
# ---------------------------------------------------------------------------------------------------------

GOOD_CSV = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in sentiment_rows(10))


def _parquet_bytes(frame: pd.DataFrame, tmp_path: Path) -> bytes:
    path = tmp_path / "_tmp.parquet"
    frame.to_parquet(path)
    return path.read_bytes()


BAD_CASES = {
    # name: (file name, content as str or bytes, load_data kwargs, substrings the message must hold)
    "empty": ("empty.csv", b"", {}, ["0 bytes"]),
    "blank lines": ("blank.csv", "\n\n  \n", {}, ["blank"]),
    "header only": ("header.csv", "text,label\n", {}, ["no data rows", "text, label"]),
    "unknown column name": ("cols.csv", GOOD_CSV, {"text_columns": ["review"]}, ["'review'", "text, label",
                                                                                  "--text-column"]),
    "unknown label name": ("cols.csv", GOOD_CSV, {"label_column": "y"}, ["'y'", "text, label", "--label-column"]),
    "index out of range": ("idx.tsv", "a\t0\nb\t1\n", {"text_columns": [0], "label_column": 5},
                           ["index 5", "2 columns"]),
    "no default columns": ("nodef.csv", "body,y\na,0\nb,1\n", {}, ["body, y", "--text-column"]),
    "no default label": ("nolab.csv", "text,y\na,0\nb,1\n", {}, ["text, y", "--label-column"]),
    "name without header": ("nohead.tsv", "a\t0\nb\t1\n", {"text_columns": ["text"], "label_column": 1,
                                                           "header": False}, ["no header", "0-based"]),
    "single class": ("one.csv", "text,label\na,x\nb,x\nc,x\n", {}, ["at least 2 classes", "'label'"]),
    "not utf-8": ("latin.csv", "text,label\ncaf\xe9,0\nb,1\n".encode("latin-1"), {},
                  ["not UTF-8", "offset 14", "line 2", "re-save"]),
    "empty texts": ("holes.csv", "text,label\na,0\n,1\nc,0\n  ,1\ne,1\n", {},
                    ["'text'", "2 empty or missing texts", "data row 2 (line 3)"]),
    "empty labels": ("nolabels.csv", "text,label\na,0\nb,\nc,1\n", {}, ["'label'", "1 empty or missing labels",
                                                                        "data row 2"]),
    "nan labels parquet": ("nan.parquet", "PARQUET:nan-labels", {}, ["'label'", "missing labels", "data row 2"]),
    "nan texts parquet": ("nant.parquet", "PARQUET:nan-texts", {}, ["'text'", "missing texts", "data row 3"]),
    "unsupported extension": ("data.xlsx", "whatever", {}, [".xlsx", ".csv", ".parquet", ".jsonl"]),
    "corrupt parquet": ("broken.parquet", "PARQUET:truncated", {}, ["Parquet", "corrupt"]),
    "malformed jsonl": ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", \n',
                        {}, ["line 3", "JSON"]),
    "jsonl not an object": ("list.jsonl", '{"text": "a", "label": 0}\n[1, 2]\n', {}, ["line 2", "JSON object"]),
    "too many fields": ("fields.csv", "text,label\na,0\nb,1,extra\n", {}, ["line 3", "3 fields", "header has 2"]),
    "label is text": ("same.csv", GOOD_CSV, {"text_columns": ["label"]}, ["both text and label"]),
    "three text columns": ("three.csv", GOOD_CSV, {"text_columns": [0, 1, 1]}, ["one text column"]),
    "a folder": ("folder.csv", "DIR", {}, ["not a file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_user_files(case, tmp_path):
    filename, content, kwargs, needles = BAD_CASES[case]
    path = tmp_path / filename
    if content == "DIR":
        path.mkdir()
    elif content == "PARQUET:nan-labels":
        path.write_bytes(_parquet_bytes(pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, None, 1.0]}), tmp_path))
    elif content == "PARQUET:nan-texts":
        path.write_bytes(_parquet_bytes(pd.DataFrame({"text": ["a", "b", None], "label": [0, 1, 1]}), tmp_path))
    elif content == "PARQUET:truncated":
        data = _parquet_bytes(pd.DataFrame({"text": ["a"] * 50, "label": [0, 1] * 25}), tmp_path)
        path.write_bytes(data[: len(data) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_data(str(path), **kwargs)
    assert_one_line_error(excinfo, filename, *needles)


def test_file_not_found(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_data(str(tmp_path / "missing.csv"))
    assert_one_line_error(excinfo, "missing.csv", "not found", "bbc", "glue/<task>")


def test_data_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_data(str(tmp_path / "missing.csv"))


# ---------------------------------------------------------------------------------------------------------
# GLUE from a fake folder in GLUE's own layouts
# ---------------------------------------------------------------------------------------------------------

MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_LABELS = ["entailment", "neutral", "contradiction"]


def glue_files(task: str, n: int) -> dict[str, str]:
    """GLUE-layout file contents {file name: text} with n train rows and n // 2 dev rows; row i has label i % K."""

    def table(rows: int, dev: bool) -> str:
        tag = "dev" if dev else "train"
        if task == "SST-2":
            return "sentence\tlabel\n" + "".join(f"{tag} it 's \"fine\" {i} \t{i % 2}\n" for i in range(rows))
        if task == "CoLA":
            return "".join(f"src{i}\t{i % 2}\t{'' if i % 2 else '*'}\t{tag} sentence {i} .\n" for i in range(rows))
        if task == "RTE":
            names = ["entailment", "not_entailment"]
            return "index\tsentence1\tsentence2\tlabel\n" + "".join(
                f"{i}\t{tag} premise {i}\t{tag} claim {i}\t{names[i % 2]}\n" for i in range(rows))
        if task == "MRPC":
            return "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
                f"{i % 2}\t{i}\t{i + 1}\t{tag} a {i}\t{tag} b {i}\n" for i in range(rows))
        if task == "QQP":
            good = "".join(f"{i}\t{2 * i}\t{2 * i + 1}\t{tag} q {i}?\t{tag} r {i}?\t{i % 2}\n" for i in range(rows))
            return "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n" + good + "999\t1\t2\tbroken line\n"
        if task == "MNLI":
            lines = []
            for i in range(rows):
                fields = [str(i), "p", "q", "fiction", "(x)", "(y)", "(X)", "(Y)", f"{tag} premise {i}",
                          f"{tag} hypothesis {i}", MNLI_LABELS[i % 3], MNLI_LABELS[i % 3]]
                lines.append("\t".join(fields) + "\n")
            return "\t".join(MNLI_COLUMNS) + "\n" + "".join(lines)
        raise AssertionError(task)

    dev_name = "dev_matched.tsv" if task == "MNLI" else "dev.tsv"
    return {"train.tsv": table(n, dev=False), dev_name: table(n // 2, dev=True)}


def row_number(text: str) -> int:
    """The row number written into a fake GLUE text (its first integer)."""
    return int(re.findall(r"\d+", text)[0])


def make_glue(root: Path, folder: str, n: int = 40, folder_name: str | None = None) -> Path:
    for name, text in glue_files(folder, n).items():
        write(root / (folder_name or folder) / name, text)
    return root


GLUE_CASES = [
    # spec, GLUE folder, label names, metric, is_pair
    ("glue/sst2", "SST-2", ["negative", "positive"], "accuracy", False),
    ("glue/cola", "CoLA", ["unacceptable", "acceptable"], "mcc", False),
    ("glue/rte", "RTE", ["entailment", "not_entailment"], "accuracy", True),
    ("glue/mnli", "MNLI", MNLI_LABELS, "accuracy", True),
    ("glue/mrpc", "MRPC", ["not_equivalent", "equivalent"], "f1", True),
    ("glue/qqp", "QQP", ["not_duplicate", "duplicate"], "f1", True),
]


@pytest.mark.parametrize("spec, folder, names, metric, is_pair", GLUE_CASES)
def test_glue_folder(spec, folder, names, metric, is_pair, tmp_path):
    make_glue(tmp_path, folder, n=40)
    bundle = load_data(spec, data_dir=tmp_path)
    assert bundle.label_names == names and bundle.metric == metric and bundle.is_pair == is_pair
    k = len(names)
    # dev = test split, in file order, with the right labels
    assert all(t.startswith("dev ") for t in bundle.test.texts)
    assert [row_number(t) for t in bundle.test.texts] == list(range(20))
    assert bundle.test.labels == [i % k for i in range(20)]
    # validation carved from train: 10% of 40, disjoint from train, together the whole train file
    assert len(bundle.validation) == 4 and len(bundle.train) == 36
    assert not set(as_tuples(bundle.train)) & set(as_tuples(bundle.validation))
    carved = bundle.train.texts + bundle.validation.texts
    assert all(t.startswith("train ") for t in carved)
    assert sorted(row_number(t) for t in carved) == list(range(40))
    assert all(lab == row_number(t) % k for t, lab in zip(carved, bundle.train.labels + bundle.validation.labels))
    if is_pair:
        assert all(row_number(a) == row_number(b) for a, b in zip(bundle.test.texts, bundle.test.text_pairs))
    # deterministic
    assert as_tuples(load_data(spec, data_dir=tmp_path).validation) == as_tuples(bundle.validation)


def test_glue_sst2_text_and_aliases(tmp_path):
    make_glue(tmp_path, "SST-2", n=20, folder_name="sst-2")  # folder matched case-insensitively
    bundle = load_data("glue/SST-2", data_dir=tmp_path)
    assert bundle.name == "glue/sst2"
    assert bundle.test.texts[0] == 'dev it \'s "fine" 0'  # no quoting, stripped
    same = load_data("GLUE/sst2", data_dir=tmp_path / "sst-2")  # the task folder itself
    assert as_tuples(same.test) == as_tuples(bundle.test)


def test_glue_validation_cap_and_max_train(tmp_path):
    make_glue(tmp_path, "SST-2", n=40)
    bundle = load_data("glue/sst2", data_dir=tmp_path, val_fraction=0.5, max_train_samples=10)
    assert len(bundle.validation) == 20 and len(bundle.train) == 10
    assert GLUE_MAX_VALIDATION == 2000


def test_glue_errors(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_data("glue/sst2", data_dir=tmp_path / "nowhere")
    assert_one_line_error(excinfo, "nowhere", "--data-dir")
    with pytest.raises(DataError) as excinfo:
        load_data("glue/cola", data_dir=tmp_path)
    assert_one_line_error(excinfo, "CoLA", "train.tsv")
    make_glue(tmp_path, "MNLI", n=10)
    (tmp_path / "MNLI" / "dev_matched.tsv").unlink()
    with pytest.raises(DataError) as excinfo:
        load_data("glue/mnli", data_dir=tmp_path)
    assert_one_line_error(excinfo, "dev_matched.tsv", "not found")
    with pytest.raises(DataError, match="unknown GLUE task 'wnli'"):
        load_data("glue/wnli", data_dir=tmp_path)
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError) as excinfo:
        load_data("glue/rte", data_dir=tmp_path)
    assert_one_line_error(excinfo, "train.tsv", "line 2", "'maybe'")
    write(tmp_path / "SST-2" / "train.tsv", "text\tlabel\na\t0\n")
    write(tmp_path / "SST-2" / "dev.tsv", "text\tlabel\na\t0\n")
    with pytest.raises(DataError) as excinfo:
        load_data("glue/sst2", data_dir=tmp_path)
    assert_one_line_error(excinfo, "train.tsv", "'sentence'", "text, label")


def test_glue_hub_offline_and_mapping(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nplease check")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError) as excinfo:
        load_data("glue/rte")
    assert_one_line_error(excinfo, "glue/rte", "--data-dir", "ConnectionError")

    def fake(name, task):
        assert (name, task) == ("nyu-mll/glue", "mnli")
        part = lambda n: {"premise": [f"p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)],
                          "label": [i % 3 for i in range(n)]}
        return {"train": part(30), "validation_matched": part(9)}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake))
    bundle = load_data("glue/mnli")
    assert len(bundle.test) == 9 and bundle.test.text_pairs[2] == "h2" and bundle.test.labels[2] == 2
    assert len(bundle.validation) == 3 and len(bundle.train) == 27


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def test_compute_metric_by_hand():
    assert compute_metric("accuracy", [1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.75)
    labels, preds = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP=2, FP=1, FN=1, TN=1
    assert compute_metric("f1", labels, preds) == pytest.approx(2 / 3)  # P = R = 2/3
    assert compute_metric("mcc", labels, preds) == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    assert compute_metric("mcc", [0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert compute_metric("f1", [0, 0], [0, 0]) == 0.0
    assert isinstance(compute_metric("accuracy", np.array([1]), np.array([1])), float)
    with pytest.raises(DataError, match="unknown metric"):
        compute_metric("auc", [1], [1])
    with pytest.raises(DataError):
        compute_metric("accuracy", [1, 0], [1])


# ---------------------------------------------------------------------------------------------------------
# Real GLUE SST-2 beside the repository (skipped when ../shared is absent)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_GLUE / "SST-2" / "dev.tsv").is_file(), reason="../shared/data/glue is absent")
def test_real_sst2():
    bundle = load_data("glue/sst2", data_dir=SHARED_GLUE)
    assert bundle.label_names == ["negative", "positive"] and bundle.metric == "accuracy"
    assert len(bundle.test) == 872
    assert Counter(bundle.test.labels) == {1: 444, 0: 428}
    assert len(bundle.validation) == GLUE_MAX_VALIDATION
    assert len(bundle.train) + len(bundle.validation) == 67349
