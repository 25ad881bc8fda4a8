"""The kernel console's socket is emptied at once, whether or not the harness reads it."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

from pvfront.qemu import SocketDrain


def send_one_byte_at_a_time(sock: socket.socket, data: bytes, deadline: float) -> int:
    """Send as QEMU's UART does; returns how many bytes went before the deadline."""
    sock.setblocking(False)
    sent = 0
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(data[sent : sent + 1])
        except BlockingIOError:
            time.sleep(0.001)
    return sent


def read_all(fd: int) -> bytes:
    chunks = []
    while select.select([fd], [], [], 5)[0] and (chunk := os.read(fd, 65536)):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_burst_far_beyond_the_socket_buffer_goes_through_while_no_one_reads():
    qemu_end, harness_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    drain = SocketDrain(harness_end)
    report = bytes(range(256)) * 256  # 64 KiB in single-byte sends; the socket holds ~280
    try:
        sent = send_one_byte_at_a_time(qemu_end, report, time.monotonic() + 30)
        assert sent == len(report)
        qemu_end.close()  # QEMU exits: the pipe reaches end of file after the last byte
        drain.finish()
        assert read_all(drain.fd) == report
    finally:
        drain.close()


def test_close_returns_while_the_pipe_is_full_and_the_writer_still_sends():
    qemu_end, harness_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    drain = SocketDrain(harness_end)
    writer = threading.Thread(target=lambda: _send_until_refused(qemu_end), daemon=True)
    writer.start()
    time.sleep(0.5)  # long enough for the pipe to fill and the copy to block
    drain.close()
    writer.join(10)
    assert not writer.is_alive()
    qemu_end.close()


def _send_until_refused(sock: socket.socket) -> None:
    try:
        while True:
            sock.sendall(b"x" * 65536)
    except OSError:
        pass
