"""Driving a real `rankloop serve`: start and stop the server, and reviewer sessions over its websocket.

`start_server` runs `rankloop serve` as a child process and waits for its health endpoint. `AppSession` speaks
Streamlit's own websocket protocol (the protobuf `BackMsg`/`ForwardMsg` the browser sends and receives): it
asks for a script run with widget states, exactly as the browser does when a button is pressed, and reads back
the elements of that run. No browser, so tens of sessions fit on a small machine; the server cannot tell the
difference (`scripts/bench/annotate_latency.py` drives real chromium pages for latency figures instead).

    proc, url = start_server(ws_root)
    s = AppSession(url); await s.connect(); await s.login("alice", "her password")
    item = s.item()                       # (lease id, comparison id) on screen, or None when the queue is empty
    await s.click(s.button("b-a")); await s.click(s.button("b-submit"))
    s.judgment_id()                       # the id in the "Saved ... (judgment N)." toast, or None
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINISHED_SUCCESSFULLY = 0  # ScriptFinishedStatus of a run that was not cut short by another
FINISHED_FRAGMENT = 3  # ... of a run of one fragment (FINISHED_FRAGMENT_RUN_SUCCESSFULLY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 60) -> None:
    """Wait until the server at `url` answers its health check; RuntimeError if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "_stcore/health", timeout=1).read()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {url} did not start (try `rankloop serve` by hand)") from None
            time.sleep(0.2)


def start_server(ws_root: Path, port: int | None = None, log: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`rankloop serve` on `ws_root` as a child process (its own PID: serve execs into streamlit), once healthy."""
    port = port or free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL  # the child keeps its own copy
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankloop", "serve", "--workspace", str(ws_root), "--port", str(port)],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    if log:
        out.close()
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_healthy(url, proc)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
    """Signal the server by its own PID and reap it (SIGKILL if SIGTERM is not enough)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Element:
    kind: str  # the protobuf element type: "button", "heading", "toast", "alert", "text_input", ...
    id: str  # widget id ("$$ID-<hash>-<user key>"); "" for elements that are not widgets
    text: str  # label of a widget, body of anything else
    fragment: str = ""  # the st.fragment that drew it: a click on it reruns only that fragment (as a browser does)

    @property
    def user_key(self) -> str:
        return self.id.split("-", 2)[-1] if self.id.startswith("$$ID-") else ""


class SessionLost(ConnectionError):
    """The websocket closed or the server stopped answering."""


class AppSession:
    """One browser tab's worth of the app, over the websocket: script runs triggered by widget states."""

    def __init__(self, url: str, run_timeout_s: float = 120):
        self.url = url
        self.ws_url = url.replace("http://", "ws://") + "_stcore/stream"
        self.run_timeout_s = run_timeout_s
        self.elements: list[Element] = []
        self._ws = None

    async def connect(self) -> None:
        import websockets

        try:
            self._ws = await websockets.connect(self.ws_url, subprotocols=["streamlit"], max_size=2**26,
                                                open_timeout=10, ping_interval=None)
        except (TimeoutError, OSError, websockets.WebSocketException) as e:
            raise SessionLost(f"connect: {e}") from e
        await self.rerun()

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:  # a dead server: nothing to close politely
                pass
            self._ws = None

    async def rerun(self, widgets: list | None = None, fragment: str = "") -> list[Element]:
        """Ask for a script run with these widget states (of one fragment only when `fragment` names one); the
        page's elements once the run finished normally (a fragment's run replaces only that fragment's)."""
        import websockets
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if self._ws is None:
            raise SessionLost("not connected")
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        msg.rerun_script.page_script_hash = ""
        msg.rerun_script.widget_states.widgets.extend(widgets or [])
        if fragment:
            msg.rerun_script.fragment_id = fragment
        deadline = time.monotonic() + self.run_timeout_s
        try:
            await self._ws.send(msg.SerializeToString())
            elements: list[Element] = []
            fragments: set[str] = set()
            while True:
                raw = await asyncio.wait_for(self._ws.recv(), max(0.1, deadline - time.monotonic()))
                fm = ForwardMsg()
                fm.ParseFromString(raw)
                kind = fm.WhichOneof("type")
                if kind == "new_session":  # every script run starts with one, naming the fragments it reruns
                    elements, fragments = [], set(fm.metadata.run.fragment_ids)
                elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                    el = fm.delta.new_element
                    et = el.WhichOneof("type")
                    sub = getattr(el, et)
                    text = getattr(sub, "label", "") or getattr(sub, "body", "") or getattr(sub, "message", "")
                    if et == "exception":
                        text = f"{sub.type}: {sub.message}"
                    elements.append(Element(et, getattr(sub, "id", ""), text, fm.delta.fragment_id))
                elif kind == "script_finished" and fm.script_finished == FINISHED_SUCCESSFULLY:
                    self.elements = elements
                    return elements
                elif kind == "script_finished" and fm.script_finished == FINISHED_FRAGMENT:
                    kept = [e for e in self.elements if e.fragment not in fragments]
                    self.elements = kept + elements
                    return self.elements
        except (TimeoutError, OSError, websockets.WebSocketException) as e:
            await self.close()
            raise SessionLost(f"script run: {type(e).__name__}: {e}") from e

    async def click(self, element: Element) -> list[Element]:
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        return await self.rerun([WidgetState(id=element.id, trigger_value=True)], element.fragment)

    async def login(self, name: str, password: str) -> None:
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        widgets = {e.user_key: e for e in self.elements if e.id}
        submit = next(e for e in self.elements if e.kind == "button" and "FormSubmitter:login" in e.id)
        await self.rerun([WidgetState(id=widgets["login_name"].id, string_value=name),
                          WidgetState(id=widgets["login_pw"].id, string_value=password),
                          WidgetState(id=submit.id, trigger_value=True)])
        if not any(e.kind == "button" and e.user_key == "logout" for e in self.elements):
            raise PermissionError(f"login as {name} failed: {self.texts('alert')}")

    def button(self, key_prefix: str) -> Element:
        """The button whose key is `key_prefix` or starts with `key_prefix:` (keys carry the lease id)."""
        for e in self.elements:
            if e.kind == "button" and (e.user_key == key_prefix or e.user_key.startswith(key_prefix + ":")):
                return e
        raise LookupError(f"no button {key_prefix!r} on the page: {[e.user_key for e in self.elements if e.id]}")

    def texts(self, kind: str) -> list[str]:
        return [e.text for e in self.elements if e.kind == kind]

    def item(self) -> tuple[int, int] | None:
        """(lease id, comparison id) of the item on screen; None when the queue is empty."""
        heading = next((t for t in self.texts("heading") if t.startswith("Prompt · item ")), None)
        if heading is None:
            if any("Your queue is empty" in t or "Nothing to rank right now" in t for t in self.texts("alert")):
                return None
            shown = [(e.kind, e.text[:200]) for e in self.elements if e.kind not in ("markdown", "text")]
            raise LookupError(f"neither an item nor an empty queue on the page: {shown}")
        lease = int(self.button("b-submit").user_key.split(":")[1])
        return lease, int(heading.removeprefix("Prompt · item "))

    def judgment_id(self) -> int | None:
        """The judgment id the app confirmed in its toast ("Saved: ... (judgment N)."), if this run showed one."""
        for t in self.texts("toast"):
            m = re.search(r"\(judgment (\d+)\)", t)
            if m:
                return int(m.group(1))
        return None
