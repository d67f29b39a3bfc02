"""The current selection of samples, shared by every page (LIT-style linked views), and named slices.

A selection is made anywhere -- a lasso on the prototype map, a bucket bar, a confusion-matrix cell, a histogram
bin, a filter on the Samples table -- and every page then highlights it (the map, the bucket bars, the confusion
matrix, the histograms), filters by it (the Samples table, the ranked misclassified list) or steps through it (the
inspector). It lives in this browser session only; a *named slice* is a selection kept under a name, and slices
travel in the URL (``slices=name:1,4,7-12;other:3``), so a link reopens them.

Pure parts (``Selection``, ``encode_ids``/``decode_ids``, ``encode_slices``/``decode_slices``, ``chart_points``,
``step``) need no Streamlit; the accessors below read and write ``st.session_state``.

A chart feeds the selection with ``new_points(key, event)``: the points of its ``on_select="rerun"`` event when
they differ from what this session last saw of that chart (a new click), else None -- so a chart that keeps its
selection across reruns does not take the selection back after it was changed elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SLICE_NAME = re.compile(r"^[\w .+-]{1,40}$")  # letters of any script, digits, space and . + - _
MAX_SLICES = 20
MAX_URL_TEXT = 100_000  # characters of a link's slices= value read at most
_RUN = re.compile(r"^([0-9]{1,12})(?:-([0-9]{1,12}))?$")  # "7" or "7-12": ASCII digits only


@dataclass(frozen=True)
class Selection:
    """Samples picked somewhere: their ids (sorted, unique), where they were picked, in words, and the widget
    that picked them (``origin``: a chart or table key, "" when none)."""

    ids: tuple[int, ...]
    source: str  # e.g. "map lasso at layer 3", "bucket: premature exit", "confusion: true positive → negative"
    origin: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(sorted({int(i) for i in self.ids})))

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, sample_ids: np.ndarray) -> np.ndarray:
        """(N,) bool: which of ``sample_ids`` are selected."""
        return np.isin(np.asarray(sample_ids), np.asarray(self.ids, dtype=np.int64))

    def describe(self) -> str:
        return f"{len(self.ids)} sample{'s' if len(self.ids) != 1 else ''} — {self.source}"


# ---- ids and slices as text (the URL) --------------------------------------------------------------------------


def encode_ids(ids: Iterable[int]) -> str:
    """Sorted ids as runs: [1, 2, 3, 7, 9, 10] -> "1-3,7,9-10" (short enough for a URL)."""
    values = sorted({int(i) for i in ids})
    runs, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            runs.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(runs)


def decode_ids(text: str, limit: int) -> tuple[int, ...]:
    """The inverse of ``encode_ids``; ids outside 0..limit-1 are dropped. Raises ValueError on malformed text (not
    ASCII digits and ranges, a range that runs backwards or is longer than ``limit``)."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RUN.match(part)
        if match is None:
            raise ValueError(f"bad id or range {part[:20]!r}")
        a = int(match.group(1))
        b = int(match.group(2)) if match.group(2) is not None else a
        if b < a or b - a > limit:
            raise ValueError(f"bad range {part!r}")
        out.update(range(a, min(b, limit - 1) + 1))
    return tuple(sorted(out))


def encode_slices(slices: dict[str, tuple[int, ...]]) -> str:
    return ";".join(f"{name}:{encode_ids(ids)}" for name, ids in slices.items())


def decode_slices(text: str, limit: int) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Named slices from a URL value (``limit`` = the trace's samples), and the problems found: a part that is not
    name:ids, a bad name, ids that are not numbers and ranges, ids beyond the trace (dropped), more than
    ``MAX_SLICES``. Bad parts are skipped; nothing raises."""
    slices: dict[str, tuple[int, ...]] = {}
    problems: list[str] = []
    if len(text) > MAX_URL_TEXT:
        return {}, [f"ignored the slices in the link: {len(text):,} characters is more than {MAX_URL_TEXT:,}"]
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if len(slices) >= MAX_SLICES:
            problems.append(f"kept the first {MAX_SLICES} slices of the link; the others were ignored")
            break
        name, sep, ids = part.partition(":")
        name = name.strip()
        if not sep or not SLICE_NAME.match(name):
            problems.append(f"ignored {part[:40]!r}: not name:ids (a name is 1-40 letters, digits, spaces or . + - _)")
            continue
        try:
            kept = decode_ids(ids, limit)
        except ValueError:
            problems.append(f"ignored slice {name!r}: its ids are not numbers and ranges like 1,4,7-12")
            continue
        asked = sum(1 for p in ids.split(",") if p.strip())
        if not kept:
            problems.append(f"ignored slice {name!r}: none of its ids is a sample of this trace (0..{limit - 1})"
                            if asked else f"ignored slice {name!r}: it has no ids")
            continue
        if _beyond(ids, limit):
            problems.append(f"slice {name!r}: ids beyond this trace's {limit} samples were dropped")
        slices[name] = kept
    return slices, problems


def _beyond(text: str, limit: int) -> bool:
    """Whether well-formed id text names an id >= ``limit``."""
    return any(int(p.strip().split("-")[-1]) >= limit for p in text.split(",") if p.strip())


# ---- chart events ------------------------------------------------------------------------------------------------


def chart_points(event) -> list[dict]:
    """The selected points of a Plotly chart's ``on_select`` event (the value ``st.plotly_chart`` returns or keeps
    in session state under its key); [] when there is none."""
    if not event:
        return []
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return []
    return [p for p in points or [] if isinstance(p, dict)]


def _fingerprint(points: list[dict]) -> str:
    return json.dumps([[p.get("curve_number"), p.get("point_index", p.get("point_number")), p.get("customdata"),
                        p.get("x"), p.get("y")] for p in points], default=str, sort_keys=True)


def step(ids: Iterable[int], current: int, direction: int) -> int | None:
    """The next (``direction`` +1) or previous (-1) of the sorted ``ids`` after / before ``current`` (which need not
    be one of them); None at the end."""
    values = np.asarray(sorted({int(i) for i in ids}), dtype=np.int64)
    if direction > 0:
        later = values[values > current]
        return int(later[0]) if len(later) else None
    earlier = values[values < current]
    return int(earlier[-1]) if len(earlier) else None


# ---- this session's selection and slices -----------------------------------------------------------------------


def _state():
    import streamlit as st

    return st.session_state


def current() -> Selection | None:
    """This session's current selection, or None."""
    return _state().get("selection")


def select(ids: Iterable[int], source: str, origin: str = "") -> None:
    """Make ``ids`` the current selection (an empty one clears it). ``origin``: the chart or table key it came from."""
    ids = tuple(ids)
    _state()["selection"] = Selection(ids, source, origin) if ids else None


def clear() -> None:
    _state()["selection"] = None


def new_points(key: str, event) -> list[dict] | None:
    """The points selected on chart ``key`` when they changed since this session last looked (a new click, box or
    lasso), else None. A selection that became empty (a double-click, the chart drawn afresh) returns None too:
    the current selection is cleared with ``clear``, never by a chart forgetting its own."""
    points = chart_points(event)
    seen = _state().setdefault("selection_seen", {})
    mark = _fingerprint(points)
    if seen.get(key) == mark:
        return None
    seen[key] = mark
    return points or None


def is_new(viewer: str) -> bool:
    """Whether the current selection changed since ``viewer`` (a page's key) last asked: a page that filters by it
    turns its "only the selection" switch back on for a new one."""
    seen = _state().setdefault("selection_shown", {})
    mark = hash(current())
    if seen.get(viewer) == mark:
        return False
    seen[viewer] = mark
    return True


def slices() -> dict[str, tuple[int, ...]]:
    """This session's named slices (name -> ids), in the order they were saved."""
    return _state().setdefault("slices", {})


def save_slice(name: str, ids: Iterable[int]) -> str | None:
    """Keep ``ids`` under ``name``; returns a problem (a bad or too long name, too many slices, no ids) or None."""
    name = name.strip()
    ids = tuple(sorted({int(i) for i in ids}))
    if not ids:
        return "nothing is selected: select samples first"
    if not SLICE_NAME.match(name):
        return "a slice name is 1-40 letters, digits, spaces or . + - _"
    if name not in slices() and len(slices()) >= MAX_SLICES:
        return f"at most {MAX_SLICES} slices; delete one first"
    slices()[name] = ids
    return None


def use_slice(name: str) -> None:
    """Make the slice ``name`` the current selection (nothing when there is no such slice)."""
    ids = slices().get(name)
    if ids:
        select(ids, f"slice “{name}”", origin=f"slice:{name}")


def delete_slice(name: str) -> None:
    slices().pop(name, None)


def forget() -> None:
    """A new trace: its sample ids mean other samples, so selection and slices start afresh."""
    _state()["selection"] = None
    _state()["slices"] = {}
    _state()["selection_seen"] = {}
    _state().pop("slices_from_link", None)


def follow(trace_key: str) -> None:
    """Called with the current trace's key (its folder) on every run: another trace than the one the selection and
    slices were made on forgets them (``forget``), whichever control changed the trace."""
    if _state().get("selection_trace") not in (None, trace_key):
        forget()
    _state()["selection_trace"] = trace_key


# ---- the URL -----------------------------------------------------------------------------------------------------


def read_link(text: str | None) -> None:
    """A link's ``slices=`` value, kept until a trace is loaded to check its ids against (``apply_link``)."""
    if text:
        _state()["slices_from_link"] = str(text)


def apply_link(num_samples: int) -> str | None:
    """The link's slices, if any are waiting, decoded against a trace of ``num_samples`` and added to this session's
    slices. Returns one warning for everything wrong with them, or None."""
    text = _state().pop("slices_from_link", None)
    if text is None:
        return None
    found, problems = decode_slices(text, num_samples)
    for name, ids in found.items():
        save_slice(name, ids)
    if not problems:
        return None
    return "Slices in the link: " + "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")


def url_value() -> str | None:
    """What the URL's ``slices=`` should say: this session's slices, or a link's not yet read; None for none."""
    waiting = _state().get("slices_from_link")
    if waiting is not None:
        return waiting
    return encode_slices(slices()) or None
