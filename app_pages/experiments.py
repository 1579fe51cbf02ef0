"""Experiments: the presentation's design claims, each tested by runs that differ in one thing."""

from __future__ import annotations

import streamlit as st

import app_views
from app_figures import arms_curves_figure, grad_norms_figure
from app_state import fragment, get_data
from cifar_core.data import subset
from cifar_core.experiments import (
    EXPERIMENTS,
    Experiment,
    Summary,
    arm_data,
    arms_table,
    load_results,
    summaries_from_record,
    summarize,
)
from cifar_core.formatting import MISSING
from cifar_core.jobs import JobLimitError, get_registry
from cifar_core.runs import RunError, load_run

st.title("Experiments")
st.caption(
    "The presentation made claims about its design choices. Each experiment below trains a "
    "few short runs that differ from the baseline in exactly one thing (same images, same "
    "seed, same number of epochs) and lets the numbers decide. Results measured on the real "
    "data ship with the app; **Rerun live** trains the same runs here.")

app_views.sync("experiments", experiment=app_views.choice("experiments.name", EXPERIMENTS))
shipped = load_results()
name = st.selectbox("Experiment", list(EXPERIMENTS), format_func=lambda n: EXPERIMENTS[n].title,
                    key="experiments.name")
experiment: Experiment = EXPERIMENTS[name]
st.markdown(f"**Claim.** {experiment.claim}")


def draw_results(summaries: list[Summary], verdict: str, source: str) -> None:
    st.success(verdict, icon=":material/science:")
    st.plotly_chart(arms_curves_figure([(s.label, s.history) for s in summaries],
                                       with_train=experiment.name == "dropout"),
                    key=f"experiments.curves.{source}.{experiment.name}")
    st.dataframe(arms_table(summaries), hide_index=True, placeholder=MISSING, column_config={
        c: st.column_config.NumberColumn(format="percent") for c in (
            "best validation accuracy", "train - validation gap (last epoch)", "test accuracy")})
    if experiment.name == "activation":
        st.markdown("**Gradient size per layer** in the last epoch (log scale). With sigmoid, each "
                    "layer passes back only a fraction of the gradient it receives, so the "
                    "first layers barely learn.")
        st.plotly_chart(grad_norms_figure([(s.label, s.grad_norms) for s in summaries]),
                        key=f"experiments.grads.{source}.{experiment.name}")


st.subheader("Measured on the real data")
record = shipped.get(name)
if record:
    st.caption(f"{record['subset']:,} training images, seed 0. Reproduce with `{record['command']}`.")
    draw_results(summaries_from_record(record), record["verdict"], "shipped")
else:
    st.info("No shipped results for this experiment yet: rerun it live below.")

st.subheader("Rerun live")
state_key = f"experiments.jobs.{name}"
epochs = experiment.base.get("epochs")
st.caption(f"{len(experiment.arms)} runs of {epochs} epochs on {experiment.subset:,} images, "
           "one after another in the training queue.")
if st.button("Rerun live", icon=":material/play_arrow:", disabled=bool(st.session_state.get(state_key)),
             key="experiments.rerun"):
    data = get_data("Rerunning an experiment")
    if data is not None:
        small = subset(data, experiment.subset, seed=0)
        try:
            st.session_state[state_key] = [
                get_registry().submit(*arm.configs(experiment.base), arm_data(arm, small),
                                      preset="baseline", subset_size=experiment.subset)
                for arm in experiment.arms]
        except JobLimitError as err:
            st.error(str(err))


def runs_active(job_ids: list[str]) -> bool:
    registry = get_registry()
    return any((snap := registry.snapshot(job_id)) is not None and snap.active for job_id in job_ids)


# Polls only while this visitor's runs train: a poll every 2 s from every open tab was
# most of this page's server time when nothing ran at all.
polling = runs_active(st.session_state.get(state_key) or [])


@fragment("Experiments: live progress", run_every=2 if polling else None)
def draw_live_progress() -> None:
    job_ids = st.session_state.get(state_key)
    if not job_ids:
        return
    registry = get_registry()
    snapshots = [registry.snapshot(job_id) for job_id in job_ids]
    if polling and not any(s is not None and s.active for s in snapshots):
        st.rerun(scope="app")  # all done: draw the results once more, without polling
    for arm, snap in zip(experiment.arms, snapshots):
        if snap is None:
            st.warning(f"{arm.label}: this run is no longer known to the server.")
            continue
        text = f"{arm.label}: {snap.status}"
        if snap.status == "running":
            text += f", epoch {snap.epoch}/{snap.epochs}"
        elif snap.status == "queued" and snap.queue_position:
            text += f" (position {snap.queue_position})"
        st.progress(snap.progress, text=text)
    if all(s is not None and not s.active for s in snapshots):
        try:
            summaries = [summarize(load_run(s.run_dir), arm.label)
                         for arm, s in zip(experiment.arms, snapshots) if s.run_dir]
        except RunError as err:
            st.error(str(err))
            return
        if len(summaries) == len(experiment.arms) and all(s.history for s in summaries):
            draw_results(summaries, experiment.verdict(summaries), "live")
        if st.button("Clear", key=f"experiments.clear.{name}"):
            del st.session_state[state_key]
            st.rerun()


draw_live_progress()
