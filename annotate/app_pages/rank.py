"""The ranking page: one comparison at a time, keyboard first, nothing lost.

Keys (captured in the browser by annotate.keys and applied here in the order pressed, none dropped; they do not
act while typing in a text box):
- two answers: 1 = A better, 2 = B better, T = tie, X = both bad; the last press wins and shows selected;
- K answers: a number ranks that answer next (a ranked one moves to the end; see annotate.ranking), T ties the
  next number with the previous one, X = all bad;
- everywhere: Backspace clears, Enter submits, S skips, U undoes the last submit (the item comes back with the
  ranking, flags, rationale and edit that were submitted).
Every change is kept with the lease as a draft (store.queue.save_draft), so a reload, a lost connection or a
server restart brings the reviewer back to the same item with the same draft. A submit returns once its
transaction committed, then the next item shows; a repeated submit of the same lease is stored once (the
idempotency key names the lease). Keys are sent with the lease of the item they were pressed on, so a key pressed
while the next item is still being drawn is dropped (and said so) instead of ranking an item the reviewer has not
seen; the same holds for buttons, which carry the lease in their widget key.
"""

from __future__ import annotations

import time

import streamlit as st

from annotate import keys as keys_in
from annotate import ranking as rk
from annotate.jobs_panel import inside_workspace
from annotate.render import safe_markdown, show_conversation, show_response
from annotate.session import db_path, require_user, settings
from rankloop.jobs import read_log
from store.jobs import list_jobs
from store.judgments import FLAGS
from store.queue import AlreadyJudged, Answer, Item, next_item, progress, release, save_draft, submit_and_next, undo

db = db_path()
user = require_user()
config = settings()
ss = st.session_state
FLAG_LABELS = {"unsafe": "Unsafe", "off_topic": "Off-topic", "factually_wrong": "Factually wrong", "other": "Other"}
CHOICE_KEYS = {"a": "1", "b": "2", "tie": "T", "bad": "X"}
CHOICE_BUTTONS = {"a": "b-a", "b": "b-b", "tie": "b-tie", "bad": "b-allbad"}  # scripts/app_client.py uses these
KEY_HELP = {2: "1 A better · 2 B better · T tie · X both bad · Backspace clear · Enter submit · S skip · U undo",
            0: "numbers rank best first · T tie next with previous · X all bad · Backspace clear · Enter submit · "
               "S skip · U undo"}


def _key(name: str, item: Item, rid: int | None = None) -> str:
    return f"{name}:{item.lease_id}" + ("" if rid is None else f":{rid}")


def _order(item: Item) -> list[int]:
    return [rid for rid, _ in item.responses]


def _ranks(item: Item) -> rk.Ranks:
    return {rid: ss.get(_key("rank", item, rid)) for rid in _order(item)}


def _set_ranks(item: Item, ranks: rk.Ranks) -> None:
    for rid, value in ranks.items():
        ss[_key("rank", item, rid)] = value
    ss[_key("ver", item)] = ss.get(_key("ver", item), 0) + 1  # fresh selectors (see `_selector_key`)


def _selector_key(item: Item, rid: int) -> str:
    """The rank selector's widget key. The ranks live in plain session keys; a selector shows them under a key that
    changes whenever a key or button changes them, because a rerun carries the browser's widget values from before
    it saw that change, and a selector under the same key would put the old rank back (seen: fast keys lost)."""
    return f"{_key('sel', item, rid)}:{ss.get(_key('ver', item), 0)}"


def _picked(rid: int) -> None:
    """A rank chosen by hand in a selector."""
    item = ss["item"]
    ss[_key("rank", item, rid)] = ss.get(_selector_key(item, rid))
    _changed()


# Clicks whose effect depends on their order. Keys come in order through annotate.keys (`_take_keys`), but
# Streamlit merges the mouse clicks that reach the server while a run is busy into one run and calls their
# callbacks in no order of their own. So in any run only the first such callback acts (after the keys pressed
# before it); `_settle_keys`, at the start of the next script run (the page's or the ranking fragment's), puts
# back the ranking from before it when more came, and says so: a reviewer never gets an order they did not give.
_ACTED = "keys_this_run"


def _state_keys(item: Item) -> list[str]:
    return [_key("rank", item, rid) for rid in _order(item)] + [_key(n, item) for n in ("allbad", "last", "tie")]


def _arrived(name: str) -> bool:
    """First line of every order-dependent button callback: whether it may act (it is the first of its run, and
    the keys pressed before it did not move on to another item)."""
    shown = ss.get("item")
    _take_keys()
    if ss.get("item") is not shown:
        return False
    acted = ss.setdefault(_ACTED, [])
    acted.append(name)
    if len(acted) > 1:
        return False
    item = ss.get("item")
    ss["keys_before"] = None if item is None else (item.lease_id, {k: ss.get(k) for k in _state_keys(item)})
    return True


def _settle_keys() -> None:
    acted, before = ss.pop(_ACTED, []), ss.pop("keys_before", None)
    if len(acted) < 2:
        return
    item = ss.get("item")
    if item is not None and before is not None and before[0] == item.lease_id:
        for k, v in before[1].items():
            ss[k] = v
        ss[_key("ver", item)] = ss.get(_key("ver", item), 0) + 1
        _save(item)
        ss["flash_error"] = (f"{len(acted)} clicks arrived together, too fast to know their order: none was "
                             "applied. Click them again, one at a time (keys are never mixed up like this).")
    else:  # the first was a submit, skip or undo: it acted, on the item that was shown
        ss["flash_error"] = (f"{len(acted)} clicks arrived together: only {acted[0]} was applied, on the item shown "
                             "before; the others were dropped.")


def _applied_key(lease: int | None) -> str:
    return "keys_applied:none" if lease is None else f"keys_applied:{lease}"


def _take_keys() -> None:
    """Apply, in order, the keys the browser sent (annotate.keys) that were not applied yet: the component's value
    is every key pressed on this item so far, so a merged run, a re-send or an older list arriving late applies each
    key once. Keys after one that ends the item (Enter, S, U) are not applied to the next item."""
    msg = keys_in.parse(ss.get(keys_in.COMPONENT_KEY))
    item = ss.get("item")
    lease = None if item is None else item.lease_id
    if msg is None:
        return
    if msg.lease != lease:  # keys for an item no longer shown: pressed before the next one showed
        closed = ss.get("keys_closed")
        if closed and closed[0] == msg.lease and keys_in.new_keys(msg, closed[1]):
            late = keys_in.new_keys(msg, closed[1])
            ss["keys_closed"] = (msg.lease, keys_in.mark_applied(msg, closed[1]))
            ss["flash_error"] = (f"{len(late)} key(s) pressed before this item showed were not applied to it. "
                                 "Press them again now that you see it.")
        return
    applied = ss.get(_applied_key(lease)) or {}
    new = keys_in.new_keys(msg, applied)
    if not new:
        return
    ss[_applied_key(lease)] = keys_in.mark_applied(msg, applied)  # counted first: a refused key is not retried
    for n, key in enumerate(new):
        if key in keys_in.KEYS:
            _act(item, key)
        if ss.get("item") is not item:  # submitted, skipped or undone: the rest was pressed before it showed
            if len(new) > n + 1:
                ss["flash_error"] = (f"{len(new) - n - 1} key(s) pressed after {key} were not applied: they came "
                                     "before this item showed. Press them again now that you see it.")
            return
    if item is not None:
        _save(item)


def _act(item: Item | None, key: str) -> None:
    """One key, as its button does (no draft saved: the caller saves once)."""
    if item is None:
        if key == "U":
            _do_undo()
        return
    k = len(_order(item))
    if key.isdigit() and k == 2 and int(key) <= 2:
        _do_choose(item, "ab"[int(key) - 1])
    elif key.isdigit() and k > 2 and int(key) <= k:
        _do_press(item, int(key) - 1)
    elif key in ("T", "X"):
        if k == 2:
            _do_choose(item, "tie" if key == "T" else "bad")
        else:
            (_do_tie if key == "T" else _do_all_bad)(item)
    elif key == "Backspace":
        _do_clear(item)
    elif key == "Enter":
        _do_submit(item)
    elif key == "S":
        _finish(item, _answer(item), True, "Skipped")
    elif key == "U":
        _do_undo()


def _start(item: Item | None) -> None:
    """Make `item` the one on screen, its widgets filled from the draft kept with its lease (empty when none)."""
    ss["item"] = item
    ss["shown_at"] = time.monotonic()
    if item is None:
        return
    draft = item.draft or {}
    ranks = {int(rid): v for rid, v in (draft.get("ranks") or {}).items()}
    for rid in _order(item):
        ss.setdefault(_key("rank", item, rid), ranks.get(rid))
    ss.setdefault(_key("allbad", item), bool(draft.get("all_bad")))
    ss.setdefault(_key("flags", item), [f for f in draft.get("flags") or [] if f in FLAGS])
    ss.setdefault(_key("why", item), draft.get("rationale") or "")
    ss.setdefault(_key("edit", item), draft.get("edited_text") or "")
    ss.setdefault(_applied_key(item.lease_id), keys_in.clean_applied(draft.get("keys")))


def _forget(item: Item | None) -> None:
    if item is not None:
        ss["keys_closed"] = (item.lease_id, ss.get(_applied_key(item.lease_id)) or {})  # late keys: said, not applied
        suffix = f":{item.lease_id}"
        for k in [k for k in ss.keys() if isinstance(k, str) and (k.endswith(suffix) or f"{suffix}:" in k)]:
            del ss[k]


def _save(item: Item) -> None:
    """Keep the draft with the lease (a reload or a restart brings it back)."""
    draft = {"ranks": {str(rid): v for rid, v in _ranks(item).items() if v is not None},
             "all_bad": bool(ss.get(_key("allbad", item))), "flags": list(ss.get(_key("flags", item)) or []),
             "rationale": ss.get(_key("why", item)) or "", "edited_text": ss.get(_key("edit", item)) or "",
             "keys": ss.get(_applied_key(item.lease_id)) or {}}  # how far the keys got: a reconnect replays none
    try:
        kept = save_draft(db, item.lease_id, user.id, draft)
    except ValueError as e:  # text a judgment would refuse: say so now, the submit names it again
        ss["flash_error"] = f"Not kept as a draft: {e}"
        return
    if not kept:
        ss["flash_error"] = "This item is no longer leased to you (it expired or an admin released it)."


def _changed() -> None:
    """A selector, flag or text box changed: a rank chosen by hand ends "all bad"; keep the draft."""
    item = ss["item"]
    if any(v is not None for v in _ranks(item).values()):
        ss[_key("allbad", item)] = False
    _save(item)


def _do_choose(item: Item, choice: str) -> None:
    """Two answers: one choice, the last press wins."""
    _set_ranks(item, rk.choice_ranks(choice, _order(item)))
    ss[_key("allbad", item)] = choice == "bad"


def _do_press(item: Item, index: int) -> None:
    tie_with = ss.get(_key("last", item)) if ss.get(_key("tie", item)) else None
    _set_ranks(item, rk.press(_ranks(item), _order(item), index, tie_with=tie_with))
    ss[_key("tie", item)] = False
    ss[_key("last", item)] = _order(item)[index]
    ss[_key("allbad", item)] = False


def _do_tie(item: Item) -> None:
    last = ss.get(_key("last", item))
    if last is not None and _ranks(item).get(last) is not None:
        ss[_key("tie", item)] = True
    else:
        ss["flash_error"] = "Press an answer's number first, then T, then the number of the one it ties with."


def _do_all_bad(item: Item) -> None:
    _set_ranks(item, rk.empty(_order(item)))
    ss[_key("allbad", item)] = True
    ss[_key("tie", item)] = False


def _do_clear(item: Item) -> None:
    _set_ranks(item, rk.empty(_order(item)))
    ss[_key("allbad", item)] = False
    ss[_key("last", item)] = None
    ss[_key("tie", item)] = False


def _clicked(name: str, do, *args) -> None:
    """A button (mouse) on the item shown: acts as its key does, if it is the first order-dependent one of its run."""
    if not _arrived(name):
        return
    item = ss["item"]
    do(item, *args)
    _save(item)


def _keys_changed() -> None:
    """The component sent its list of keys (every press sends it)."""
    _take_keys()


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
    if not _arrived('Enter'):
        return
    item = ss.get("item")
    if item is not None:
        _do_submit(item)


def _do_submit(item: Item) -> None:
    if ss.get(_key("allbad", item)):
        _finish(item, _answer(item, all_bad=True), False, "Saved: all bad")
        return
    ranking = rk.ranking_of(_ranks(item), _order(item))
    if ranking is None:
        ss["flash_error"] = "Rank every answer first (or X: all bad, S: skip)."
        return
    _finish(item, _answer(item, ranking=ranking), False, f"Saved: {rk.describe(ranking, _order(item))}")


def _skip() -> None:
    if not _arrived('S'):
        return
    item = ss.get("item")
    if item is not None:
        _finish(item, _answer(item), True, "Skipped")


def _undo() -> None:
    if _arrived('U'):
        _do_undo()


def _do_undo() -> None:
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
    ss["flash"] = f"Undone ({last['what']}). The item is back with your answer; change it and submit again."


def _review() -> None:
    ss["admin_reviewing"] = True


st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem;padding-bottom:1rem}"
        "[data-testid='stChatMessage']{padding:0.25rem 0.5rem}" + keys_in.HIDE_CSS + "</style>")

if user.role == "admin" and not ss.get("admin_reviewing"):
    # An admin reviews only on purpose: opening this page leases nothing until they choose to.
    st.title("Rank the answers")
    st.info("As an admin you can review too. Nothing is leased to you until you start.")
    st.button("Start reviewing", key="b-review", type="primary", on_click=_review)
    st.stop()

if "item" not in ss or ss["item"] is None or ss.get("item_owner") != user.id:
    ss["item_owner"] = user.id
    _start(next_item(db, user.id))
item: Item | None = ss["item"]
_settle_keys()

p = item.progress if item is not None and item.progress else progress(db, user.id)
if ss.get("flash"):
    st.toast(ss.pop("flash"), icon=":material/check_circle:")
last = ss.get("last_submit")
can_undo = bool(last) and time.time() - last["at"] <= config["undo_window_s"]

head, side = st.columns([5, 1], vertical_alignment="center")
with side.popover("Guidelines", icon=":material/menu_book:", width="stretch"):
    st.markdown(safe_markdown(config["guidelines"]) or "_No guidelines yet: ask an admin to write them in Settings._")



def _generating() -> tuple[float | None, str] | None:
    """(share done, what it says) of a running `generate` job (new candidates on their way), or None."""
    job = next((j for j in list_jobs(db, limit=20) if j.command == "generate" and j.active), None)
    if job is None:
        return None
    view = read_log(job.log_path, 5) if inside_workspace(job.log_path) and not job.elsewhere() else None
    if view is None or not view.total:
        return None, "New answers are being generated."
    detail = f" ({view.detail})" if view.detail else ""
    return min(1.0, view.done / view.total), f"New answers are being generated: {view.done}/{view.total}{detail}."


@st.fragment(run_every=3)
def _wait_for_items() -> None:
    """While candidates are generated, show the job's progress and bring the first item in as soon as it exists."""
    status = _generating()
    if status is None:
        return
    share, text = status
    if share is None:
        st.caption(text)
    else:
        st.progress(share, text=text)
    if progress(db, user.id)["remaining"]:
        nxt = next_item(db, user.id)
        if nxt is not None:
            _start(nxt)
            st.rerun(scope="app")


if item is None:
    head.title("Rank the answers")
    if ss.get("flash_error"):
        st.error(ss.pop("flash_error"))
    _wait_for_items()
    if p["remaining"]:
        st.info(f"Nothing to rank right now: the {p['remaining']} item(s) left for you are being ranked by other "
                "reviewers. If one of them gives an item back, it shows here when you reload.")
    else:
        st.success("Your queue is empty. Thank you! New items show here when an admin adds them.")
    st.caption(f"Done today {p['done_today']} · total {p['total']}")
    st.button("Undo last submit", key="b-undo", shortcut="U", on_click=_undo, disabled=not can_undo)
    keys_in.mount(None, 0, ss.get(_applied_key(None)) or {}, _keys_changed)  # U still undoes
    st.stop()

order = _order(item)
k = len(order)
head.subheader(f"Prompt · item {item.comparison_id}", anchor=False)
head.caption(f"Done today {p['done_today']} · total {p['total']} · {p['remaining']} left in your queue")
if ss.get("flash_error"):
    st.error(ss.pop("flash_error"))
prompt_chars = sum(len(str(m.get("content", ""))) for m in item.messages)
with st.container(height=120 if prompt_chars > 240 or len(item.messages) > 1 else "content", border=False):
    show_conversation(item.messages)


@st.fragment
def _ranking_area(item: Item) -> None:
    """The answers, their rank controls, the choice buttons and the ranking line: a key press reruns only this
    (half the server's work of a full page run, at 20 reviewers most of its reruns). What needs the whole page
    (Submit, Skip, Undo, flags, rationale, edit) lives outside it; the keys' component lives in it, so a key reruns
    only this, and a key that moved on to another item (Enter, S, U) reruns the page."""
    shown = ss.get("item")
    if shown is None or shown.lease_id != item.lease_id:
        st.rerun(scope="app")
    _settle_keys()
    if ss.get("flash_error"):
        st.error(ss.pop("flash_error"))
    order = _order(item)
    k = len(order)
    keys_in.mount(item.lease_id, k, ss.get(_applied_key(item.lease_id)) or {}, _keys_changed)
    per_row = k if k <= 4 else 3
    rows = -(-k // per_row)
    box = (300 if k == 2 else 250) if rows == 1 else 150
    ranks = _ranks(item)
    for start in range(0, k, per_row):
        cols = st.columns(per_row)
        for i in range(start, min(start + per_row, k)):
            rid, text = item.responses[i]
            with cols[i - start]:
                rank = ranks.get(rid)
                badge = "" if k == 2 or rank is None else f" · :blue-background[rank {rank}]"
                st.markdown(f"**Answer {rk.LETTERS[i]}**{badge}")
                show_response(text, height=box)
                if k > 2:
                    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                        st.segmented_control(f"Rank of {rk.LETTERS[i]}", list(range(1, k + 1)),
                                             default=rank, key=_selector_key(item, rid), on_change=_picked,
                                             args=(rid,), label_visibility="collapsed")
                        st.button(f"{rk.LETTERS[i]} next", key=f"b-press:{item.lease_id}:{i}", on_click=_clicked,
                                  args=(str(i + 1), _do_press, i), shortcut=str(i + 1) if i < 9 else None,
                                  help=f"Rank {rk.LETTERS[i]} next (pressed again: moves to the end).")

    all_bad = bool(ss.get(_key("allbad", item)))
    with st.container(horizontal=True, vertical_alignment="center"):
        if k == 2:
            chosen = rk.choice_of(ranks, order, all_bad)
            for choice, label in rk.CHOICE_LABELS.items():
                st.button(label, key=f"{CHOICE_BUTTONS[choice]}:{item.lease_id}", shortcut=CHOICE_KEYS[choice],
                          on_click=_clicked, args=(CHOICE_KEYS[choice], _do_choose, choice),
                          type="primary" if chosen == choice else "secondary",
                          icon=":material/check:" if chosen == choice else None)
            shown = "not chosen yet" if chosen is None else rk.CHOICE_LABELS[chosen]
        else:
            st.button("Tie next with previous", key=f"b-tie:{item.lease_id}", shortcut="T", on_click=_clicked,
                      args=("T", _do_tie))
            st.button("All bad / cannot rank", key=f"b-allbad:{item.lease_id}", shortcut="X", on_click=_clicked,
                      args=("X", _do_all_bad), type="primary" if all_bad else "secondary",
                      icon=":material/check:" if all_bad else None)
            shown = "all bad / cannot rank" if all_bad else rk.describe_ranks(ranks, order)
        st.button("Clear", key=f"b-clear:{item.lease_id}", shortcut="Backspace", on_click=_clicked,
                  args=("Backspace", _do_clear))
        st.markdown(f"**Your {'choice' if k == 2 else 'ranking'}:** `{shown}`")
        if ss.get(_key("tie", item)):
            st.caption("Tie armed: the next number ties with the previous one.")


_ranking_area(item)
with st.container(horizontal=True, vertical_alignment="center"):
    st.button("Submit", key=f"b-submit:{item.lease_id}", shortcut="Enter", type="primary", on_click=_submit)
    st.button("Skip", key=f"b-skip:{item.lease_id}", shortcut="S", on_click=_skip)
    st.button("Undo last submit", key="b-undo", shortcut="U", on_click=_undo, disabled=not can_undo)
    st.caption("Keys: " + KEY_HELP[2 if k == 2 else 0] + ("." if k == 2 else f". {rk.RULE}")
               + " Text boxes take the keys while you type in them.")

st.pills("Flags", list(FLAGS), selection_mode="multi", key=_key("flags", item), format_func=FLAG_LABELS.get,
         on_change=_changed)
st.text_input("Why (optional)", key=_key("why", item), placeholder="A short rationale", on_change=_changed)
with st.expander("Write a better answer (optional, used as a training example)",
                 expanded=bool(ss.get(_key("edit", item)))):
    st.text_area("Your answer", key=_key("edit", item), height=160, label_visibility="collapsed",
                 on_change=_changed)
