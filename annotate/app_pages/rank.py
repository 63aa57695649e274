"""The ranking page: one comparison at a time, keyboard first, nothing lost.

Keys (Streamlit's native button shortcuts; they do not fire while typing in a text box):
1..9 rank the candidates best first (with two: 1 = A better, 2 = B better), T tie, X all bad, Backspace clear,
Enter submit, S skip, U undo the last submit. A submit returns once its transaction committed, then the next
item shows; a repeated submit of the same lease is stored once (the idempotency key names the lease).
Buttons that act on an item carry its lease in their key, so a key pressed while the next item is still being
drawn hits the old, gone button and is dropped instead of ranking an item the reviewer has not seen; Undo acts
on the last submit, not on the item, so its key is stable.
"""

from __future__ import annotations

import time

import streamlit as st

from annotate import ranking as rk
from annotate.render import safe_markdown, show_conversation, show_response
from annotate.session import db_path, require_user, settings
from store.judgments import FLAGS
from store.queue import AlreadyJudged, Answer, Item, next_item, progress, release, submit_and_next, undo

db = db_path()
user = require_user()
config = settings()
ss = st.session_state
FLAG_LABELS = {"unsafe": "Unsafe", "off_topic": "Off-topic", "factually_wrong": "Factually wrong", "other": "Other"}


def _key(name: str, item: Item, rid: int | None = None) -> str:
    return f"{name}:{item.lease_id}" + ("" if rid is None else f":{rid}")


def _order(item: Item) -> list[int]:
    return [rid for rid, _ in item.responses]


def _ranks(item: Item) -> rk.Ranks:
    return {rid: ss.get(_key("rank", item, rid)) for rid in _order(item)}


def _set_ranks(item: Item, ranks: rk.Ranks) -> None:
    for rid, value in ranks.items():
        ss[_key("rank", item, rid)] = value


def _start(item: Item | None) -> None:
    """Make `item` the one on screen; its widgets start from the order shown."""
    ss["item"] = item
    ss["shown_at"] = time.monotonic()
    if item is not None:
        for rid, value in rk.default_ranks(_order(item)).items():
            ss.setdefault(_key("rank", item, rid), value)


def _forget(item: Item | None) -> None:
    if item is not None:
        suffix = f":{item.lease_id}"
        for k in [k for k in ss.keys() if isinstance(k, str) and (k.endswith(suffix) or f"{suffix}:" in k)]:
            del ss[k]


def _touch(item: Item) -> None:
    ss[_key("touched", item)] = True
    ss[_key("confirm", item)] = False


def _press(index: int) -> None:
    item = ss["item"]
    fresh = not ss.get(_key("touched", item))
    tie = bool(ss.get(_key("tie", item)))
    ranks, got = rk.press(_ranks(item), _order(item), index, fresh=fresh, tie=tie, last=ss.get(_key("last", item), 0))
    _set_ranks(item, ranks)
    _touch(item)
    ss[_key("tie", item)] = False
    ss[_key("last", item)] = got
    ss[_key("allbad", item)] = False


def _tie() -> None:
    item = ss["item"]
    if len(item.responses) == 2:
        _set_ranks(item, rk.all_tied(_order(item)))
        _touch(item)
        ss[_key("allbad", item)] = False
    elif ss.get(_key("touched", item)) and ss.get(_key("last", item)):
        ss[_key("tie", item)] = True
    else:
        ss["flash_error"] = "Press a candidate's number first, then T, then the number of the one it ties with."


def _clear() -> None:
    item = ss["item"]
    _set_ranks(item, {rid: None for rid in _order(item)})
    _touch(item)
    ss[_key("last", item)] = 0
    ss[_key("tie", item)] = False


def _all_bad() -> None:
    item = ss["item"]
    ss[_key("allbad", item)] = not ss.get(_key("allbad", item))
    _touch(item)


def _finish(item: Item, answer: Answer, skipped: bool, message: str) -> None:
    try:
        jid, nxt = submit_and_next(db, item.lease_id, user.id, user.name, answer, skipped=skipped)
    except AlreadyJudged as e:  # e.g. answered in another tab under another lease: give this one back
        ss["flash_error"] = f"Not stored: {e}."
        release(db, item.lease_id, user.id)
        jid, nxt = None, next_item(db, user.id)
    except ValueError as e:
        ss["flash_error"] = f"Not stored: {e}"
        return
    if jid is not None:
        ss["last_submit"] = {"judgment_id": jid, "at": time.time(), "what": message}
        ss["flash"] = f"{message} (judgment {jid})."
    _forget(item)
    _start(nxt)


def _answer(item: Item, **kw) -> Answer:
    return Answer(
        flags=list(ss.get(_key("flags", item)) or []), rationale=(ss.get(_key("why", item)) or "").strip() or None,
        edited_text=(ss.get(_key("edit", item)) or "").strip() or None,
        time_spent_ms=int((time.monotonic() - ss.get("shown_at", time.monotonic())) * 1000), **kw,
    )


def _submit() -> None:
    item = ss.get("item")
    if item is None:
        return
    if ss.get(_key("allbad", item)):
        _finish(item, _answer(item, all_bad=True), False, "Saved: all bad")
        return
    ranking = rk.ranking_of(_ranks(item), _order(item))
    if ranking is None:
        ss["flash_error"] = "Rank every candidate first (or mark them all bad with X)."
        return
    if not ss.get(_key("touched", item)) and not ss.get(_key("confirm", item)):
        ss[_key("confirm", item)] = True  # the page shows the "submitted unchanged" warning
        return
    _finish(item, _answer(item, ranking=ranking), False, f"Saved: {rk.describe(ranking, _order(item))}")


def _skip() -> None:
    item = ss.get("item")
    if item is not None:
        _finish(item, _answer(item), True, "Skipped")


def _undo() -> None:
    last = ss.pop("last_submit", None)
    if not last:
        ss["flash_error"] = "Nothing to undo."
        return
    current = ss.get("item")
    try:
        back = undo(db, last["judgment_id"], user.id, user.name, release_lease_id=current and current.lease_id)
    except ValueError as e:
        ss["flash_error"] = f"Cannot undo: {e}"
        return
    _forget(current)
    _start(back)
    ss["flash"] = f"Undone ({last['what']}). The item is back; answer it again."


if "item" not in ss or ss["item"] is None or ss.get("item_owner") != user.id:
    ss["item_owner"] = user.id
    _start(next_item(db, user.id))
item: Item | None = ss["item"]

head, side = st.columns([3, 1], vertical_alignment="bottom")
p = item.progress if item is not None and item.progress else progress(db, user.id)
head.title("Rank the answers")
head.caption(f"Done today {p['done_today']} · total {p['total']} · {p['remaining']} left in your queue")
with side.popover("Guidelines", icon=":material/menu_book:", width="stretch"):
    st.markdown(safe_markdown(config["guidelines"]) or "_No guidelines yet: ask an admin to write them in Settings._")
if ss.get("flash"):
    st.toast(ss.pop("flash"), icon=":material/check_circle:")
if ss.get("flash_error"):
    st.error(ss.pop("flash_error"))
last = ss.get("last_submit")
can_undo = bool(last) and time.time() - last["at"] <= config["undo_window_s"]

if item is None:
    st.success("Your queue is empty. Thank you! New items show here when an admin adds them.")
    st.button("Undo last submit", key="b-undo", shortcut="U", on_click=_undo, disabled=not can_undo)
    st.stop()

order = _order(item)
k = len(order)
st.subheader(f"Prompt · item {item.comparison_id}")
show_conversation(item.messages)
st.subheader(f"{k} answers")
per_row = 2 if k in (2, 4) else 3
for start in range(0, k, per_row):
    cols = st.columns(per_row)
    for i in range(start, min(start + per_row, k)):
        rid, text = item.responses[i]
        with cols[i - start]:
            st.markdown(f"**Answer {rk.LETTERS[i]}**")
            show_response(text)
            if k > 2:
                st.segmented_control(f"Rank of {rk.LETTERS[i]}", list(range(1, k + 1)), key=_key("rank", item, rid),
                                     on_change=_touch, args=(item,), label_visibility="collapsed")
                st.button(f"{rk.LETTERS[i]} next", key=f"b-press:{item.lease_id}:{i}", on_click=_press, args=(i,),
                          shortcut=str(i + 1) if i < 9 else None, help="Give this answer the next rank.")

all_bad = bool(ss.get(_key("allbad", item)))
touched = bool(ss.get(_key("touched", item)))
shown = "all bad / cannot rank" if all_bad else rk.describe_ranks(_ranks(item), order)
st.markdown(f"**Your ranking:** `{shown}`" + ("" if touched else " _(the order shown; not changed yet)_"))
if ss.get(_key("tie", item)):
    st.caption("Tie armed: the next number you press ties with the previous one.")
with st.container(horizontal=True):
    if k == 2:
        st.button("A better", key=f"b-a:{item.lease_id}", shortcut="1", on_click=_press, args=(0,))
        st.button("B better", key=f"b-b:{item.lease_id}", shortcut="2", on_click=_press, args=(1,))
        st.button("Tie", key=f"b-tie:{item.lease_id}", shortcut="T", on_click=_tie)
    else:
        st.button("Tie next with previous", key=f"b-tie:{item.lease_id}", shortcut="T", on_click=_tie)
        st.button("Clear", key=f"b-clear:{item.lease_id}", shortcut="Backspace", on_click=_clear)
    st.button("Both bad" if k == 2 else "All bad / cannot rank", key=f"b-allbad:{item.lease_id}", shortcut="X",
              on_click=_all_bad, type="primary" if all_bad else "secondary")

st.pills("Flags", list(FLAGS), selection_mode="multi", key=_key("flags", item), format_func=FLAG_LABELS.get)
st.text_input("Why (optional)", key=_key("why", item), placeholder="A short rationale")
with st.expander("Write a better answer (optional, used as a training example)"):
    st.text_area("Your answer", key=_key("edit", item), height=160, label_visibility="collapsed")
if ss.get(_key("confirm", item)):
    st.warning("You are submitting the order exactly as shown, unchanged. Press Enter (Submit) again to confirm, "
               "or rank with the number keys.")
with st.container(horizontal=True):
    st.button("Submit", key=f"b-submit:{item.lease_id}", shortcut="Enter", type="primary", on_click=_submit)
    st.button("Skip", key=f"b-skip:{item.lease_id}", shortcut="S", on_click=_skip)
    st.button("Undo last submit", key="b-undo", shortcut="U", on_click=_undo, disabled=not can_undo)
st.caption("Keys: numbers rank best first · T tie · X all bad · Backspace clear · Enter submit · S skip · "
           "U undo. Text boxes take the keys while you type in them.")
