"""DE3-BERT explorer: `streamlit run streamlit_app.py`. This file only declares the pages; the frame around
them (URL ↔ state, the current trace, the policy sidebar) is ``app.state.run``."""

import streamlit as st

from app import state

st.set_page_config(page_title="DE3-BERT early-exit explorer", page_icon=":material/alt_route:", layout="wide")

PAGES = {
    "Explore": [
        st.Page("app/pages/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("app/pages/tradeoff.py", title="Trade-off explorer", icon=":material/show_chart:", url_path="tradeoff"),
        st.Page("app/pages/prototype_map.py", title="Prototype map", icon=":material/scatter_plot:", url_path="map"),
        st.Page("app/pages/policy_diff.py", title="Policy diff", icon=":material/compare_arrows:", url_path="diff"),
    ],
    "Debug": [
        st.Page("app/pages/samples.py", title="Samples", icon=":material/table_rows:", url_path="samples"),
        st.Page("app/pages/inspector.py", title="Sample inspector", icon=":material/search:", url_path="inspector"),
        st.Page("app/pages/misclassified.py", title="Misclassified early exits", icon=":material/report:", url_path="errors"),
    ],
    "Learn & share": [
        st.Page("app/pages/playground.py", title="Playground", icon=":material/science:", url_path="playground"),
        st.Page("app/pages/export.py", title="Export & share", icon=":material/ios_share:", url_path="export"),
    ],
}

state.run(st.navigation(PAGES))
