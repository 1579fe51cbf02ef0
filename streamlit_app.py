"""CIFAR-10 CNN Lab: `streamlit run streamlit_app.py`."""

import streamlit as st

import app_state
import app_views

st.set_page_config(page_title="CIFAR-10 CNN Lab", page_icon=":material/science:", layout="wide")
if presenting := app_views.presenting():
    app_views.presenter_style()
app_state.run_page(st.navigation([
    st.Page("app_pages/lesson.py", title="Lesson", icon=":material/school:"),
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/photo_library:", default=True),
    st.Page("app_pages/model.py", title="Model", icon=":material/account_tree:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/grid_on:"),
    st.Page("app_pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("app_pages/experiments.py", title="Experiments", icon=":material/science:"),
    st.Page("app_pages/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:"),
], position="hidden" if presenting else "sidebar"))
app_views.write_url()
