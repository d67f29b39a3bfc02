"""The app on a user's own file (AppTest): uploads are traced whole by default, a file with some of the checkpoint's
classes or without labels opens on every page, a small trace carries a warning, and messages name the app's controls.

Runs on the shipped BBC checkpoint (tracing 20 short rows takes a few seconds); the uploads and their traces live in a
temporary cache folder.
"""

from __future__ import annotations

import os

import pytest

os.environ["DE3_APP_WARMUP"] = "0"

from streamlit.testing.v1 import AppTest

from .conftest import REPO

APP = str(REPO / "streamlit_app.py")
BBC = "pretrained/bbc-minilm-l6"
PAGES = ("tradeoff", "prototype_map", "inspector", "misclassified", "export", "playground")

pytestmark = pytest.mark.skipif(not (REPO / BBC / "config.json").is_file(), reason="the shipped BBC checkpoint is absent")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DE3_CACHE_DIR", str(tmp_path))
    return tmp_path


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_bbc() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params.update({"ckpt": BBC, "method": "pca"})
    return ok(at.run())


def upload(at: AppTest, name: str, content: str) -> AppTest:
    ok(at.radio(key="ov_kind").set_value("file").run())
    return ok(at.file_uploader(key="ov_upload").upload(name, content.encode(), "text/csv").run())


def load(at: AppTest) -> AppTest:
    return ok(at.button(key="ov_load").click().run())


def infos(at: AppTest) -> list[str]:
    return [i.value for i in at.info]


SOME_CLASSES = "text,label\n" + "".join(
    f"The striker scored goal number {i} in the cup final,sports\n" if i % 2 else
    f"Shares in the bank fell {i} percent after the results,business\n" for i in range(20))
NO_LABELS = "id,text\n" + "".join(f"{i},The minister said the vote on the budget is set for day {i}\n" for i in range(12))


def test_an_upload_is_traced_whole_with_some_of_the_classes_and_a_small_sample_warning():
    at = upload(open_bbc(), "two topics.csv", SOME_CLASSES)
    assert at.selectbox(key="ov_split_file").value == "all"  # an upload is looked at whole by default
    assert at.selectbox(key="ov_label_col").value == "label"
    at = load(at)
    assert not at.error, [e.value for e in at.error]
    source = at.session_state["source"]
    assert source.split == "all" and source.display_name == "two topics.csv"
    assert any("20 samples" in c.value for c in at.caption)  # every row, not the 2 of an 80/10/10 test split
    warnings = [w.value for w in at.sidebar.warning]
    assert any("Only 20 labelled samples" in w and "5.0 points" in w for w in warnings), warnings
    assert any(m.label == "accuracy" and "%" in m.value for m in at.metric)


def test_an_unlabelled_upload_opens_every_page_and_says_what_needs_labels():
    at = upload(open_bbc(), "no labels.csv", NO_LABELS)
    assert at.selectbox(key="ov_label_col").value == "(none: predictions only)"
    at = load(at)
    assert not at.error, [e.value for e in at.error]
    assert any(m.label == "accuracy" and m.value == "no labels" for m in at.metric)
    assert any("needs the true labels" in i for i in infos(at))
    assert not at.sidebar.warning  # no labels: no "percentages move in steps" warning either
    for page in PAGES:
        at = ok(at.switch_page(f"app/pages/{page}.py").run())
        assert not at.error, (page, [e.value for e in at.error])
        if page in ("tradeoff", "misclassified"):
            assert any("needs the true labels" in i for i in infos(at)), page
    at = ok(at.switch_page("app/pages/misclassified.py").run())
    assert not at.metric  # no bucket counts without labels


def test_upload_messages_name_the_app_controls_not_command_line_flags():
    at = upload(open_bbc(), "moods.csv", "text,label\n" + "".join(f"a calm day {i},calm\n" for i in range(10)))
    at = load(at)
    shown = [e.value for e in at.error]
    assert len(shown) == 1 and "never saw: 'calm'" in shown[0], shown
    assert "--" not in shown[0] and "Label column" in shown[0] and "moods.csv" in shown[0]


MOODS = "text,label\n" + "".join(
    f"what a wonderful sunny day number {i},happy\n" if i % 2 else f"a grey and miserable rainy day number {i},sad\n"
    for i in range(40))


def test_fit_exits_on_an_upload_opens_the_new_checkpoint_and_its_held_out_trace(cache):
    at = upload(open_bbc(), "moods.csv", MOODS)
    assert at.text_input(key="ov_fit_model").value == "minilm-l6"
    at = ok(at.button(key="ov_fit").click().run())
    assert not at.error, [e.value for e in at.error]
    source = at.session_state["source"]
    folder = cache / "attached"
    assert source.data == "own" and source.split == "test" and source.checkpoint.startswith(str(folder))
    assert "minilm-l6-on-moods-" in source.checkpoint
    assert any("4 samples" in c.value and "happy, sad" in c.value for c in at.caption)  # the 10 % held out
    for page in PAGES:
        at = ok(at.switch_page(f"app/pages/{page}.py").run())
        assert not at.error, (page, [e.value for e in at.error])


def test_fit_exits_refuses_bad_models_in_one_line_and_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = upload(open_bbc(), "moods.csv", MOODS)
    for typed, needle in (("", "type a model"), ("../../etc", "outside"), ("no such/model/at all", "neither a folder"),
                          ("someone/no-such-model", "could not load 'someone/no-such-model'")):
        at.text_input(key="ov_fit_model").set_value(typed)
        at = ok(at.button(key="ov_fit").click().run())
        shown = [e.value for e in at.error]
        assert len(shown) == 1 and needle in shown[0], (typed, shown)
        assert at.session_state["source"].checkpoint == BBC
    assert not (cache / "attached").exists() or not any((cache / "attached").iterdir())


def test_fit_exits_needs_a_label_column():
    at = upload(open_bbc(), "no labels.csv", NO_LABELS)
    assert any("needs a label column" in c.value for c in at.caption)
    assert "ov_fit" not in [b.key for b in at.button]
