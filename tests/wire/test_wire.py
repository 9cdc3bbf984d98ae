"""wire: packing, manifests and both ends of a transfer, in memory (no broker, no disk)."""

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.corpus import data_file, pydicom_file
from wire.codec import InstanceBytes, InstanceVerified, Packer, Unpacker, pack_bytes
from wire.errors import RemoteProtocolError
from wire.manifest import Manifest, Priority
from wire.ranges import RangeSet
from wire.transfer import (
    HOLD_SECONDS,
    MIN_WINDOW,
    ChunkAccepted,
    ChunkDuplicated,
    ChunkRejected,
    Reception,
    State,
    TransferVerified,
    Uplink,
)

META = dict(box_id="box-1", study_uid="1.2.3", priority=Priority.ROUTINE)


def unpack_all(manifest, chunks) -> dict[str, bytes]:
    u = Unpacker(manifest)
    out: dict[str, bytearray] = {}
    verified = set()
    for i, c in enumerate(chunks):
        for ev in u.feed_chunk(i, c):
            if isinstance(ev, InstanceBytes):
                out.setdefault(ev.sop_instance_uid, bytearray()).extend(ev.data)
            elif isinstance(ev, InstanceVerified):
                verified.add(ev.entry.sop_instance_uid)
                out.setdefault(ev.entry.sop_instance_uid, bytearray())
    assert u.done and verified == {e.sop_instance_uid for e in manifest.instances}
    return {k: bytes(v) for k, v in out.items()}


def test_real_instances_round_trip_byte_identical():
    files = [data_file("693_UNCI.dcm"), data_file("MR2_UNCR.dcm"), pydicom_file("CT_small.dcm")]
    inst = [(f"1.2.{i}", f.read_bytes()) for i, f in enumerate(files)]
    m, chunks = pack_bytes(inst, chunk_size=64 * 1024, transfer_id="t1", **META)
    m2 = Manifest.from_json(m.to_json())
    assert m2 == m
    assert sum(len(c) for c in chunks) == m.stream_size < m.payload_bytes
    assert unpack_all(m2, chunks) == dict(inst)


def test_manifest_is_validated():
    m, _ = pack_bytes([("1.2.3.4", b"x" * 1000)], transfer_id="t1", **META)
    good = json.loads(m.to_json())
    for key, bad in [
        ("schema", 99),
        ("study_uid", "../../etc"),
        ("priority", "urgent"),
        ("chunk_sha256", ["00" * 31]),
        ("chunk_size", 0),
        ("box_id", "a/b"),
        ("stream_size", 10**9),
    ]:
        d = dict(good, **{key: bad})
        with pytest.raises(RemoteProtocolError):
            Manifest.from_json(json.dumps(d))
    for raw in (b"\xff\xfe", b"[]", b"{}", b"null"):
        with pytest.raises(RemoteProtocolError):
            Manifest.from_json(raw)


def test_a_forged_stream_is_refused_even_with_matching_chunk_hashes():
    """A box that lies consistently (chunk hashes match, instance hash does not)."""
    m, chunks = pack_bytes([("1.2.3.4", b"real bytes" * 100)], transfer_id="t1", **META)
    forged, fchunks = pack_bytes([("1.2.3.4", b"forged!!!!" * 100)], transfer_id="t1", **META)
    lie = Manifest(
        **{
            **m.__dict__,
            "chunk_sha256": forged.chunk_sha256,
            "stream_size": forged.stream_size,
            "instances": (
                m.instances[0].__class__(
                    **{**m.instances[0].__dict__, "encoded_size": forged.instances[0].encoded_size}
                ),
            ),
        }
    )
    with pytest.raises(RemoteProtocolError, match="sha256 mismatch"):
        unpack_all(lie, fchunks)


def test_packing_streams_in_bounded_memory():
    """Chunks come out as data goes in: the packer never holds the study."""
    p = Packer(chunk_size=32 * 1024, transfer_id="t1", **META)
    block = data_file("693_UNCI.dcm").read_bytes()
    biggest = 0
    for i in range(50):
        p.begin_instance(f"1.2.{i}")
        p.feed(block)
        p.end_instance()
        biggest = max(biggest, len(p._buf))
        p.chunks()
    assert biggest < 32 * 1024


def test_a_preview_goes_before_any_other_chunk_of_its_priority():
    """Within a priority, lossy previews first (even before an older lossless transfer);
    a routine study's preview still waits behind STAT. The order survives a restart."""

    def queued(tid: str, seq: int, priority: Priority, preview: bool) -> None:
        extra = {"preview": {"method": "ISO_15444_1", "ratio": 12.0, "of": 1}} if preview else {}
        meta = {**META, "priority": priority, "extra": extra}
        m, _ = pack_bytes(
            [(f"1.2.{seq}", random.randbytes(9000))], chunk_size=4096, transfer_id=tid, **meta
        )
        assert (m.preview is not None) is preview
        up.queue(Manifest.from_json(m.to_json()), seq=seq)
        up.receive_ack({"transfer_id": tid, "held": []}, fresh=True)

    up = Uplink(window=20)
    queued("routine-preview", 1, Priority.ROUTINE, True)
    queued("stat-lossless-older", 2, Priority.STAT, False)
    queued("stat-preview", 3, Priority.STAT, True)
    queued("stat-lossless", 4, Priority.STAT, False)
    queued("routine-lossless", 0, Priority.ROUTINE, False)
    order = ["stat-preview", "stat-lossless-older", "stat-lossless", "routine-preview",
             "routine-lossless"]  # fmt: skip
    again = Uplink.from_json(up.to_json())
    for t in again.transfers.values():
        t.awaiting = False
    assert list(dict.fromkeys(t for t, _ in handed_in_turn(up))) == order
    assert list(dict.fromkeys(t for t, _ in handed_in_turn(again))) == order


def handed_in_turn(up: Uplink) -> list[tuple[str, int]]:
    """Every chunk, in the order the window hands them out, each acknowledged at once."""
    out: list[tuple[str, int]] = []
    for now in range(100):
        got = up.next_chunks(now=now)
        if not got:
            return out
        out += got
        for tid in dict.fromkeys(t for t, _ in got):
            done = max(i for t, i in out if t == tid) + 1
            up.receive_ack({"transfer_id": tid, "held": [[0, done]]})
    raise AssertionError("the window never emptied")


def test_a_transfer_held_whole_but_never_verified_is_announced_again():
    """The hub holds every chunk but has not verified (it waits for a preview): after
    ``after`` seconds the box sends the manifest again, then once per ``after``."""
    m, _ = pack_bytes([("1.2.1", random.randbytes(9000))], chunk_size=4096,
                      transfer_id="t", **META)  # fmt: skip
    up = Uplink(window=8)
    up.queue(m, seq=1)
    assert up.stalled(0, 60) == []  # awaiting its manifest's answer: another rule
    up.receive_ack({"transfer_id": "t", "held": []}, fresh=True)
    up.next_chunks(now=1)
    up.receive_ack({"transfer_id": "t", "held": [[0, 2]]})
    assert up.stalled(2, 60) == []  # not all held yet
    up.receive_ack({"transfer_id": "t", "held": [[0, m.chunk_count]]})
    assert up.stalled(10, 60) == [] and up.stalled(69, 60) == []
    assert up.stalled(70, 60) == ["t"]
    assert up.stalled(100, 60) == [] and up.stalled(130, 60) == ["t"]
    # how long it has been so counts from the first time seen, through a reconnection
    assert up.held_whole_for("t", 130) == 120
    assert up.reconnected() == ["t"] and up.stalled(140, 60) == []
    up.receive_ack({"transfer_id": "t", "held": [[0, m.chunk_count]]}, fresh=True)
    assert up.stalled(150, 60) == [] and up.held_whole_for("t", 150) == 140
    up.receive_ack({"transfer_id": "t", "held": [[0, m.chunk_count]], "verified": True})
    assert up.stalled(500, 60) == [] and up.held_whole_for("t", 500) == 0


def test_the_window_waits_for_a_more_urgent_transfers_manifest_answer():
    """A STAT study queued while routine chunks go: until the hub answers its manifest
    no routine chunk is handed out, so the STAT chunks do not queue behind a window of
    routine ones; a manifest never answered holds the window HOLD_SECONDS at most."""
    up = Uplink(window=4)
    routine, _ = pack_bytes(
        [("1.2.1", random.randbytes(90_000))], chunk_size=4096, transfer_id="routine", **META
    )
    up.queue(routine, seq=1)
    up.receive_ack({"transfer_id": "routine", "held": []}, fresh=True)
    assert len(up.next_chunks(now=0)) == MIN_WINDOW + 1  # a slow start: nothing measured
    stat, _ = pack_bytes([("1.2.2", random.randbytes(9000))], chunk_size=4096,
                         transfer_id="stat", **{**META, "priority": Priority.STAT})  # fmt: skip
    up.queue(stat, seq=2)
    up.receive_ack({"transfer_id": "routine", "held": [[0, 2]]})  # the window is 4: 3 free
    assert up.next_chunks(now=1) == []  # kept for the STAT study
    up.receive_ack({"transfer_id": "stat", "held": []}, fresh=True)
    assert up.next_chunks(now=2) == [("stat", 0), ("stat", 1), ("stat", 2)]
    # a manifest the hub does not answer (refused for now) holds routine chunks a while
    late, _ = pack_bytes([("1.2.3", random.randbytes(9000))], chunk_size=4096,
                         transfer_id="late", **{**META, "priority": Priority.STAT})  # fmt: skip
    up.queue(late, seq=3)
    up.receive_ack({"transfer_id": "stat", "held": [[0, 3]]})  # stat's 3 chunks all in
    assert up.next_chunks(now=10) == []
    up.receive_ack({"transfer_id": "routine", "held": [[0, 4]]})  # nothing out: idle
    assert up.next_chunks(now=10 + HOLD_SECONDS) == [("routine", i) for i in range(4, 7)]


def test_the_window_shrinks_to_a_slow_links_rate_and_grows_back():
    """About RATE_SECONDS of what the hub acknowledges is in flight, at least
    MIN_WINDOW: 256 kbit/s (a 128 KiB chunk every 4 s) keeps 2 chunks out, not 8."""
    up = Uplink(window=8)
    m, _ = pack_bytes([("1.2.1", random.randbytes(4096 * 200))], chunk_size=4096,
                      transfer_id="t", **META)  # fmt: skip
    up.queue(m, seq=1)
    up.receive_ack({"transfer_id": "t", "held": []}, fresh=True)
    assert len(up.next_chunks(now=0)) == MIN_WINDOW + 1  # nothing measured: a slow start
    acked = 0
    for step in range(1, 25):  # one chunk acknowledged every 4 s
        if step % 4 == 0:
            acked += 1
            up.receive_ack({"transfer_id": "t", "held": [[0, acked]]})
        up.next_chunks(now=step)
    assert up.effective_window(now=24) == MIN_WINDOW
    assert len(up.in_flight) <= 8  # what went before the measure stays out
    for step in range(25, 45):  # the link is fast again: 10 chunks a second
        acked = min(acked + 10, 200)
        up.receive_ack({"transfer_id": "t", "held": [[0, acked]]})
        up.next_chunks(now=step)
    assert up.effective_window(now=45) == 8


def test_the_window_keeps_the_chunk_on_the_wire_apart_from_the_rate_behind_it():
    """At 1 Mbit/s (a 128 KiB chunk acknowledged every 1.2 s) 2 s of the rate is under
    two chunks; with only those out, each ack's round trip left the link idle (73 %
    of its rate at 600 ms, bench/stat.py). The chunk on the wire comes on top: 3."""
    up = Uplink(window=8)
    m, _ = pack_bytes([("1.2.1", random.randbytes(4096 * 200))], chunk_size=4096,
                      transfer_id="t", **META)  # fmt: skip
    up.queue(m, seq=1)
    up.receive_ack({"transfer_id": "t", "held": []}, fresh=True)
    acked = 0
    for tenth in range(1, 241):  # 24 s, an ack every 1.2 s
        if tenth % 12 == 0:
            acked += 1
            up.receive_ack({"transfer_id": "t", "held": [[0, acked]]})
        up.next_chunks(now=tenth / 10)
    assert up.effective_window(now=24.0) == 3


def test_stat_preempts_routine_at_chunk_granularity():
    up = Uplink(window=2)
    routine, _ = pack_bytes(
        [("1.2.1", random.randbytes(50_000))], chunk_size=4096, transfer_id="routine", **META
    )
    up.queue(routine, seq=1)
    assert up.next_chunks(now=0) == []  # nothing before the hub answered the manifest
    up.receive_ack({"transfer_id": "routine", "held": []}, fresh=True)
    first = up.next_chunks(now=0)
    assert [t for t, _ in first] == ["routine", "routine"]
    stat, _ = pack_bytes(
        [("1.2.2", random.randbytes(20_000))],
        chunk_size=4096,
        transfer_id="stat",
        **{**META, "priority": Priority.STAT},
    )
    up.queue(stat, seq=2)
    up.receive_ack({"transfer_id": "stat", "held": []}, fresh=True)
    up.receive_ack({"transfer_id": "routine", "held": [[0, 1]]})
    assert up.next_chunks(now=1) == [("stat", 0)]
    # raising a routine transfer's priority takes effect at the next chunk
    older, _ = pack_bytes(
        [("1.2.3", random.randbytes(9000))], chunk_size=4096, transfer_id="older", **META
    )
    up.queue(older, seq=0)
    up.receive_ack({"transfer_id": "older", "held": []}, fresh=True)
    up.set_priority("older", Priority.STAT)
    up.receive_ack({"transfer_id": "routine", "held": [[0, 2]]})
    up.receive_ack({"transfer_id": "stat", "held": [[0, 1]]})
    assert up.next_chunks(now=2) == [("older", 0), ("older", 1)]


def test_ranges():
    r = RangeSet()
    for i in (5, 1, 2, 3, 9, 4):
        r.add(i)
    assert r.to_json() == [[1, 6], [9, 10]]
    assert list(r.missing(11)) == [0, 6, 7, 8, 10]
    r.discard(3)
    assert r.to_json() == [[1, 3], [4, 6], [9, 10]]
    for bad in ([[0, 99]], [[2, 1]], "x", [[0, "1"]], [[True, 2]]):
        with pytest.raises(RemoteProtocolError):
            RangeSet.from_json(bad, limit=10)


instances_st = st.lists(
    st.tuples(st.integers(1, 10**6), st.binary(min_size=0, max_size=6000)),
    min_size=1,
    max_size=6,
    unique_by=lambda t: t[0],
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    instances=instances_st,
    chunk_size=st.integers(64, 5000),
    seed=st.integers(0, 2**32),
    window=st.integers(1, 8),
)
def test_any_delivery_gives_identical_instances_and_never_resends_acked(
    instances, chunk_size, seed, window
):
    """Loss, duplication, reordering, corruption and restarts of either side."""
    rng = random.Random(seed)
    inst = [(f"1.2.{uid}", data) for uid, data in instances]
    m, chunks = pack_bytes(inst, chunk_size=chunk_size, transfer_id="t1", **META)
    up = Uplink(window=window, ack_timeout=5)
    up.queue(m, seq=1)
    rx = Reception(Manifest.from_json(m.to_json()))
    acked_ever: set[int] = set()
    store: dict[int, bytes] = {}
    now = 0.0
    for _step in range(10_000):
        if rx.state is State.VERIFIED and up.transfers["t1"].verified:
            break
        now += 1
        if up.awaiting() and rng.random() < 0.8:  # the hub answers the manifest (or not)
            ack = json.loads(json.dumps(rx.ack()))
            acked_ever |= set(RangeSet.from_json(ack["held"], m.chunk_count))
            up.receive_ack(ack, fresh=True)
        batch = up.next_chunks(now)
        for _, i in batch:
            assert i not in acked_ever, f"chunk {i} was acked and sent again"
        wire = []
        for _, i in batch:
            roll = rng.random()
            if roll < 0.15:
                continue  # lost
            data = chunks[i]
            if roll < 0.25:
                data = bytes([data[0] ^ 1]) + data[1:] if data else b"x"  # corrupted
            wire.append((i, data))
            if roll > 0.9:
                wire.append((i, chunks[i]))  # duplicated
        rng.shuffle(wire)
        for i, data in wire:
            for ev in rx.receive(i, data):
                if isinstance(ev, ChunkRejected):
                    assert data != chunks[i]
                elif isinstance(ev, ChunkAccepted):
                    assert data == chunks[i], "a corrupted chunk was accepted"
                    store[i] = data
                elif isinstance(ev, ChunkDuplicated):  # changes nothing
                    assert store[i] == chunks[i]
        if rx.state is State.COMPLETE:
            assert unpack_all(rx.manifest, [store[i] for i in range(m.chunk_count)]) == dict(inst)
            rx.verified()
        if rng.random() < 0.8:  # the ack itself may be lost
            ack = json.loads(json.dumps(rx.ack()))
            acked_ever |= set(RangeSet.from_json(ack["held"], m.chunk_count))
            for ev in up.receive_ack(ack):
                if isinstance(ev, TransferVerified):
                    assert rx.state is State.VERIFIED
        if rng.random() < 0.05:  # the box restarts
            up = Uplink.from_json(up.to_json())
        if rng.random() < 0.05:  # the hub restarts
            rx = Reception.from_json(rx.to_json())
        if rng.random() < 0.05:  # the link drops and comes back
            up.disconnected()
            assert up.reconnected() == ([] if up.transfers["t1"].verified else ["t1"])
    assert up.transfers["t1"].verified and rx.state is State.VERIFIED


def test_dicom_aware_codec_is_byte_exact_on_every_sample():
    from devkit.corpus import SAMPLES, sample_path

    files = [sample_path(o, n) for o, n, _ in SAMPLES] + [
        data_file("MR2_UNCI.dcm"),
        data_file("RG3_UNCI.dcm"),
        pydicom_file("CT_small.dcm"),
        pydicom_file("MR_small_bigendian.dcm"),
        data_file("OBXXXX1A.dcm"),
    ]
    inst = [(f"1.2.{i}", f.read_bytes()) for i, f in enumerate(files)]
    m, chunks = pack_bytes(inst, chunk_size=100_000, transfer_id="t1", pixel_effort=1, **META)
    assert unpack_all(Manifest.from_json(m.to_json()), chunks) == dict(inst)
    assert m.codec == {"name": "records-v1", "level": 3, "pixel_effort": 1}
    codecs = {e.sop_instance_uid: e.codec for e in m.instances}
    assert codecs["1.2.0"] == "dicom-jxl"  # CT 512x512 16-bit
    names = [f.name for f in files]
    assert codecs[f"1.2.{names.index('693_J2KR.dcm')}"] == "raw"  # JPEG 2000: not again
    assert codecs[f"1.2.{names.index('OBXXXX1A_expb.dcm')}"] == "zstd"  # big endian
    assert list(codecs.values()).count("dicom-jxl") >= 6
    jxl = sum(e.encoded_size for e in m.instances if e.codec == "dicom-jxl")
    raw = sum(e.size for e in m.instances if e.codec == "dicom-jxl")
    assert raw / jxl > 2.5


def test_chunk_frames_and_topics():
    from wire import frames

    payload = frames.encode_chunk("abc123", 7, b"data" * 10, attempt=2)
    f = frames.decode_chunk(payload)
    assert (f.transfer_id, f.index, f.attempt, bytes(f.data)) == ("abc123", 7, 2, b"data" * 10)
    assert len(payload) - 40 == frames.chunk_overhead("abc123")
    assert frames.encode_chunk("t", 1, b"", attempt=1000)[4] == 255  # capped
    for bad in (
        b"",
        b"RSC1",
        b"XXXX\x00\x01t\x00\x00\x00\x00",
        b"RSC1\x00\x05ab",
        b"RSC1\x00\x03../\x00\x00\x00\x00",
    ):
        with pytest.raises(RemoteProtocolError):
            frames.decode_chunk(bad)
    assert frames.parse_topic("radsetu/v1/clinic-1/up/chunk") == ("clinic-1", "up/chunk")
    for bad_topic in (
        "radsetu/v1/../up/chunk",
        "other/v1/box/up",
        "radsetu/v2/box/up/chunk",
        "radsetu/v1",
    ):
        with pytest.raises(RemoteProtocolError):
            frames.parse_topic(bad_topic)


def test_a_manifest_travels_compressed_and_a_plain_one_is_still_read():
    """``up/manifest`` carries the manifest as zstd, less than half its JSON for a
    study of many chunks; a plain one (a box of an earlier version) is read as it
    was; a damaged frame or one inflating past the ceiling is refused by name."""
    import zstandard

    from wire import frames
    from wire.messages import ManifestReceived, decode_upload

    inst = [(f"1.2.{i}", random.Random(i).randbytes(3000)) for i in range(40)]
    m, _ = pack_bytes(inst, chunk_size=1024, transfer_id="t1", **META)
    body = m.to_json()
    wire_bytes = frames.encode_manifest(body)
    assert len(wire_bytes) < 0.5 * len(body)
    got = decode_upload(frames.UP_MANIFEST, wire_bytes)
    assert isinstance(got, ManifestReceived) and Manifest.from_json(got.raw) == m
    assert decode_upload(frames.UP_MANIFEST, body).raw == body  # plain: as it was
    bomb = zstandard.ZstdCompressor().compress(b" " * (frames.MAX_MANIFEST_BYTES + 1))
    assert len(bomb) < 4096
    with pytest.raises(RemoteProtocolError, match="inflates past"):
        decode_upload(frames.UP_MANIFEST, bomb)
    with pytest.raises(RemoteProtocolError, match="not readable"):
        decode_upload(frames.UP_MANIFEST, frames.ZSTD_MAGIC + b"\xff" * 64)
    with pytest.raises(RemoteProtocolError):  # cut short: no whole manifest in it
        Manifest.from_json(decode_upload(frames.UP_MANIFEST, wire_bytes[:-40]).raw)


def test_an_unmeasured_window_starts_small_and_grows_by_one_with_each_ack():
    """Until the rate is measured (RATE_SPAN / 2 of sending) the window starts at
    MIN_WINDOW + 1 and grows by one chunk for each acknowledged, to ``window``: a
    whole window handed out at once on a 256 kbit/s link is half a minute that a STAT
    study coming next would wait. After an idle spell it starts small again."""
    up = Uplink(window=8)
    m, _ = pack_bytes([("1.2.1", random.randbytes(4096 * 60))], chunk_size=4096,
                      transfer_id="t", **META)  # fmt: skip
    up.queue(m, seq=1)
    up.receive_ack({"transfer_id": "t", "held": []}, fresh=True)
    assert [i for _, i in up.next_chunks(now=0)] == [0, 1, 2]
    assert up.next_chunks(now=1) == []
    up.receive_ack({"transfer_id": "t", "held": [[0, 1]]})
    assert [i for _, i in up.next_chunks(now=1.5)] == [3, 4]  # 4 out: 1, 2, 3, 4
    up.receive_ack({"transfer_id": "t", "held": [[0, 5]]})
    assert len(up.next_chunks(now=2)) == 8  # 3 + 5 acked, no more than the window
    up.receive_ack({"transfer_id": "t", "held": [[0, 13]]})  # nothing out: idle
    assert len(up.next_chunks(now=30)) == MIN_WINDOW + 1


def test_resync_sends_nothing_before_the_fresh_ack_and_then_only_what_is_missing():
    m, _ = pack_bytes(
        [("1.2.9", random.randbytes(40_000))], chunk_size=4096, transfer_id="t", **META
    )
    up = Uplink(window=4)
    up.queue(m, seq=1)
    up.receive_ack({"transfer_id": "t", "held": []}, fresh=True)
    assert [i for _, i in up.next_chunks(now=0)] == [0, 1, 2]
    up.receive_ack({"transfer_id": "t", "held": [[0, 2]]})  # 2 still in flight
    up.disconnected()
    assert up.reconnected() == ["t"]
    assert up.next_chunks(now=1) == []  # waiting for the answer to the manifest
    # a stale ack (from before the reconnection) does not release the transfer
    up.receive_ack({"transfer_id": "t", "held": [[0, 2]]})
    assert up.next_chunks(now=1) == []
    # the fresh answer: chunk 2 arrived after all
    up.receive_ack({"transfer_id": "t", "held": [[0, 3]]}, fresh=True)
    assert [i for _, i in up.next_chunks(now=2)] == [3, 4, 5]


def test_a_second_answer_to_the_manifest_frees_nothing_handed_out_since():
    """On a slow link the manifest may go twice before the first answer comes; the
    second answer arrives after new chunks were handed out and must not make them go
    again (seen on a 1 Mbit/s link after a 60 s cut)."""
    m, _ = pack_bytes(
        [("1.2.9", random.randbytes(40_000))], chunk_size=4096, transfer_id="t", **META
    )
    up = Uplink(window=3)
    up.queue(m, seq=1)
    up.receive_ack({"transfer_id": "t", "held": [[0, 2]]}, fresh=True)
    assert [i for _, i in up.next_chunks(now=0)] == [2, 3, 4]
    up.receive_ack({"transfer_id": "t", "held": [[0, 2]]}, fresh=True)  # the second answer
    assert up.next_chunks(now=1) == []  # 2, 3 and 4 are still on their way


def test_report_messages_refuse_tampering():
    from wire.report import decode_ack, decode_report, encode_ack, encode_report

    pdf = b"%PDF-1.7\n% a report's bytes: the wire carries them as they are\n%%EOF\n"
    report = {"report_id": "r1", "version": 1, "study_uid": "1.2.3", "findings": "ok"}
    got, got_pdf = decode_report(encode_report(report, pdf))
    assert got == report and got_pdf == pdf
    assert decode_ack(encode_ack("r1", 2)) == ("r1", 2, False)
    assert decode_ack(encode_ack("r1", 2, printed=True)) == ("r1", 2, True)
    good = json.loads(encode_report(report, pdf))
    for change in (
        {"pdf_sha256": "0" * 64},
        {"pdf_base64": "not base64!"},
        {"report_id": "../etc"},
        {"version": 0},
        {"study_uid": "<script>"},
        {"findings": ["list"]},
        {"critical": "yes"},
    ):
        with pytest.raises(RemoteProtocolError):
            decode_report(json.dumps({**good, **change}).encode())
    not_pdf = encode_report(report, b"MZ executable")
    with pytest.raises(RemoteProtocolError, match="not a PDF"):
        decode_report(not_pdf)
    with pytest.raises(RemoteProtocolError):
        decode_report(b"x" * (9 * 1024 * 1024))
    for bad in (b"[]", b"{}", b'{"report_id": 1, "version": 1}'):
        with pytest.raises(RemoteProtocolError):
            decode_ack(bad)


def test_a_record_that_would_inflate_past_its_size_is_stopped_early():
    """A 64 KiB zstd record declared as 1 MB that inflates to 2 GiB: refused once the
    output passes the declared size, long before the 2 GiB (it took the hub there)."""
    import hashlib
    import resource

    import zstandard

    from wire.codec import Unpacker
    from wire.errors import RemoteProtocolError
    from wire.manifest import InstanceEntry, Manifest, Priority

    cctx = zstandard.ZstdCompressor(level=3)
    with_writer = cctx.compressobj()
    block = b"\0" * (1 << 20)
    bomb = b"".join(with_writer.compress(block) for _ in range(2048)) + with_writer.flush()
    assert len(bomb) < 256 * 1024
    entry = InstanceEntry("1.2.3", 1_000_000, "0" * 64, 0, len(bomb), "zstd")
    m = Manifest(
        box_id="b",
        study_uid="1.2",
        transfer_id="t",
        priority=Priority.ROUTINE,
        codec={"name": "records-v1", "level": 3},
        chunk_size=len(bomb),
        stream_size=len(bomb),
        instances=(entry,),
        chunk_sha256=(hashlib.sha256(bomb).hexdigest(),),
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RemoteProtocolError, match="decodes to more than its 1000000 bytes"):
        list(Unpacker(m).feed_chunk(0, bomb))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"{grown_kib} KiB more resident while refusing it"


def test_a_small_record_never_sits_in_memory_inflated_whole():
    """200 MB of zeros packs into a few KB (one chunk); unpacking hands it on in pieces
    of a few MiB at most, so `radsetu unpack` and the hub never hold it whole."""
    size = 200 << 20
    m, chunks = pack_bytes([("1.2.3.4", bytes(size))], pixel_effort=0, box_id="b",
                           study_uid="1.2.3", transfer_id="t",
                           priority=Priority.ROUTINE)  # fmt: skip
    assert sum(map(len, chunks)) < 1 << 20
    u = Unpacker(m)
    largest = total = 0
    for i, c in enumerate(chunks):
        for ev in u.feed_chunk(i, c):
            if isinstance(ev, InstanceBytes):
                largest = max(largest, len(ev.data))
                total += len(ev.data)
    assert total == size and u.done
    assert largest <= 8 << 20, f"one piece of {largest} bytes"


def test_resend_requests_and_answers_refuse_what_is_malformed():
    from wire import frames
    from wire.messages import ResendAnswer, ResendRequest, decode_upload

    ask = ResendRequest("a1b2", ["1.2.3", "1.2.840.10008.1"], False)
    assert ResendRequest.decode(ask.encode()) == ask
    assert ResendRequest.decode(ResendRequest("a1b2", [], True).encode()).every
    good = json.loads(ask.encode())
    for change in (
        {"request_id": "../../etc"},
        {"request_id": 7},
        {"study_uids": "1.2.3"},
        {"study_uids": ["1.2.3", "<img src=x>"]},
        {"study_uids": ["1." * 40 + "1"]},  # longer than a UID may be
        {"study_uids": ["1.2.3"] * 1001},
        {"study_uids": [], "every": False},  # names nothing
        {"every": "yes"},
    ):
        with pytest.raises(RemoteProtocolError):
            ResendRequest.decode(json.dumps({**good, **change}).encode())
    with pytest.raises(RemoteProtocolError):
        ResendRequest.decode(b"{" + b" " * (300 * 1024) + b"}")

    answer = ResendAnswer("a1b2", 1, [{"study_uid": "1.2.3", "queued": True, "why": "queued"}])
    assert decode_upload(frames.UP_RESEND, answer.encode()) == answer
    good = json.loads(answer.encode())
    row = good["studies"][0]
    for change in (
        {"queued": -1},
        {"queued": True},
        {"unlisted": "many"},
        {"studies": {"1.2.3": "queued"}},
        {"studies": [{**row, "queued": "yes"}]},
        {"studies": [{**row, "why": "x" * 301}]},
        {"studies": [{**row, "study_uid": "../x"}]},
        {"studies": [row] * 1001},
        {"studies": ["1.2.3"]},
    ):
        with pytest.raises(RemoteProtocolError):
            decode_upload(frames.UP_RESEND, json.dumps({**good, **change}).encode())


def order_notice(**change):  # type: ignore[no-untyped-def]
    from wire.messages import OrderNotice

    good = OrderNotice("2612030001", "1.2.826.0.1.3680043.8.498.1", "scheduled", "stat", "CT",
                       "HEAD", "Fall from a bus, drowsy", "Lakshmi Rao=ಲಕ್ಷ್ಮಿ ರಾವ್", "VJP-7",
                       "2026-12-03T04:05:06.123Z", {"name": "Dr Iyer", "mobile": "+919800000001",
                                                    "email": "", "language": "kn"})  # fmt: skip
    return good if not change else {**json.loads(good.encode()), **change}


def test_orders_refuse_what_is_malformed():
    from wire import frames
    from wire.messages import OrderNotice, decode_upload

    good = order_notice()
    assert decode_upload(frames.UP_ORDER, good.encode()) == good
    assert OrderNotice.decode(json.dumps(order_notice(referrer=None)).encode()).referrer is None
    for change in (
        {"accession": "../../etc"},
        {"accession": "1" * 17},
        {"study_uid": "<b>1.2</b>"},
        {"study_uid": "1." * 40 + "1"},
        {"state": "done"},
        {"priority": "urgent"},
        {"modality": "ct; DROP"},
        {"body_part": "x" * 65},
        {"question": "x" * 1001},
        {"patient_name": ["Lakshmi"]},
        {"patient_id": None},
        {"ordered_at": "yesterday"},
        {"referrer": {"name": "<script>", "mobile": "call me"}},
    ):
        with pytest.raises(RemoteProtocolError):
            decode_upload(frames.UP_ORDER, json.dumps(order_notice(**change)).encode())
    with pytest.raises(RemoteProtocolError):
        OrderNotice.decode(b"[" * (64 * 1024))

    from wire.messages import OrderKept

    kept = OrderKept("2612030001", "cancelled")
    assert OrderKept.decode(kept.encode()) == kept
    for bad in ({"accession": "../x", "state": "scheduled"}, {"accession": "1", "state": "gone"},
                {"accession": 1, "state": "scheduled"}, {"state": "scheduled"}):  # fmt: skip
        with pytest.raises(RemoteProtocolError):
            OrderKept.decode(json.dumps(bad).encode())


def test_kept_names_the_message_it_answers_and_refuses_what_is_malformed():
    from wire import frames
    from wire.messages import Kept, StudyUpdate, digest

    update = StudyUpdate("1.2.3", "stat", "R/O bleed").encode()
    kept = Kept(frames.UP_STUDY, "1.2.3", digest(update))
    assert Kept.decode(kept.encode()) == kept
    # another note is another message: the answer for one is not the other's
    assert digest(StudyUpdate("1.2.3", "stat", "R/O bleed.").encode()) != kept.digest
    for key in ("r-7_a", "r" * 64 + ".printed"):  # a confirmation, a print
        assert Kept.decode(Kept(frames.UP_REPORT_ACK, key, "0" * 32).encode()).key == key
    good = {"leaf": frames.UP_STUDY, "key": "1.2.3", "digest": kept.digest}
    for change in (
        {"leaf": frames.UP_CHUNK},  # nothing the box sends again on an answer
        {"leaf": None},
        {"key": "../../etc"},
        {"key": "1" * 81},
        {"key": 123},
        {"digest": kept.digest.upper()},
        {"digest": kept.digest[:31]},
        {"digest": "<b>" + kept.digest[3:]},
    ):
        with pytest.raises(RemoteProtocolError):
            Kept.decode(json.dumps({**good, **change}).encode())
    for junk in (b"not json", b"[]", b"{" * 4096):
        with pytest.raises(RemoteProtocolError):
            Kept.decode(junk)
