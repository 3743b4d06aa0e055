"""A viewer's outgoing sequence numbers (`SeqMap`): contiguous across what it
skips, faithful to what the publisher lost, stable for what comes late."""

from __future__ import annotations

from hub.media.forward import HISTORY, SeqMap

SSRC = 1234


def run(seqs: SeqMap, incoming: list[int], skip: set[int] = frozenset()) -> list[int | None]:
    """Feed numbers as a sink would; what went out under which number (None: not sent)."""
    out: list[int | None] = []
    for n in incoming:
        if seqs.fresh(n, SSRC):
            if n in skip:
                seqs.drop(n)
                out.append(None)
            else:
                out.append(seqs.send(n))
        else:
            out.append(seqs.late(n))
    return out


def test_in_order_packets_go_out_in_order_from_the_random_start():
    assert run(SeqMap(700), [10, 11, 12, 13]) == [710, 711, 712, 713]


def test_skipped_packets_leave_no_gap():
    out = run(SeqMap(0), list(range(100, 110)), skip={102, 103, 104, 107})
    assert out == [100, 101, None, None, None, 102, 103, None, 104, 105]


def test_wraparound_of_incoming_and_outgoing_numbers():
    incoming = [(65530 + i) & 0xFFFF for i in range(12)]
    out = run(SeqMap(65533), incoming, skip={65535, 1})
    sent = [o for o in out if o is not None]
    assert sent == [(65530 + 65533 + i) & 0xFFFF for i in range(len(sent))]
    assert len(sent) == 10
    # A late packet from before the wrap still finds its number.
    seqs = SeqMap(65533)
    first = run(seqs, incoming, skip={65535, 1})
    assert run(seqs, [65532, 65535, 2]) == [first[2], None, first[8]]


def test_upstream_loss_stays_a_gap_and_its_retransmission_fills_it():
    seqs = SeqMap(0)
    # 3 and 4 were lost before the hub; 6 is skipped by this viewer.
    assert run(seqs, [1, 2, 5, 6, 7], skip={6}) == [1, 2, 5, None, 6]
    # The publisher's retransmissions (RTX, unwrapped) take the reserved numbers.
    assert run(seqs, [4, 3]) == [4, 3]


def test_retransmission_of_a_sent_packet_keeps_its_number_and_a_skipped_one_is_not_sent():
    seqs = SeqMap(50)
    out = run(seqs, [1, 2, 3, 4, 5], skip={2, 3})
    assert out == [51, None, None, 52, 53]
    assert run(seqs, [4, 2, 3, 1, 5]) == [52, None, None, 51, 53]


def test_reordering_across_a_skip():
    seqs = SeqMap(0)
    # 11 arrives after 12 and 13, and 12 is skipped: 11 keeps the number the
    # gap reserved, 13 follows on without a hole.
    assert run(seqs, [10, 12, 13, 11], skip={12}) == [10, None, 12, 11]


def test_packets_older_than_the_ring_are_not_sent():
    seqs = SeqMap(0)
    run(seqs, list(range(HISTORY + 10)))
    assert seqs.late(5) is None
    assert seqs.late(10) == 10  # the oldest it remembers


def test_a_restarted_source_continues_the_viewer_sequence():
    seqs = SeqMap(0)
    run(seqs, [100, 101, 102], skip={102})
    # A camera the hub reconnected: new SSRC, new random numbers.
    assert seqs.fresh(40000, SSRC + 1)
    assert seqs.send(40000) == 102
    assert seqs.fresh(40001, SSRC + 1) and seqs.send(40001) == 103
    # The old source's numbers mean nothing any more.
    assert seqs.late(101) is None
