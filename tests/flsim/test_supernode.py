"""The instrumented SuperNode's push path, driven through Flower's own ``_push_messages``."""

import threading
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode import start_client_internal as sci

from flsim.recorder import RoundRecorder
from integrations.flower.supernode import install


class SlowAppStore:
    """Node object store whose contents arrive ``delay`` s late, as when a ClientApp is still pushing."""

    def __init__(self, reply: Message, delay: float) -> None:
        self.tree = get_object_tree(reply)
        self.contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(reply).items()}
        self.ready_at = time.time() + delay

    def get_object_tree(self, _msg_id: str):
        return self.tree

    def get(self, oid: str) -> bytes | None:
        return self.contents[oid] if time.time() >= self.ready_at else b""

    def delete(self, _oid: str) -> None:
        pass


class OneReplyState:
    def __init__(self, reply: Message) -> None:
        self.reply = reply

    def get_messages_legacy(self, is_reply: bool):
        return [self.reply]

    def get_message_processing_duration(self, message_id: str) -> float:
        return 0.0

    def delete_messages(self, message_ids) -> None:
        pass


def reply_message() -> Message:
    parent = Message(RecordDict(), dst_node_id=1, message_type="train")
    parent.metadata.__dict__["_message_id"] = parent.object_id
    arrays = ArrayRecord({"flat": Array(np.ones(50_000, dtype=np.float32))})
    return Message(RecordDict({"arrays": arrays}), reply_to=parent)


def test_uplink_starts_once_the_reply_objects_are_on_the_node(monkeypatch):
    # keep flwr's module as it was after the test (install patches it)
    monkeypatch.setattr(sci, "_push_messages", sci._push_messages)
    monkeypatch.setattr(sci, "_pull_and_store_message", sci._pull_and_store_message)
    for key in ("_run_id", "_node_id", "_task_id"):  # messages are built as if inside a node's task
        monkeypatch.setattr(TaskIdentity, key, 1)
    recorder = RoundRecorder("node")
    install(recorder)
    reply = reply_message()
    store = SlowAppStore(reply, delay=0.7)
    pushed: dict[str, int] = {}

    def send(message, tree, runtime):
        return set(store.contents), "session"

    def push_object(run_id, session_id, oid, content):
        assert content != b"", "pushed an object before its content was on the node"
        pushed[oid] = len(content)

    done = threading.Event()

    def push():
        sci._push_messages(state=OneReplyState(reply), object_store=store, send=send, push_object=push_object)
        done.set()

    threading.Thread(target=push, daemon=True).start()
    assert done.wait(10), "push loop did not finish"
    events = {e["ev"]: e for e in recorder.events}
    assert events["send_start"]["t"] >= store.ready_at  # the wait for the app's objects is not uplink
    assert events["send_end"]["t"] - events["send_start"]["t"] < 0.4  # no 0.5 s content sleep left inside
    assert events["send_end"]["bytes"] == sum(len(c) for c in store.contents.values()) == sum(pushed.values())
    assert events["send_start"]["msg"] == reply.metadata.reply_to_message_id
