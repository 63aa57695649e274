"""The ranking page's keys, captured in the browser and sent to the server in order, none lost, none reordered.

Why: Streamlit's own button shortcuts go through the page's buttons, so a key pressed while the ranking fragment
redraws can be dropped by the browser (seen: 1-2-3-4 pressed quickly stored A > B > D > C, D ranked last by
elimination), and clicks that reach the server while a run is busy come to their callbacks in no fixed order.

How: a tiny invisible `st.components.v2` component (`KEYS_JS`, inline, no build step) listens for the ranking
keys on the window itself, whatever the page is redrawing, and keeps them per lease in the order pressed. Every
press sends the whole list so far: `{"lease": id, "stream": random id of this page's list, "keys": [...],
"seq": n}` (`seq` grows with every send, re-sends too). A merged run, a re-sent list or an older list arriving
late therefore carries everything: the server (`new_keys`) applies only the keys after the last index it applied
for that lease and stream, in order, and says back how far it got (`data`), so the component re-sends when
something did not arrive, or when no redraw came back at all within 2 s (at most 5 times in a row). Keys typed
into a text box are left to the text box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

COMPONENT_KEY = "rank-keys"  # the component's widget key; its element gets the class st-key-rank-keys
KEYS = frozenset([*"123456789", "T", "X", "S", "U", "Backspace", "Enter"])
ENDING = frozenset(["Enter", "S", "U"])  # keys that may end the item shown: later keys are not for the next one
MAX_KEYS = 10_000  # one list per lease; longer is not a person typing
HIDE_CSS = f".st-key-{COMPONENT_KEY}{{display:none}}"  # no space taken, no layout shift

KEYS_JS = r"""
export default function (component) {
  const { data, setStateValue } = component;
  const w = window;
  let q = w.__rankloopKeys;
  if (!q) {
    q = w.__rankloopKeys = { lease: undefined, stream: null, keys: [], seq: 0, k: 0, send: null, timer: null,
                             resends: 0 };
    const names = { t: "T", x: "X", s: "S", u: "U", Backspace: "Backspace", Enter: "Enter" };
    const typing = (el) => el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
    w.addEventListener("keydown", (e) => {
      // Captured on the window before any element sees it, so nothing the page redraws can drop it.
      if (!document.querySelector(".st-key-__KEY__")) return;  // not on the Rank page
      if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || e.isComposing) return;
      const path = e.composedPath ? e.composedPath() : [];
      if (typing(path[0] || e.target)) return;  // a text box takes its keys
      let key = /^[1-9]$/.test(e.key) ? e.key : names[e.key] || names[e.key.toLowerCase()];
      if (!key) return;
      if (q.lease === null && key !== "U") return;  // nothing shown: only Undo means something
      if (/^[1-9]$/.test(key) && Number(key) > q.k) return;
      e.preventDefault();
      e.stopImmediatePropagation();  // the buttons' own shortcuts (shown on them) do not fire as well
      q.keys.push(key);
      q.flush();
    }, true);
    q.flush = () => {
      if (!q.send) return;
      q.seq += 1;
      q.send("keys", { lease: q.lease, stream: q.stream, keys: q.keys.slice(), seq: q.seq });
      // If no redraw says how far the server got within 2 s (the run it asked for never came back), send again:
      // a redraw replaces this timer with one that knows.
      clearTimeout(q.timer);
      q.timer = setTimeout(() => { if (q.resends < 5) { q.resends += 1; q.flush(); } }, 2000);
    };
  }
  q.send = setStateValue;
  const lease = data ? data.lease : null;
  if (lease !== q.lease) {  // another item: a new list (keys pressed for the old one are not moved over)
    q.lease = lease;
    q.stream = Math.random().toString(36).slice(2) + Date.now().toString(36);
    q.keys = [];
    q.seq = 0;
    q.resends = 0;
  }
  q.k = data ? data.k : 0;
  clearTimeout(q.timer);
  const applied = (data && data.applied && data.applied[q.stream]) || 0;
  if (applied < q.keys.length && q.resends < 5) {
    // The server has not applied all of them yet (a run in flight, or a message lost): send the list again soon.
    q.timer = setTimeout(() => { q.resends += 1; q.flush(); }, 1000);
  } else if (applied >= q.keys.length) {
    q.resends = 0;
  }
}
""".replace("__KEY__", COMPONENT_KEY)

_component = st.components.v2.component("rankloop.rank_keys", js=KEYS_JS)


@dataclass(frozen=True)
class KeyList:
    """One message from the component: every key pressed on the page for `lease`, in order."""

    lease: int | None
    stream: str
    keys: tuple[str, ...]
    seq: int


def parse(value: Any) -> KeyList | None:
    """The component's state as a KeyList, or None when there is none or it is not one (never raises)."""
    msg = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(msg, dict):
        return None
    lease, stream, keys, seq = msg.get("lease"), msg.get("stream"), msg.get("keys"), msg.get("seq")
    if lease is not None and (not isinstance(lease, int) or isinstance(lease, bool)):
        return None
    if not isinstance(stream, str) or not stream or len(stream) > 64 or not isinstance(keys, list):
        return None
    if len(keys) > MAX_KEYS or not all(isinstance(k, str) for k in keys) or not isinstance(seq, int):
        return None
    return KeyList(lease, stream, tuple(keys), seq)


def new_keys(msg: KeyList, applied: dict[str, int]) -> list[str]:
    """The keys after the last one applied for this list (`applied`: stream -> how many): empty on a re-send or an
    older list arriving late, so applying them is idempotent."""
    return list(msg.keys[applied.get(msg.stream, 0):])


def mark_applied(msg: KeyList, applied: dict[str, int], keep: int = 4) -> dict[str, int]:
    """`applied` with this list counted to its end (the last `keep` lists of the lease are remembered)."""
    out = {s: n for s, n in applied.items() if s != msg.stream}
    out[msg.stream] = max(len(msg.keys), applied.get(msg.stream, 0))
    return dict(list(out.items())[-keep:])


def clean_applied(value: Any) -> dict[str, int]:
    """`applied` as kept in a draft (anything else: empty)."""
    if not isinstance(value, dict):
        return {}
    return {s: n for s, n in value.items() if isinstance(s, str) and isinstance(n, int) and n >= 0}


def mount(lease: int | None, k: int, applied: dict[str, int], on_change) -> None:
    """Mount the (invisible) component: `lease` and `k` say which keys mean something now, `applied` how far the
    server got with each list (stream -> count), so the component re-sends what did not arrive."""
    _component(key=COMPONENT_KEY, data={"lease": lease, "k": k, "applied": applied}, default={"keys": None},
               on_keys_change=on_change)
