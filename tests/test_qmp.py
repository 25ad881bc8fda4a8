"""The QMP client: replies, events kept aside, and a monitor that says something odd."""

from __future__ import annotations

import json
import socket

import pytest

from pvfront.qemu import Qmp, QmpError


def _client_and_monitor() -> tuple[Qmp, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    return Qmp(ours), theirs


def test_execute_returns_the_reply_and_keeps_events_that_arrive_before_it():
    qmp, monitor = _client_and_monitor()
    event = {"event": "DEVICE_DELETED", "data": {"device": "disk1"}}
    monitor.sendall(json.dumps(event).encode() + b"\n" + b'{"return": {"status": "running"}}\n')
    assert qmp.execute("query-status") == {"status": "running"}
    assert json.loads(monitor.recv(4096)) == {"execute": "query-status"}
    assert qmp.events == [event]


def test_an_error_reply_names_the_command_and_qemus_reason():
    qmp, monitor = _client_and_monitor()
    monitor.sendall(b'{"error": {"class": "GenericError", "desc": "no such device"}}\n')
    with pytest.raises(QmpError, match=r"^QMP device_del: GenericError: no such device$"):
        qmp.execute("device_del", id="nonesuch")


def test_a_line_that_is_not_a_json_object_is_a_qmp_error():
    qmp, monitor = _client_and_monitor()
    monitor.sendall(b'["not", "an", "object"]\n')
    with pytest.raises(QmpError, match="other than a JSON object"):
        qmp.execute("query-status")


def test_a_closed_monitor_is_a_qmp_error():
    qmp, monitor = _client_and_monitor()
    monitor.close()
    with pytest.raises(QmpError, match="connection closed"):
        qmp.execute("query-status")
