"""``python -m integrations.flower.supernode --flsim-events FILE [--flsim-poll S] -- <flower-supernode args>``

Runs Flower's own ``flower-supernode`` with the node's transport calls timed, as close to the wire as
flwr 1.42 allows without forking it: the callables that ``start_client_internal`` hands to
``_pull_and_store_message`` and ``_push_messages`` (the Fleet API's receive, pull_object, confirm,
send, push_object) are wrapped, and the node records

* ``recv_start`` when the poll that returned the message began, ``recv_end`` once its objects are
  pulled and confirmed (``bytes`` = object payload received);
* ``send_start`` when the reply starts going out, ``send_end`` when its last object is pushed
  (``bytes`` = object payload sent).

Flower's push loop picks a reply up as soon as the ClientApp has stored the message, before the app has
pushed the message's objects to the node, and then sleeps in 0.5 s steps until each object's content is
there. That wait belongs to the hand-off from app to node, not to the uplink: the wrapped ``send`` first
waits (in the same 0.5 s steps, or ``--flsim-poll`` if shorter) until every object of the reply is in the
node's store, then marks ``send_start``.

``--flsim-poll`` changes the node's idle sleep between polls (Flower's is 3 s); leave it unset to measure
Flower as it ships.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from flsim.recorder import RoundRecorder, process_host

FLOWER_NODE_POLL_S = 3.0
FLOWER_OBJECT_WAIT_S = 0.5  # _push_messages' sleep while a reply object's content is not yet stored


def reply_objects_stored(store: Any, object_tree: Any) -> bool:
    """Whether every object of ``object_tree`` has its content in the node's object ``store``.

    Flower preregisters a reply's objects with empty content (``b""``) and fills them as the ClientApp
    pushes them.
    """
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    return not any(store.get(tree.object_id) == b"" for tree in iterate_object_tree(object_tree))


def install(recorder: RoundRecorder, poll_interval: float | None = None) -> None:
    """Patch flwr's SuperNode loop in this process (call before ``flower_supernode()``)."""
    from flwr.supernode import start_client_internal as sci

    real_sleep = time.sleep
    object_wait = min(FLOWER_OBJECT_WAIT_S, poll_interval or FLOWER_OBJECT_WAIT_S)
    orig_pull, orig_push = sci._pull_and_store_message, sci._push_messages

    def pull_and_store(**kw: Any) -> Any:
        box: dict[str, Any] = {}
        receive, pull_object, confirm = kw["receive"], kw["pull_object"], kw["confirm_message_received"]

        def receive_timed() -> Any:
            t0 = recorder.clock()
            got = receive()
            if got is not None:
                box.update(t0=t0, msg=got[0].metadata.message_id, bytes=0)
            return got

        def pull_object_timed(run_id: int, obj_id: str) -> bytes:
            content = pull_object(run_id, obj_id)
            box["bytes"] = box.get("bytes", 0) + len(content)
            return content

        def confirm_timed(run_id: int, msg_id: str) -> None:
            confirm(run_id, msg_id)
            recorder.mark("recv_start", t=box.get("t0"), msg=msg_id)
            recorder.mark("recv_end", msg=msg_id, bytes=box.get("bytes", 0))

        kw.update(receive=receive_timed, pull_object=pull_object_timed, confirm_message_received=confirm_timed)
        return orig_pull(**kw)

    def push(**kw: Any) -> Any:
        send, push_object, store = kw["send"], kw["push_object"], kw["object_store"]
        current: dict[str, Any] = {}

        def wait_for_objects(object_tree: Any) -> None:
            while not reply_objects_stored(store, object_tree):
                real_sleep(object_wait)

        def close_current() -> None:
            if current:
                recorder.mark("send_end", msg=current["msg"], bytes=current["bytes"])
                current.clear()

        def send_timed(message: Any, object_tree: Any, runtime: float) -> Any:
            close_current()
            wait_for_objects(object_tree)
            current.update(msg=message.metadata.reply_to_message_id, bytes=0)
            recorder.mark("send_start", msg=current["msg"])
            return send(message, object_tree, runtime)

        def push_object_timed(run_id: int, session_id: str, obj_id: str, content: bytes) -> None:
            push_object(run_id, session_id, obj_id, content)
            if current:
                current["bytes"] += len(content)

        kw.update(send=send_timed, push_object=push_object_timed)
        try:
            return orig_push(**kw)
        finally:
            close_current()

    sci._pull_and_store_message, sci._push_messages = pull_and_store, push
    if poll_interval is not None:
        class _Clock:  # the loop's ``time`` module, with its idle sleep shortened
            def __getattr__(self, name: str) -> Any:
                return getattr(time, name)

            @staticmethod
            def sleep(seconds: float) -> None:
                real_sleep(poll_interval if seconds == FLOWER_NODE_POLL_S else seconds)

        sci.time = _Clock()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m integrations.flower.supernode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flsim-events", required=True, help="JSON-lines file for this node's events")
    parser.add_argument("--flsim-poll", type=float, default=None, help="idle poll interval in s (Flower: 3)")
    args = parser.parse_args(argv[:split])
    host, clock = process_host()
    recorder = RoundRecorder("node", args.flsim_events, clock=clock, host=host)
    install(recorder, args.flsim_poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[split + 1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
