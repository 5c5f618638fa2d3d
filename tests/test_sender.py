"""The background sender: order, retries while the store is away, refusals kept, bounded close."""

import threading
import time

from facegan.sender import Sender, Spool


class Store:
    """A store that can be switched off; records what it received, in order."""

    def __init__(self):
        self.up = threading.Event()
        self.up.set()
        self.received: list[str] = []


class Record:
    def __init__(self, store: Store, name: str, *, refused: bool = False):
        self.store, self.name, self.refused, self.what = store, name, refused, f"record {name}"
        self.attempts = 0

    def send(self):
        self.attempts += 1
        if self.refused:
            raise ValueError("refused")
        if not self.store.up.is_set():
            raise ConnectionError("store away")
        self.store.received.append(self.name)

    def to_json(self):
        return {"kind": "record", "name": self.name}


def transient(error):
    return isinstance(error, ConnectionError)


def test_records_arrive_in_order_after_an_outage_and_submit_never_waits(tmp_path, monkeypatch):
    monkeypatch.setattr("facegan.sender.BACKOFF_START_S", 0.01)
    monkeypatch.setattr("facegan.sender.BACKOFF_MAX_S", 0.05)
    store, lines = Store(), []
    sender = Sender(is_transient=transient, spool=Spool(tmp_path / "unsent"), warn=lines.append)
    store.up.clear()
    started = time.perf_counter()
    for i in range(200):
        sender.submit(Record(store, str(i)))
    assert time.perf_counter() - started < 0.5  # the loop went on while the store was away
    time.sleep(0.2)
    assert store.received == [] and sender.outage
    store.up.set()
    assert sender.wait_until_sent(10)
    assert store.received == [str(i) for i in range(200)]  # all of it, once, in order
    assert sender.close(1) == []
    assert not (tmp_path / "unsent").exists()
    assert any("does not answer" in line for line in lines) and any("is back" in line for line in lines)


def test_a_refused_record_is_kept_and_does_not_block_the_rest(tmp_path):
    store, lines = Store(), []
    spool = Spool(tmp_path / "unsent")
    sender = Sender(is_transient=transient, spool=spool, warn=lines.append)
    refused = Record(store, "bad", refused=True)
    for record in (Record(store, "a"), refused, Record(store, "b")):
        sender.submit(record)
    assert sender.wait_until_sent(5)
    assert store.received == ["a", "b"] and refused.attempts == 1  # no retrying a refusal
    left = sender.close(1)
    assert left == [refused]
    assert spool.pending() == [{"kind": "record", "name": "bad"}]
    assert "refused record bad" in lines[0]


def test_close_waits_a_bounded_time_then_keeps_what_is_left_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr("facegan.sender.BACKOFF_START_S", 0.01)
    store = Store()
    spool = Spool(tmp_path / "unsent")
    spool.write_manifest([{"kind": "record", "name": "from an earlier process"}])
    sender = Sender(is_transient=transient, spool=spool, warn=lambda line: None)
    sender.submit(Record(store, "0"))
    assert sender.wait_until_sent(5)
    store.up.clear()
    for name in ("1", "2", "3"):
        sender.submit(Record(store, name))
    started = time.perf_counter()
    left = sender.close(0.3)
    assert 0.3 <= time.perf_counter() - started < 5
    assert [job.name for job in left] == ["1", "2", "3"]
    assert [entry["name"] for entry in spool.pending()] == ["from an earlier process", "1", "2", "3"]
    assert store.received == ["0"]


class Batch(Record):
    """A record that takes in the ones queued behind it (as metrics of many epochs do)."""

    def __init__(self, store, names):
        super().__init__(store, "+".join(names))
        self.names = list(names)

    def absorb(self, other):
        if not isinstance(other, Batch):
            return False
        self.names += other.names
        return True

    def send(self):
        if not self.store.up.is_set():
            raise ConnectionError("store away")
        self.store.received.append(list(self.names))


def test_a_backlog_goes_out_in_few_requests_and_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr("facegan.sender.BACKOFF_START_S", 0.01)
    store = Store()
    sender = Sender(is_transient=transient, spool=Spool(tmp_path / "unsent"), warn=lambda line: None)
    store.up.clear()
    for i in range(50):
        sender.submit(Batch(store, [str(i)]))
    sender.submit(Record(store, "grid"))
    sender.submit(Batch(store, ["50"]))
    time.sleep(0.1)
    store.up.set()
    assert sender.wait_until_sent(10)
    flat = [name for request in store.received for name in (request if isinstance(request, list) else [request])]
    assert flat == [str(i) for i in range(50)] + ["grid", "50"]  # order kept across merges
    assert len(store.received) <= 4  # the head retried alone, then the rest merged behind it
    assert sender.close(1) == []
