"""queues.broker against kombu's real Redis transport: what it assumes of kombu's keys holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from queues.app import create_app
from queues.broker import queue_depths, restore_unacked, unacked_delivery_tag
from queues.settings import PRIORITIES, Settings



@pytest.fixture
def app(redis_server, redis_client):
    return create_app(Settings(redis_url=redis_server.url, namespace="broker-contract"))


@pytest.fixture
def queue():
    """A queue name of this test's own: kombu declares a queue once per process, so a name
    reused after the database was emptied would have no binding."""
    return f"contract-{uuid.uuid4().hex[:8]}"


def test_queue_depths_count_every_priority(app, redis_client, queue):
    for level in PRIORITIES.values():
        for _ in range(2):
            app.send_task("carina.contract.noop", queue=queue, priority=level)
    other = f"{queue}-other"
    app.send_task("carina.contract.noop", queue=other)
    depths = queue_depths(redis_client, [queue, other])
    assert depths[queue] == 2 * len(PRIORITIES)
    assert depths[other] == 1


def test_a_message_left_unacknowledged_by_a_killed_consumer_is_found_and_restored(app, redis_server, redis_client,
                                                                                   queue):
    first = app.send_task("carina.contract.noop", queue=queue, priority=PRIORITIES["normal"])
    second = app.send_task("carina.contract.noop", queue=queue, priority=PRIORITIES["normal"])
    # A consumer takes the first message without acknowledging it and dies at once (no
    # clean close, which would restore the message itself), as a worker killed mid-stage.
    consumer = textwrap.dedent(f"""
        import os
        from queues.app import create_app
        from queues.settings import Settings
        app = create_app(Settings(redis_url={redis_server.url!r}, namespace="broker-contract"))
        with app.connection_for_read() as connection:
            message = connection.default_channel.basic_get({queue!r}, no_ack=False)
            print(message.headers["id"], flush=True)
            os._exit(0)
    """)
    taken = subprocess.run([sys.executable, "-c", consumer], capture_output=True, text=True, check=True, timeout=60)
    assert taken.stdout.strip() == first.id
    assert queue_depths(redis_client, [queue])[queue] == 1

    tag = unacked_delivery_tag(redis_client, first.id)
    assert tag is not None
    assert unacked_delivery_tag(redis_client, second.id) is None
    restore_unacked(app, tag)
    assert unacked_delivery_tag(redis_client, first.id) is None
    assert queue_depths(redis_client, [queue])[queue] == 2
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        front = channel.basic_get(queue, no_ack=True)
    assert front.headers["id"] == first.id  # back at the front, ahead of the one that waited
