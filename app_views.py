"""Views as URLs: a page's choices live in its query parameters, so a copied link opens the
same view in any browser (``/evaluate?run=baseline&split=test&section=mistakes``).

A page declares its parameters once, near its top::

    app_views.sync("evaluate", split=app_views.choice("evaluate.split", SPLITS), ...)

``sync`` seeds each widget's session-state key from the URL where the URL says something
new (a fresh session, or a link followed within one), notes values it cannot use and
parameters the page does not know, and after the page has run ``write_url`` (called by
the entrypoint) puts the view back in the URL. Values in the URL are short names:
a run's folder name, a tab's label as a slug (``per-class``).

Streamlit's own ``bind="query-params"`` names the parameter after the widget key
(``evaluate.split``), would put run folders' full paths in the URL, and drops a value it
cannot use without saying so; hence this small layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import app_state

PRESENT = "present"  # ?present=1: the presenter view, on every page
LESSON_PARAMS = ("lesson", "step")  # carried in the presenter view, for its way back
DECLARED = "_views.declared"  # this script run's (page, parameters, link placeholder)
WRITTEN = "_views.written"  # {page: {param: value}} as last written to the URL


@dataclass(frozen=True)
class Param:
    """One query parameter: the widget key it seeds, and its URL values -> state values."""

    key: str
    options: Callable[[], Mapping[str, object]]
    then: Callable[[], None] | None = None  # after seeding from the URL (e.g. load a preset)


def slug(label: str) -> str:
    """A label as a URL value: "Channel-order mistake" -> "channel-order-mistake"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def choice(key: str, values: Iterable[str], then: Callable[[], None] | None = None) -> Param:
    """A widget whose options are strings, in the URL as they are."""
    values = tuple(values)
    return Param(key, lambda: {v: v for v in values}, then)


def tab(key: str, labels: Iterable[str]) -> Param:
    """Tabs (or options with long labels), in the URL as slugs of their labels."""
    return named(key, {slug(label): label for label in labels})


def named(key: str, names: Mapping[str, object]) -> Param:
    """Options by the short names ``names`` gives them in a URL ({"mistakes": "Most confident mistakes"})."""
    names = dict(names)
    return Param(key, lambda: names)


def run(key: str) -> Param:
    """A run selector whose options are run folders, in the URL by the folder's name (the
    first of that name: your own runs before the bundled ones)."""
    def options() -> dict[str, object]:
        return {r.name: str(r.path) for r in reversed(app_state.trained_runs())}

    return Param(key, options)


def presenting() -> bool:
    return st.query_params.get(PRESENT) == "1"


def sync(page: str, link_in: DeltaGenerator | None = None, **params: Param) -> None:
    """Seed this page's widgets from the URL, say what in it was not used, and remember the
    parameters for ``write_url``; draws the notes and a "Link to this view" control (here,
    or in ``link_in``)."""
    url = st.query_params.to_dict()
    written = st.session_state.setdefault(WRITTEN, {}).get(page, {})
    notes = []
    for name, param in params.items():
        value = url.get(name)
        if value is None or value == written.get(name):
            continue  # nothing new in the URL: keep this session's choice
        options = param.options()
        if value not in options:
            shown = ", ".join(list(options)[:12]) or "none here"
            notes.append(f"**{name}={value}** is not one of this page's choices ({shown}); ignored.")
            continue
        st.session_state[param.key] = options[value]
        if param.then is not None:
            param.then()
    kept = set(params) | {PRESENT} | (set(LESSON_PARAMS) if presenting() else set())
    notes += [f"**{name}** is not a setting of this page; ignored." for name in url if name not in kept]
    for note in notes:
        st.caption(f":material/link_off: This link's {note}")
    if presenting() and page != "lesson":
        back = {name: url[name] for name in (PRESENT, *LESSON_PARAMS) if name in url}
        st.page_link("app_pages/lesson.py", label="Back to the lesson", icon=":material/arrow_back:",
                     query_params=back)
    st.session_state[DECLARED] = (page, params, (link_in or st).empty())


def view_params(params: Mapping[str, Param]) -> dict[str, str]:
    """The URL values of the widgets' current state (those the page has set)."""
    found = {}
    for name, param in params.items():
        value = st.session_state.get(param.key)
        by_state = {state: url for url, state in param.options().items()}
        if value is not None and value in by_state:
            found[name] = by_state[value]
    return found


def write_url() -> None:
    """After a page declared with ``sync`` has run: its view into the URL, other parameters
    out of it (the presenter view's own stay), and the link into its control."""
    declared = st.session_state.pop(DECLARED, None)
    if declared is None:
        st.session_state[WRITTEN] = {}
        return
    page, params, placeholder = declared
    view = view_params(params)
    url = st.query_params.to_dict()
    keep = (PRESENT, *LESSON_PARAMS) if presenting() else ()
    wanted = {**{k: v for k, v in url.items() if k in keep}, **view}
    if wanted != url:
        st.query_params.from_dict(wanted)
    # Only this page's: another page's widgets were forgotten when it was left, so a link
    # back to it must seed them again even with the same values.
    st.session_state[WRITTEN] = {page: view}
    base = st.context.url or ""
    link = f"{base}?{urlencode(view)}" if view else base
    # Drawn only while open: every view would otherwise send the link's code block along.
    popover = placeholder.popover("Link to this view", icon=":material/link:", key=f"{page}.link",
                                  on_change="rerun")
    if popover.open:
        with popover:
            st.caption("Opens this page as you see it now, in any browser:")
            st.code(link, language=None, wrap_lines=True)


PRESENTER_CSS = """
<style>
  [data-testid="stMain"] .block-container { padding-top: 1.5rem; max-width: 100%; }
  [data-testid="stMain"] h1 { font-size: 2.6rem; }
  [data-testid="stMain"] h2 { font-size: 2.1rem; }
  [data-testid="stMain"] [data-testid="stMarkdownContainer"] p,
  [data-testid="stMain"] [data-testid="stMarkdownContainer"] li { font-size: 1.3rem; line-height: 1.5; }
  [data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"] { display: none; }
</style>
"""


def presenter_style() -> None:
    """Large type and no sidebar, for a projector (1280 × 720 and up)."""
    st.html(PRESENTER_CSS)
