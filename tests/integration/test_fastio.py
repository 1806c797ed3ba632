"""The FastIO data plane against a real Redis and real tmpfs segments."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import stat
import time

import numpy as np
import pytest
import redis

from fastio import (
    AllocationNotFound,
    AllocationStateError,
    AlreadyPublished,
    FastIOContext,
    NotLocal,
    SegmentError,
    drain_pool,
    sweep,
)
from fastio.registry import Registry
from fastio.segments import size_class


def segment_files(config):
    return sorted(p.name for p in config.shm_dir.iterdir() if p.name.startswith(config.segment_prefix))


def test_create_publish_get_roundtrip_is_zero_copy(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    alloc = ctx.create(2 * 3 * 4 * 2)
    alloc.set_type_and_dimensions(np.int16, (2, 3, 4))
    alloc.array[:] = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    alloc.metadata = {"spacing": [1.0, 0.5, 0.5], "origin": [0, 0, 0]}
    assert alloc.publish("vol") == "vol"

    got = ctx.get("vol")
    assert got.array.dtype == np.int16 and got.array.shape == (2, 3, 4)
    np.testing.assert_array_equal(got.array, np.arange(24).reshape(2, 3, 4))
    assert got.metadata == {"spacing": [1.0, 0.5, 0.5], "origin": [0, 0, 0]}
    got.array[0, 0, 0] = 99  # same memory: the writer sees it
    assert alloc.array[0, 0, 0] == 99
    got.metadata["spacing"] = [9, 9, 9]  # a copy: the publication does not change
    assert ctx.get("vol").metadata["spacing"] == [1.0, 0.5, 0.5]


def test_publish_array_copies_and_keeps_metadata(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    source = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32)
    ctx.publish_array(source, "a", metadata={"direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]})
    source[:] = 0
    got = ctx.get("a")
    assert got.array.sum() > 0 and got.metadata["direction"][0] == 1


def test_names_are_write_once(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    ctx.publish_array(np.zeros(3), "x")
    with pytest.raises(AlreadyPublished):
        ctx.publish_array(np.ones(3), "x")
    np.testing.assert_array_equal(ctx.get("x").array, np.zeros(3))


def test_unknown_name_raises_typed_error_naming_job_and_name(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job-7", fastio_config)
    with pytest.raises(AllocationNotFound) as info:
        ctx.get("missing")
    assert isinstance(info.value, KeyError)
    assert "job-7" in str(info.value) and "missing" in str(info.value)


def test_allocation_misuse_is_refused(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    alloc = ctx.create(16)
    with pytest.raises(AllocationStateError):
        alloc.array
    with pytest.raises(AllocationStateError):
        alloc.set_type_and_dimensions(np.float64, (3,))
    with pytest.raises(AllocationStateError):
        alloc.publish("untyped")
    with pytest.raises(AllocationStateError):
        ctx.create(-1)
    alloc.set_type_and_dimensions(np.float64, (2,))
    alloc.release()
    with pytest.raises(AllocationStateError):
        alloc.array


def test_segments_are_private_and_prefixed(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    alloc = ctx.create(1000)
    path = fastio_config.shm_dir / alloc.segment
    assert alloc.segment.startswith(f"{fastio_config.namespace}-fastio-host-a-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _attach_and_exit(url, config, job_id):
    client = redis.Redis.from_url(url)
    view = FastIOContext(client, job_id, config).get("vol").array
    assert view.sum() == 10


def test_segment_survives_an_attaching_child_that_exits(redis_server, redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    ctx.publish_array(np.arange(5, dtype=np.int64), "vol")
    for method in ("fork", "spawn"):
        child = mp.get_context(method).Process(target=_attach_and_exit,
                                              args=(redis_server.url, fastio_config, "job1"))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    assert len(segment_files(fastio_config)) == 1
    np.testing.assert_array_equal(ctx.get("vol").array, np.arange(5))


def test_get_on_another_host_raises_not_local(redis_client, fastio_config):
    FastIOContext(redis_client, "job1", fastio_config).publish_array(np.zeros(4), "vol")
    elsewhere = dataclasses.replace(fastio_config, host_id="host-b")
    with pytest.raises(NotLocal) as info:
        FastIOContext(redis_client, "job1", elsewhere).get("vol")
    assert info.value.holder == "host-a" and info.value.here == "host-b"


def test_free_all_returns_segments_to_the_pool_and_reuses_them(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    ctx.publish_array(np.zeros(1_000_000, np.uint8), "a")
    first = segment_files(fastio_config)
    assert ctx.free_all() == 1
    with pytest.raises(AllocationNotFound):
        ctx.get("a")
    assert not redis_client.keys(f"{fastio_config.namespace}:fastio:job:*")

    other = FastIOContext(redis_client, "job2", fastio_config)
    other.publish_array(np.ones(900_000, np.uint8), "b")
    assert segment_files(fastio_config) == first  # the pooled segment was reused
    assert other.get("b").array.sum() == 900_000


def test_draining_the_pool_unlinks_free_segments_and_spares_one_a_job_claimed_after_the_listing(
        redis_client, fastio_config, monkeypatch):
    FastIOContext(redis_client, "job1", fastio_config).publish_array(np.zeros(1_000_000, np.uint8), "a")
    FastIOContext(redis_client, "job1", fastio_config).free_all()
    listed = Registry(redis_client, fastio_config).pooled()  # what a drain lists first
    assert len(listed) == 1 and segment_files(fastio_config) == sorted(listed)

    job2 = FastIOContext(redis_client, "job2", fastio_config)
    job2.publish_array(np.ones(900_000, np.uint8), "b")  # claims the pooled segment
    monkeypatch.setattr(Registry, "pooled", lambda self: listed)  # the drain runs on its stale listing
    assert drain_pool(redis_client, fastio_config) == 0
    assert segment_files(fastio_config) == sorted(listed)
    assert FastIOContext(redis_client, "job2", fastio_config).get("b").array.sum() == 900_000

    monkeypatch.undo()
    job2.free_all()
    assert drain_pool(redis_client, fastio_config) == 1
    assert segment_files(fastio_config) == [] and Registry(redis_client, fastio_config).pooled() == {}


def test_pool_is_bounded(redis_client, fastio_config):
    config = dataclasses.replace(fastio_config, pool_limit_bytes=size_class(1_000_000))
    ctx = FastIOContext(redis_client, "job1", config)
    ctx.publish_array(np.zeros(1_000_000, np.uint8), "a")
    ctx.publish_array(np.zeros(1_000_000, np.uint8), "b")
    ctx.free_all()
    assert len(segment_files(config)) == 1


def test_free_one_allocation_drops_its_names(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    ctx.publish_array(np.zeros(10), "keep")
    alloc = ctx.get(ctx.publish_array(np.zeros(10), "drop"))
    alloc.free()
    with pytest.raises(AllocationNotFound):
        ctx.get("drop")
    assert ctx.get("keep").array.shape == (10,)


def test_janitor_reclaims_expired_jobs_and_orphans(redis_client, fastio_config):
    short = dataclasses.replace(fastio_config, lease_s=0.2, orphan_grace_s=0.0)
    FastIOContext(redis_client, "dead-job", short).publish_array(np.zeros(100), "v")
    orphan = fastio_config.shm_dir / f"{short.segment_prefix}deadbeef"
    orphan.write_bytes(b"x" * 10)
    stranger = fastio_config.shm_dir / "someone-else"
    stranger.write_bytes(b"y")
    alive = FastIOContext(redis_client, "live-job", fastio_config)
    alive.publish_array(np.ones(100), "v")

    time.sleep(0.3)
    report = sweep(redis_client, short)
    assert report.expired_jobs == ("dead-job",) and report.orphans == 1
    assert stranger.exists()
    with pytest.raises(AllocationNotFound):
        FastIOContext(redis_client, "dead-job", short).get("v")
    assert alive.get("v").array.sum() == 100  # a job with a live lease is untouched


def test_janitor_reclaims_segments_of_a_job_freed_from_another_host(redis_client, fastio_config):
    FastIOContext(redis_client, "job1", fastio_config).publish_array(np.zeros(10), "v")
    elsewhere = dataclasses.replace(fastio_config, host_id="host-b")
    FastIOContext(redis_client, "job1", elsewhere).free_all()
    assert len(segment_files(fastio_config)) == 1  # host-b cannot unlink host-a's memory
    report = sweep(redis_client, fastio_config)
    assert report.ownerless == 1 and segment_files(fastio_config) == []
    # counted for the metrics, per host, across sweeps
    assert Registry(redis_client, fastio_config).reclaimed() == {fastio_config.host_id: 1}


def test_janitor_does_not_touch_young_unregistered_segments(redis_client, fastio_config):
    young = fastio_config.shm_dir / f"{fastio_config.segment_prefix}beingcreated"
    young.write_bytes(b"x")
    assert sweep(redis_client, fastio_config).orphans == 0
    assert young.exists()


def test_a_reclaimed_segment_is_reported_not_read(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    name = ctx.publish_array(np.zeros(10), "v")
    ctx.store.unlink(ctx.registry.lookup("job1", name).segment)  # reclaimed behind the job's back
    with pytest.raises(SegmentError, match="no longer exists"):
        ctx.get(name)


def _hold_until_told(url, config, job_id, ready, done):
    view = FastIOContext(redis.Redis.from_url(url), job_id, config).get("vol").array
    ready.set()
    done.wait(60)
    assert view.sum() == 10


def test_janitor_leaves_memory_a_live_process_holds_and_takes_it_once_let_go(redis_server, redis_client,
                                                                             fastio_config):
    # The registry is lost (a Redis that kept no data) while another process reads a volume.
    config = dataclasses.replace(fastio_config, orphan_grace_s=0.0)
    FastIOContext(redis_client, "job1", config).publish_array(np.arange(5, dtype=np.int64), "vol")
    spawn = mp.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    reader = spawn.Process(target=_hold_until_told, args=(redis_server.url, config, "job1", ready, done))
    reader.start()
    assert ready.wait(60)
    redis_client.flushdb()

    report = sweep(redis_client, config)
    assert (report.orphans, report.held) == (0, 1) and len(segment_files(config)) == 1
    done.set()
    reader.join(60)
    assert reader.exitcode == 0  # it read its volume to the end
    assert sweep(redis_client, config).orphans == 1 and segment_files(config) == []


def test_a_held_array_keeps_its_segment_after_its_allocation_is_dropped(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    view = ctx.get(ctx.publish_array(np.ones(10), "vol")).array[2:5]  # the allocation object is gone
    ctx.registry.forget_job("job1")  # the lease is gone: its segments look ownerless
    assert sweep(redis_client, fastio_config).held == 1
    del view
    assert sweep(redis_client, fastio_config).ownerless == 1 and segment_files(fastio_config) == []


def test_memory_freed_while_another_process_holds_it_is_neither_pooled_nor_unlinked(redis_server, redis_client,
                                                                                 fastio_config):
    # A cancelled job's memory, freed while one of its stages still runs on it elsewhere.
    config = dataclasses.replace(fastio_config, orphan_grace_s=0.0)
    ctx = FastIOContext(redis_client, "job1", config)
    ctx.publish_array(np.arange(5, dtype=np.int64), "vol")
    spawn = mp.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    running = spawn.Process(target=_hold_until_told, args=(redis_server.url, config, "job1", ready, done))
    running.start()
    assert ready.wait(60)
    [held] = segment_files(config)
    ctx.free_all()
    registry = Registry(redis_client, config)
    assert registry.pooled() == {} and registry.live() == {} and segment_files(config) == [held]
    fresh = FastIOContext(redis_client, "job2", config).create(40)
    assert fresh.segment != held  # the next job never shares memory with that stage
    done.set()
    running.join(60)
    assert running.exitcode == 0  # it read its volume to the end
    fresh.free()
    assert sweep(redis_client, config).orphans == 1


def test_freeing_ends_this_processs_own_holds(redis_client, fastio_config):
    # What a failed stage's frames still view, when its job ends in the same process.
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    leftover = ctx.get(ctx.publish_array(np.ones(10), "vol")).array
    ctx.free_all()
    assert len(Registry(redis_client, fastio_config).pooled()) == 1  # back in the pool at once
    assert leftover.sum() == 10  # and still mapped for whoever kept a view


def test_free_unpublished_spares_an_attempt_still_running(redis_client, fastio_config):
    ctx = FastIOContext(redis_client, "job1", fastio_config)
    staging = ctx.create(1000)  # an attempt thought dead, still writing
    assert ctx.free_unpublished() == 0
    staging.release()  # now it is gone
    assert ctx.free_unpublished() == 1
