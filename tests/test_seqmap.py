"""A viewer's outgoing sequence numbers (`SeqMap`): contiguous across what it
skips, faithful to what the publisher lost, stable for what comes late."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pylibsrtp
import pytest
from pylibsrtp import Session

from hub.media import _fastsend
from hub.media.counters import COUNTERS
from hub.media.forward import HISTORY, SeqMap

from .conftest import wait_until
from .peers import in_process, publish_and_view, tap_rtp

SSRC = 1234


#: Python's map, and the c path's (`_fastsend.Viewer`), which must behave the same.
MAPS = pytest.mark.parametrize("make", [SeqMap, _fastsend.Viewer], ids=["python", "c"])


def run(seqs: Any, incoming: list[int], skip: set[int] = frozenset()) -> list[int | None]:
    """Feed numbers as a sink would; what went out under which number (None: not sent)."""
    out: list[int | None] = []
    for n in incoming:
        number = seqs.next(n, SSRC)
        if number < 0:
            out.append(seqs.late(n))
        elif n in skip:
            seqs.drop(n)
            out.append(None)
        else:
            out.append(number)
    return out


@MAPS
def test_in_order_packets_go_out_in_order_from_the_random_start(make: Callable[[int], Any]):
    assert run(make(700), [10, 11, 12, 13]) == [710, 711, 712, 713]


@MAPS
def test_skipped_packets_leave_no_gap(make: Callable[[int], Any]):
    out = run(make(0), list(range(100, 110)), skip={102, 103, 104, 107})
    assert out == [100, 101, None, None, None, 102, 103, None, 104, 105]


@MAPS
def test_wraparound_of_incoming_and_outgoing_numbers(make: Callable[[int], Any]):
    incoming = [(65530 + i) & 0xFFFF for i in range(12)]
    out = run(make(65533), incoming, skip={65535, 1})
    sent = [o for o in out if o is not None]
    assert sent == [(65530 + 65533 + i) & 0xFFFF for i in range(len(sent))]
    assert len(sent) == 10
    # A late packet from before the wrap still finds its number.
    seqs = make(65533)
    first = run(seqs, incoming, skip={65535, 1})
    assert run(seqs, [65532, 65535, 2]) == [first[2], None, first[8]]


@MAPS
def test_a_padding_packet_takes_the_next_number_and_late_packets_keep_theirs(make: Callable[[int], Any]):
    """A probe's padding (hub.media.layers.Probe) goes out between the publisher's packets."""
    seqs = make(500)
    assert run(seqs, [10, 11]) == [510, 511]
    assert [seqs.insert(), seqs.insert()] == [512, 513]
    # 13 is lost upstream for now: its number is kept for it, after the padding's.
    assert run(seqs, [12, 14, 11, 13]) == [514, 516, 511, 515]


@MAPS
def test_upstream_loss_stays_a_gap_and_its_retransmission_fills_it(make: Callable[[int], Any]):
    seqs = make(0)
    # 3 and 4 were lost before the hub; 6 is skipped by this viewer.
    assert run(seqs, [1, 2, 5, 6, 7], skip={6}) == [1, 2, 5, None, 6]
    # The publisher's retransmissions (RTX, unwrapped) take the reserved numbers.
    assert run(seqs, [4, 3]) == [4, 3]


@MAPS
def test_retransmission_of_a_sent_packet_keeps_its_number_and_a_skipped_one_is_not_sent(make: Callable[[int], Any]):
    seqs = make(50)
    out = run(seqs, [1, 2, 3, 4, 5], skip={2, 3})
    assert out == [51, None, None, 52, 53]
    assert run(seqs, [4, 2, 3, 1, 5]) == [52, None, None, 51, 53]


@MAPS
def test_reordering_across_a_skip(make: Callable[[int], Any]):
    seqs = make(0)
    # 11 arrives after 12 and 13, and 12 is skipped: 11 keeps the number the
    # gap reserved, 13 follows on without a hole.
    assert run(seqs, [10, 12, 13, 11], skip={12}) == [10, None, 12, 11]


@MAPS
def test_losses_next_to_a_skip_or_a_restart_are_forgotten(make: Callable[[int], Any]):
    seqs = make(0)
    # 2 and 3 are lost, and 4 is skipped: the viewer gets none of them.
    assert run(seqs, [1, 4], skip={4}) == [1, None]
    assert seqs.forget_gap() == -1
    # 5 is lost and 6 starts the viewer's stream again: right after 1, with no gap.
    run(seqs, [6])
    assert seqs.forget_gap() == 2
    # 7's loss lies between two packets the viewer got: its number waits for it.
    assert run(seqs, [8, 2, 3, 5, 7]) == [4, None, None, None, 3]


@MAPS
def test_packets_older_than_the_ring_are_not_sent(make: Callable[[int], Any]):
    seqs = make(0)
    run(seqs, list(range(HISTORY + 10)))
    assert seqs.late(5) is None
    assert seqs.late(10) == 10  # the oldest it remembers


@MAPS
def test_a_restarted_source_continues_the_viewer_sequence(make: Callable[[int], Any]):
    seqs = make(0)
    run(seqs, [100, 101, 102], skip={102})
    # A camera the hub reconnected: new SSRC, new random numbers.
    assert seqs.next(40000, SSRC + 1) == 102
    assert seqs.next(40001, SSRC + 1) == 103
    # The old source's numbers mean nothing any more.
    assert seqs.late(101) is None


# -- real peers ---------------------------------------------------------------


def random_stream(rng: random.Random, length: int) -> list[tuple[int, int]]:
    """(sequence number, SSRC) as a publisher's packets may reach the hub:
    mostly in order from a random start (so it wraps), with losses, bursts
    of reordering, retransmissions of old numbers (some older than the
    ring), long jumps, and a restarted SSRC now and then."""
    ssrc, seq, out = 1, rng.randrange(65536), []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.01:
            ssrc, seq = ssrc + 1, rng.randrange(65536)  # a camera the hub reconnected
        elif roll < 0.08:
            seq += rng.randint(2, 6)  # lost upstream
        elif roll < 0.09:
            seq += rng.randint(HISTORY - 5, 3 * HISTORY)  # a gap wider than the ring
        elif roll < 0.2:
            out.append(((seq - rng.randint(1, 2 * HISTORY)) & 0xFFFF, ssrc))  # late: reordered or RTX
            continue
        else:
            seq += 1
        out.append((seq & 0xFFFF, ssrc))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_the_compiled_map_numbers_random_streams_as_the_python_one(seed: int):
    """The c path's map (`_fastsend.Viewer`) against `SeqMap`, answer by
    answer, on the same streams with the same skips, restarts and probe paddings."""
    rng = random.Random(seed)
    first = rng.randrange(65536)
    python, compiled = SeqMap(first), _fastsend.Viewer(first)
    for step, (seq, ssrc) in enumerate(random_stream(rng, 6000)):
        out = python.next(seq, ssrc)
        assert compiled.next(seq, ssrc) == out, step
        if out < 0:
            assert compiled.late(seq) == python.late(seq), step
        elif rng.random() < 0.1:  # this viewer skips it (behind, or waiting for a keyframe)
            python.drop(seq)
            compiled.drop(seq)
            if rng.random() < 0.5:
                assert compiled.forget_gap() == python.forget_gap(), step
        elif rng.random() < 0.02:  # it starts the viewer's stream again
            assert compiled.forget_gap() == python.forget_gap(), step
        elif rng.random() < 0.02:  # a probe's padding after it
            assert compiled.insert() == python.insert(), step
        probe = rng.randrange(65536) if rng.random() < 0.5 else (seq - rng.randrange(HISTORY + 8)) & 0xFFFF
        assert compiled.late(probe) == python.late(probe), step


class LosingSrtp:
    """A viewer's SRTP session that loses the first RTP packet it is given."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.lost: list[int] = []

    def unprotect(self, data: bytes) -> bytes:
        if not self.lost:
            self.lost.append(int.from_bytes(data[2:4], "big"))  # RTP's header is in the clear
            raise pylibsrtp.Error("lost on the way")
        return self.session.unprotect(data)

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return self.session.unprotect_rtcp(data)


@pytest.mark.usefixtures("forward_path")
async def test_real_viewer_sees_no_gap_after_a_keyframe_wait_and_its_nack_is_answered():
    """A real aiortc publisher and viewer through the hub's Router, in this
    process so that the viewer's socket can be made to report a backlog once.
    On the "c" path the lost packet went out compiled and its retransmission
    through Python: the viewer decrypts it, so both used one SRTP stream."""
    router, video, publisher, viewer = in_process(keyframe_interval=0.1)
    receiver = viewer.getReceivers()[0]
    received: list[int] = []
    tap_rtp(receiver, lambda packet: received.append(packet.sequence_number))
    dropped, retransmitted = COUNTERS.packets_dropped, COUNTERS.retransmissions
    try:
        _, subscription = await publish_and_view(router, publisher, viewer)
        sink = router._consumers[subscription.id].sinks["video"]  # its socket is what the test bends
        await wait_until(lambda: len(received) > 40, timeout=30)
        # One packet is lost on its way to the viewer (before SRTP, as on a
        # real network): the viewer's NACK must bring it back from the hub's history.
        losing = LosingSrtp(receiver.transport._rx_srtp)
        receiver.transport._rx_srtp = losing
        await wait_until(lambda: len(received) > 80, timeout=30)
        assert losing.lost
        skipped = sink.stats.dropped  # packets before its first keyframe, if it joined mid-frame

        # The viewer's socket reports a full buffer until the sink falls
        # behind: it skips packets up to the keyframe it then asks for.
        transport = sink._route()[1].transport
        backlog = transport.get_write_buffer_size
        transport.get_write_buffer_size = lambda: backlog() if sink.stats.keyframe_waits else 1 << 30
        mark = len(received)
        await wait_until(lambda: len(received) > mark + 80, timeout=30)
        # The hub's own sender reports (TrackSink._run_rtcp) reached the viewer, counting what it sent.
        reports = [r for r in (await receiver.getStats()).values() if r.type == "remote-outbound-rtp"]
        assert reports and 0 < reports[0].packetsSent <= sink.stats.packets
    finally:
        await viewer.close()
        await publisher.close()
        await router.close()

    assert sink.stats.keyframe_waits == 1
    assert sink.stats.dropped > skipped
    # Every number from the first to the last arrived: the skipped packets
    # left no gap (the newest few may still be in flight).
    numbers = {(n - received[0]) & 0xFFFF for n in received}
    newest = max(numbers)
    assert set(range(newest - 10)) <= numbers, sorted(set(range(newest)) - numbers)
    assert COUNTERS.packets_dropped - dropped == sink.stats.dropped
    # The lost packet came back, under its own number.
    assert losing.lost[0] in received
    assert COUNTERS.retransmissions > retransmitted
