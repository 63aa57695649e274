"""Admin: how much reviewers agree (pairwise, Krippendorff's alpha, Kendall's tau vs consensus), per round people
against each other, the reward model and simulated reviewers (people's agreement drawn as the reward model's
ceiling), gold accuracy with flagged reviewers, and each reviewer's influence on the reward model."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from annotate.session import db_path, require_admin
from store.agreement import agreement_report, gold_accuracy, latest_influence, round_agreements
from store.reviewer_flags import MIN_GOLD_ITEMS, flag_threshold, flagged_among
from store.runs import list_runs
from store.status import workspace_status

db = db_path()
require_admin()
st.title("Agreement")
rounds = [int(r) for r in workspace_status(db)["rounds"]]
choice = st.selectbox("Round", ["all", *rounds], key="agreement_round")
report = agreement_report(db, None if choice == "all" else int(choice))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


a, b, c = st.columns(3)
a.metric("Comparisons with 2+ reviewers", report["comparisons"])
b.metric("Pairwise agreement", _fmt(report["pairwise_agreement"]), help="Share of response pairs two reviewers "
         "order the same way (better, worse or tied).")
c.metric("Krippendorff's alpha (ordinal)", _fmt(report["alpha_ordinal"]), help="1 = perfect, 0 = chance level.")
if not report["reviewers"]:
    st.info("Agreement needs comparisons ranked by two or more reviewers (set N above 1 on the Queue page).")
else:
    frame = pd.DataFrame(report["reviewers"])
    st.subheader("Each reviewer against the consensus of the others")
    st.bar_chart(frame.dropna(subset=["tau_vs_consensus"]), x="reviewer", y="tau_vs_consensus")
    st.dataframe(frame, hide_index=True, width="stretch")

# --- per round: people, the reward model, simulated reviewers ------------------------------------------------------
SERIES = {"human_human": "people vs people (ceiling)", "model_human": "reward model vs people",
          "simulated_human": "simulated vs people", "simulated_simulated": "simulated vs simulated"}
st.subheader("People, the reward model and simulated reviewers, per round")
per_round = round_agreements(db, None if choice == "all" else int(choice))
if not per_round:
    st.info("No rankings yet.")
else:
    table = pd.DataFrame(per_round)
    st.dataframe(table, hide_index=True, width="stretch")
    fitted = [r for r in list_runs(db, kind="simulate_calibrate") if r.status == "succeeded"]
    if fitted:
        m = fitted[-1].metrics
        st.caption(f"Simulated reviewers calibrated (run {fitted[-1].id}, `rankloop simulate --calibrate`): "
                   f"{m['noise_model']} noise {m['noise']:.3g}, spread {m['spread']:g}, fitted on {m['comparisons']} "
                   f"comparisons where people agreed {m['human_agreement']:.3f}; `rankloop loop` uses them.")
    st.caption("Pairwise agreement on the response pairs of each round. People vs people counts comparisons two "
               "or more people ranked; the reward model is the newest one with scores for the round "
               "(`rankloop score`), its scores read as a ranking: if it trained on this round, this is its "
               "agreement on its own training data. People's agreement is the ceiling for the reward model.")
    long = table.melt(id_vars=["round"], value_vars=list(SERIES), var_name="series", value_name="agreement")
    long = long.dropna(subset=["agreement"]).assign(series=lambda f: f["series"].map(SERIES))
    if not long.empty:
        base = alt.Chart(long).encode(x=alt.X("round:O", title="round"),
                                      y=alt.Y("agreement:Q", scale=alt.Scale(domain=[0, 1]), title="agreement"),
                                      color=alt.Color("series:N", title=None))
        ceiling = base.transform_filter(alt.datum.series == SERIES["human_human"]).mark_line(
            strokeDash=[6, 4], point=True)
        others = base.transform_filter(alt.datum.series != SERIES["human_human"]).mark_line(point=True)
        st.altair_chart(ceiling + others, width="stretch")

# --- gold and flagged reviewers ------------------------------------------------------------------------------------
st.subheader("Gold accuracy")
gold = gold_accuracy(db)
below = flag_threshold(db)
flagged = flagged_among(gold, below)
if gold:
    st.dataframe(pd.DataFrame([{"reviewer": n, **v, "flagged": n in flagged} for n, v in sorted(gold.items())]),
                 hide_index=True)
else:
    st.info("No gold answers yet (set some on the Queue page, and a gold rate in Settings).")
if flagged:
    st.warning("Flagged (gold accuracy below " + f"{below:g}" + f", {MIN_GOLD_ITEMS}+ gold items): "
               + ", ".join(f"{n} ({a:.2f})" for n, a in flagged.items())
               + ". Training and exports can leave them out (exclude_flagged).")
elif below is None:
    st.caption("Flagging is off (Settings: reviewer_flag_below = 0).")

# --- influence --------------------------------------------------------------------------------------------------
st.subheader("Reviewer influence on the reward model")
influence = latest_influence(db)
if influence is None:
    st.info("No influence report yet: `rankloop eval influence` refits the reward-model probe without each "
            "reviewer's pairs and shows here how held-out accuracy changes.")
else:
    st.caption(f"Run {influence['run_id']} on {influence['model']!r}: held-out accuracy with every reviewer "
               f"{_fmt(influence['accuracy'])} on {influence['eval_pairs']} pairs. A positive gain means the "
               "reward model is better without that reviewer's pairs.")
    st.dataframe(pd.DataFrame([{**r, "flagged": r["reviewer"] in flagged} for r in influence["reviewers"]]),
                 hide_index=True, width="stretch")
