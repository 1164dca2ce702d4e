"""TrustStore: pairing, persistence, corruption handling and permissions (T14)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import stat
import threading
from pathlib import Path

import pytest

from peernet.errors import InvalidPeerId, TrustStoreError
from peernet.ids import PeerId, bech32m_encode, convertbits
from peernet.trust import TrustedPeer, TrustStore


def pid(n: int) -> PeerId:
    return PeerId(n.to_bytes(32, "big"))


class FakeClock:
    """Deterministic time: each reading is one second after the last."""

    def __init__(self, start: float = 1_763_712_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_trust_file(data_dir: Path, data: bytes, file_mode: int = 0o600) -> Path:
    path = data_dir / "trust.json"
    path.write_bytes(data)
    os.chmod(path, file_mode)
    return path


def document(*entries: dict) -> bytes:
    return json.dumps({"version": 1, "peers": list(entries)}).encode()


def entry(n: int, label: str | None = None, added_at: float = 1.0) -> dict:
    return {"id": str(pid(n)), "label": label, "added_at": added_at}


# --- basics ---------------------------------------------------------------------------


def test_pair_accepts_everything_parse_accepts(clock):
    store = TrustStore.in_memory(clock=clock)
    p = pid(1)
    for form in (p, str(p), str(p).upper(), p.bytes):
        got = store.pair(form)
        assert isinstance(got, TrustedPeer) and got.peer_id == p
    assert len(store) == 1
    with pytest.raises(InvalidPeerId):
        store.pair("pn1nonsense")
    assert len(store) == 1


def test_is_trusted_contains_get_len(clock):
    store = TrustStore.in_memory(clock=clock)
    assert not store.is_trusted(pid(1)) and len(store) == 0
    store.pair(pid(1), "one")
    assert store.is_trusted(pid(1))
    assert not store.is_trusted(pid(2))
    assert pid(1) in store and str(pid(1)) in store
    assert pid(2) not in store and "garbage" not in store and 42 not in store
    assert store.get(pid(1)) == TrustedPeer(pid(1), "one", clock.now)
    assert store.get(str(pid(2))) is None
    assert len(store) == 1


def test_is_trusted_never_raises():
    store = TrustStore.in_memory()
    for junk in (None, [], {}, b"x" * 32, str(pid(1)), 3):
        assert store.is_trusted(junk) is False  # type: ignore[arg-type]


def test_pair_is_idempotent_and_keeps_added_at(clock):
    store = TrustStore.in_memory(clock=clock)
    first = store.pair(pid(1), "phone")
    again = store.pair(pid(1))
    assert again == first
    assert store.list() == [first]


def test_label_policy(clock):
    store = TrustStore.in_memory(clock=clock)
    first = store.pair(pid(1), "  alice's phone  ")
    assert first.label == "alice's phone"  # stripped
    assert store.pair(pid(1), None).label == "alice's phone"  # None keeps it
    renamed = store.pair(pid(1), "alice's laptop")  # a new label replaces it
    assert renamed.label == "alice's laptop" and renamed.added_at == first.added_at
    assert store.pair(pid(1), "   ").label is None  # blank clears it
    assert store.pair(pid(2), "").label is None


@pytest.mark.parametrize(
    "label",
    ["x" * 101, "line\nbreak", "tab\there", "nul\0", "bell\x07", "rtl\u202eevil", "l\u2028s"],
)
def test_bad_labels_are_refused(label):
    store = TrustStore.in_memory()
    with pytest.raises(ValueError):
        store.pair(pid(1), label)
    assert len(store) == 0


def test_label_limits():
    store = TrustStore.in_memory()
    assert store.pair(pid(1), "x" * 100).label == "x" * 100
    assert store.pair(pid(2), "héllo 👨‍👩‍👧 wörld").label == "héllo 👨‍👩‍👧 wörld"
    with pytest.raises(TypeError):
        store.pair(pid(3), 42)  # type: ignore[arg-type]


def test_unpair(clock):
    store = TrustStore.in_memory(clock=clock)
    store.pair(pid(1))
    assert store.unpair(str(pid(1))) is True
    assert store.unpair(pid(1)) is False
    assert not store.is_trusted(pid(1)) and len(store) == 0
    # Pairing again afterwards is a fresh pairing with a new time.
    assert store.pair(pid(1)).added_at == clock.now


def test_list_is_newest_first_with_stable_ties():
    times = iter([5.0, 7.0, 7.0, 6.0, 7.0])
    store = TrustStore.in_memory(clock=lambda: next(times))
    for n in range(1, 6):
        store.pair(pid(n))
    assert [p.peer_id for p in store.list()] == [pid(2), pid(3), pid(5), pid(4), pid(1)]


# --- subscribers ---------------------------------------------------------------------


def test_subscribe_and_unsubscribe(clock):
    store = TrustStore.in_memory(clock=clock)
    events: list[tuple[str, PeerId]] = []
    unsubscribe = store.subscribe(lambda event, peer: events.append((event, peer)))
    store.pair(pid(1))
    store.pair(pid(1), "relabel")  # not a new pairing: no event
    store.unpair(pid(1))
    store.unpair(pid(1))  # not paired: no event
    assert events == [("paired", pid(1)), ("unpaired", pid(1))]
    unsubscribe()
    unsubscribe()  # harmless
    store.pair(pid(2))
    assert len(events) == 2


def test_raising_subscriber_is_logged_and_others_still_run(clock, caplog):
    store = TrustStore.in_memory(clock=clock)
    heard: list[str] = []

    def broken(event: str, peer: PeerId) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    store.subscribe(lambda event, peer: heard.append(event))
    with caplog.at_level(logging.ERROR, logger="peernet.trust"):
        store.pair(pid(1))
    assert heard == ["paired"]
    assert store.is_trusted(pid(1))
    assert any(
        r.name == "peernet.trust" and r.exc_info and "subscriber bug" in str(r.exc_info[1])
        for r in caplog.records
    )


def test_subscriber_may_use_the_store(clock):
    store = TrustStore.in_memory(clock=clock)
    seen: list[bool] = []
    store.subscribe(lambda event, peer: seen.append(store.is_trusted(peer)))
    store.subscribe(lambda event, peer: store.pair(pid(99)) if peer == pid(1) else None)
    store.pair(pid(1))
    store.unpair(pid(1))
    assert seen == [True, True, False]  # pid(1) paired, pid(99) paired, pid(1) unpaired
    assert store.is_trusted(pid(99))


def test_same_callback_twice_unsubscribes_once(clock):
    store = TrustStore.in_memory(clock=clock)
    events: list[str] = []

    def cb(event: str, peer: PeerId) -> None:
        events.append(event)

    first = store.subscribe(cb)
    store.subscribe(cb)
    first()
    store.pair(pid(1))
    assert events == ["paired"]


# --- persistence ---------------------------------------------------------------------


def test_missing_file_is_an_empty_store_created_on_first_change(tmp_path, clock, umask0):
    data_dir = tmp_path / "node"
    store = TrustStore.load(data_dir, clock=clock)
    assert len(store) == 0 and store.path == data_dir / "trust.json"
    assert mode(data_dir) == 0o700
    assert not (data_dir / "trust.json").exists()
    store.pair(pid(1))
    assert mode(data_dir / "trust.json") == 0o600
    assert os.stat(data_dir / "trust.json").st_uid == os.geteuid()


def test_persists_across_reloads(tmp_path, clock):
    store = TrustStore.load(tmp_path, clock=clock)
    store.pair(pid(1), "one")
    store.pair(pid(2))
    store.pair(pid(3), "three ☃")
    store.unpair(pid(2))
    store.pair(pid(1), "uno")
    reloaded = TrustStore.load(tmp_path)
    assert reloaded.list() == store.list()
    assert [p.label for p in reloaded.list()] == ["three ☃", "uno"]
    on_disk = json.loads((tmp_path / "trust.json").read_text("utf-8"))
    assert on_disk["version"] == 1
    assert on_disk["peers"][0] == {"id": str(pid(3)), "label": "three ☃", "added_at": clock.now}


def test_ties_survive_a_reload(tmp_path):
    store = TrustStore.load(tmp_path, clock=lambda: 10.0)
    for n in (5, 3, 9, 1):
        store.pair(pid(n))
    assert [p.peer_id for p in TrustStore.load(tmp_path).list()] == [pid(n) for n in (5, 3, 9, 1)]


def test_in_memory_store_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = TrustStore.in_memory()
    store.pair(pid(1))
    store.unpair(pid(1))
    assert store.path is None
    assert os.listdir(tmp_path) == []


def test_concurrent_changes_are_all_persisted(tmp_path):
    store = TrustStore.load(tmp_path)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(12):
                store.pair(pid(t * 100 + i), f"t{t}-{i}")
            for i in range(0, 12, 3):
                assert store.unpair(pid(t * 100 + i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    expected = {pid(t * 100 + i) for t in range(8) for i in range(12) if i % 3}
    assert {p.peer_id for p in store.list()} == expected
    reloaded = TrustStore.load(tmp_path)
    assert reloaded.list() == store.list()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_failed_write_changes_nothing(tmp_path, clock, monkeypatch):
    store = TrustStore.load(tmp_path, clock=clock)
    store.pair(pid(1), "one")
    path = tmp_path / "trust.json"
    digest = sha256(path)
    events: list[str] = []
    store.subscribe(lambda event, peer: events.append(event))

    def failing_replace(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        store.pair(pid(2))
    with pytest.raises(OSError, match="simulated"):
        store.unpair(pid(1))
    assert sha256(path) == digest
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    assert store.is_trusted(pid(1)) and not store.is_trusted(pid(2))  # memory unchanged
    assert events == []
    monkeypatch.undo()
    assert TrustStore.load(tmp_path).list() == store.list()


# --- corrupt files -------------------------------------------------------------------


def _short_id_text() -> str:
    return bech32m_encode("pn", convertbits(bytes(31), 8, 5, pad=True))


CORRUPTIONS = {
    "empty": b"",
    "truncated to 3 bytes": document(entry(1))[:3],
    "truncated": document(entry(1), entry(2))[:-5],
    "random bytes": random.Random(1234).randbytes(200),
    "not utf-8": b'{"version": 1, "peers": ["\xff"]}',
    "top-level list": b"[]",
    "no peers key": b'{"version": 1}',
    "extra top-level key": b'{"version": 1, "peers": [], "more": 1}',
    "wrong version": b'{"version": 2, "peers": []}',
    "version as bool": b'{"version": true, "peers": []}',
    "version as string": b'{"version": "1", "peers": []}',
    "peers not a list": b'{"version": 1, "peers": {}}',
    "entry not an object": document("pn1"),  # type: ignore[arg-type]
    "entry missing label": document({"id": str(pid(1)), "added_at": 1.0}),
    "entry extra key": document({**entry(1), "x": 1}),
    "id not a string": document({**entry(1), "id": 5}),
    "31-byte key": document({**entry(1), "id": _short_id_text()}),
    "bad checksum": document({**entry(1), "id": str(pid(1))[:-1] + "x"}),
    "label not a string": document(entry(1, label=7)),  # type: ignore[arg-type]
    "label with newline": document(entry(1, label="a\nb")),
    "label too long": document(entry(1, label="x" * 101)),
    "added_at a string": document({**entry(1), "added_at": "yesterday"}),
    "added_at negative": document(entry(1, added_at=-1.0)),
    "added_at bool": document({**entry(1), "added_at": True}),
    "added_at NaN": b'{"version": 1, "peers": [{"id": "%s", "label": null, "added_at": NaN}]}'
    % str(pid(1)).encode(),
    "duplicate entry": document(entry(1), entry(2), entry(1, added_at=3.0)),
    "duplicate key": b'{"version": 1, "version": 1, "peers": []}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_file_is_refused_and_untouched(tmp_path, name):
    path = write_trust_file(tmp_path, CORRUPTIONS[name])
    digest = sha256(path)
    with pytest.raises(TrustStoreError) as info:
        TrustStore.load(tmp_path)
    message = str(info.value)
    assert str(path) in message and "left untouched" in message
    assert sha256(path) == digest
    assert os.listdir(tmp_path) == ["trust.json"]


def test_corruption_messages_say_what_is_wrong(tmp_path):
    def message(data: bytes) -> str:
        write_trust_file(tmp_path, data)
        with pytest.raises(TrustStoreError) as info:
            TrustStore.load(tmp_path)
        return str(info.value)

    assert "not valid JSON" in message(b"{no")
    assert "peers[0].id" in message(CORRUPTIONS["31-byte key"])
    assert "31 bytes" in message(CORRUPTIONS["31-byte key"])
    assert "peers[2] repeats the id" in message(CORRUPTIONS["duplicate entry"])
    assert "unsupported version 2" in message(CORRUPTIONS["wrong version"])


def test_too_big_file_is_refused(tmp_path):
    path = write_trust_file(tmp_path, b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(TrustStoreError, match="bigger than"):
        TrustStore.load(tmp_path)
    assert path.stat().st_size == 4 * 1024 * 1024 + 1


def test_hand_written_file_loads(tmp_path):
    text = json.dumps(
        {
            "version": 1,
            "peers": [
                {"id": str(pid(2)).upper(), "label": "two", "added_at": 20},
                {"id": str(pid(1)), "label": None, "added_at": 10.5},
            ],
        }
    )
    write_trust_file(tmp_path, text.encode())
    store = TrustStore.load(tmp_path)
    assert store.list() == [
        TrustedPeer(pid(2), "two", 20.0),
        TrustedPeer(pid(1), None, 10.5),
    ]


# --- permissions ---------------------------------------------------------------------


@pytest.mark.parametrize("file_mode", [0o666, 0o620, 0o602])
def test_writable_by_others_is_refused(tmp_path, file_mode):
    path = write_trust_file(tmp_path, document(entry(1)), file_mode)
    digest = sha256(path)
    with pytest.raises(TrustStoreError) as info:
        TrustStore.load(tmp_path)
    assert f"chmod 600 {path}" in str(info.value)
    assert sha256(path) == digest and mode(path) == file_mode


def test_readable_by_others_is_allowed(tmp_path):
    write_trust_file(tmp_path, document(entry(1)), 0o644)
    assert TrustStore.load(tmp_path).is_trusted(pid(1))


def test_symlink_is_refused(tmp_path):
    real = tmp_path / "real.json"
    real.write_bytes(document(entry(1)))
    os.chmod(real, 0o600)
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    (data_dir / "trust.json").symlink_to(real)
    with pytest.raises(TrustStoreError, match="symbolic link"):
        TrustStore.load(data_dir)
    assert (data_dir / "trust.json").is_symlink()


def test_file_of_another_user_is_refused(tmp_path, monkeypatch):
    write_trust_file(tmp_path, document(entry(1)))
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(tmp_path).st_uid + 1)
    # The directory would be refused first (tests/adversarial/test_files.py); here the
    # file's own check is under test.
    monkeypatch.setattr("peernet._fs.check_private_dir", lambda directory: None)
    with pytest.raises(TrustStoreError, match="owned by uid"):
        TrustStore.load(tmp_path)


def test_rewrite_tightens_to_0600(tmp_path, umask0):
    path = write_trust_file(tmp_path, document(entry(1)), 0o644)
    store = TrustStore.load(tmp_path)
    store.pair(pid(2))
    assert mode(path) == 0o600


def test_load_sweeps_temp_files_of_killed_writers_but_not_fresh_ones(tmp_path):
    from peernet import _fs
    from peernet.trust import TRUST_FILE_NAME

    TrustStore.load(tmp_path)  # creates the private directory
    stale = tmp_path / f".{TRUST_FILE_NAME}.0123456789abcdef.tmp"
    fresh = tmp_path / f".{TRUST_FILE_NAME}.fedcba9876543210.tmp"
    other = tmp_path / ".unrelated.0123456789abcdef.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"{half a write")
    old = stale.stat().st_mtime - _fs.STALE_TEMP_AGE_S - 1
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    link = tmp_path / f".{TRUST_FILE_NAME}.aaaaaaaaaaaaaaaa.tmp"
    link.symlink_to(other)
    os.utime(link, (old, old), follow_symlinks=False)

    assert len(TrustStore.load(tmp_path)) == 0
    assert not stale.exists()
    assert fresh.exists() and other.exists() and link.is_symlink()


@pytest.mark.parametrize("invisible", ["\u200b", "\u2060", "\u00ad", "\u200f", "\U000e0041",
                                       "\ufeff", "\u3164", "\ufe0f"])
def test_labels_with_invisible_characters_are_refused(clock, invisible):
    """`peernet peers` could show `alice` twice for two keys (zero-width and other
    format characters, tag characters, fillers, variation selectors)."""
    store = TrustStore.in_memory(clock=clock)
    with pytest.raises(ValueError, match="invisible character"):
        store.pair(pid(1), label=f"ali{invisible}ce")
    assert not store.is_trusted(pid(1))


@pytest.mark.parametrize("look_alike", ["ALICE", "Alice", "ａｌｉｃｅ"])
def test_a_label_that_looks_like_another_peers_label_is_refused(clock, look_alike):
    store = TrustStore.in_memory(clock=clock)
    store.pair(pid(1), label="alice")
    with pytest.raises(ValueError, match="looks like 'alice'"):
        store.pair(pid(2), label=look_alike)
    assert not store.is_trusted(pid(2))
    store.pair(pid(1), label="Alice")  # relabelling the same peer is fine


def test_a_label_another_peer_has_is_refused_in_those_words(clock):
    """It said "label 'alice' looks like 'alice'" for the very same label."""
    store = TrustStore.in_memory(clock=clock)
    store.pair(pid(1), label="alice")
    message = f"label 'alice' is already the label of {pid(1).short}; labels are unique"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        store.pair(pid(2), label="alice")
    assert not store.is_trusted(pid(2))


@pytest.mark.parametrize("existing, look_alike", [
    ("alice", "\u0430lice"),                          # Cyrillic a
    ("bob", "b\u03bfb"),                              # Greek omicron
    ("alice", "aIice"),                               # capital I for l
    ("alice", "al1ce"), ("alice", "a|ice"), ("oscar", "0scar"), ("modem", "modern"),
    ("alice", "\u0430\u04cf\u0456\u0441\u0435"),  # every letter Cyrillic
    ("BOB", "\u0392\u039f\u0392"),                   # every letter Greek
])
def test_a_homoglyph_of_another_peers_label_is_refused(clock, existing, look_alike):
    """NFKC + casefold alone let Cyrillic, Greek and digit look-alikes through, so
    `peernet peers` could show `alice` for two keys: the skeleton maps them."""
    store = TrustStore.in_memory(clock=clock)
    store.pair(pid(1), label=existing)
    message = (f"label {look_alike!r} looks like {existing!r}, the label of "
               f"{pid(1).short}; choose one that cannot be mistaken for it")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        store.pair(pid(2), label=look_alike)
    assert not store.is_trusted(pid(2))


@pytest.mark.parametrize("label, word, scripts", [
    ("p\u0430ypal", "p\u0430ypal", "Latin and Cyrillic"),
    ("my \u03a9mega box", "\u03a9mega", "Greek and Latin"),
    ("\u043f\u0440\u0438\u0432\u0435\u0442a", "\u043f\u0440\u0438\u0432\u0435\u0442a",
     "Cyrillic and Latin"),
])
def test_a_word_that_mixes_scripts_is_refused(clock, label, word, scripts):
    """With no label to look like yet, a Latin word with one Cyrillic letter is still
    how a look-alike is made: refused, naming the scripts."""
    store = TrustStore.in_memory(clock=clock)
    message = (f"label {label!r} mixes {scripts} letters in the word {word!r}, as "
               "look-alike names do; write each word in one script")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        store.pair(pid(1), label=label)
    assert not store.is_trusted(pid(1))


def test_labels_that_look_different_or_mix_scripts_by_word_are_welcome(clock):
    store = TrustStore.in_memory(clock=clock)
    labels = ["kitchen pi", "Müller's laptop", "Muller's laptop", "Пётр", "東京 pi",
              "東京pi box", "台所のパイ", "서울 집", "Ελένη", "Hawaiʻi",
              "\U0001f468\u200d\U0001f469\u200d\U0001f467 family", "alice", "alicia", "bob 2"]
    for n, label in enumerate(labels, 1):
        store.pair(pid(n), label=label)
    assert {p.label for p in store.list()} == set(labels)


def test_labels_in_other_scripts_are_still_welcome(clock):
    store = TrustStore.in_memory(clock=clock)
    store.pair(pid(1), label="Küche")
    store.pair(pid(2), label="台所のパイ")
    store.pair(pid(3), label="кухня")
    assert [p.label for p in store.list()] == ["кухня", "台所のパイ", "Küche"]
