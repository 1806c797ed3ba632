"""queues.dicom_scp's socket helpers: a peer that has gone is one exception, whichever way it shows."""

from __future__ import annotations

import socket

import pytest

from queues.dicom_scp import PeerGone, recv_exact, send_all


def test_sending_to_a_peer_that_has_gone_raises_peer_gone():
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours, pytest.raises(PeerGone, match="the connection failed"):
        send_all(ours, b"\x04" * 2**20)


def test_a_peer_closing_before_the_bytes_arrive_raises_peer_gone():
    ours, theirs = socket.socketpair()
    theirs.sendall(b"\x01\x02")
    theirs.close()
    with ours, pytest.raises(PeerGone, match="closed the connection"):
        recv_exact(ours, 6)
