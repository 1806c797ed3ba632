"""Bounded work: a job that asks for more than its pipeline's limit fails before the work
starts, with the numbers; overlap is refused at submit past what MONAI's users use."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from carina.local import start_worker, stop_process_group
from queues.app import create_app
from queues.errors import InvalidJobRequest
from queues.jobs import JobStore
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import remove_segments


@pytest.fixture(scope="module")
def strict_worker(redis_server, tmp_path_factory):
    """One io,cpu worker whose limits are tiny."""
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/6"),
           "CARINA_NAMESPACE": f"bounds{uuid.uuid4().hex[:6]}", "CARINA_SHM_DIR": "/dev/shm",
           "CARINA_HOST_ID": "host-s", "CARINA_MAX_WINDOWS": "10", "CARINA_MAX_TILES": "5"}
    settings = Settings.from_env(env)
    worker = start_worker(env, tmp_path_factory.mktemp("bounds") / "worker.log", "io,cpu", concurrency=1,
                          host_id="host-s")
    try:
        yield settings
    finally:
        stop_process_group(worker)
        redis.Redis.from_url(settings.redis_url).flushdb()
        remove_segments(settings)


def run(settings: Settings, pipeline: str, input, output, **params):
    jobs = JobStore(redis.Redis.from_url(settings.redis_url), settings.namespace, settings.job_ttl_s)
    return wait(jobs, submit(create_app(settings), settings, pipeline, input, output, params=params), 120)


def test_a_sliding_window_job_past_its_window_limit_fails_before_inference(strict_worker, tmp_path):
    from ops.samples import spleen_phantom
    from ops.volume import write_volume

    volume, _ = spleen_phantom((64, 200, 200), (1.4, 1.4, 2.5), seed=900_010)
    path = write_volume(volume, {"spacing": [1.4, 1.4, 2.5], "origin": [0.0] * 3, "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
                        tmp_path / "ct.nii.gz")
    status = run(strict_worker, "spleen-seg", path, tmp_path / "out", overlap=0.9)
    assert status.state == "failed" and status.stage == "carina.segmentation.read_volume"
    assert "WorkTooLarge: the job asks for" in status.error and "more than CARINA_MAX_WINDOWS=10" in status.error
    assert "144 windows of 96³ over the 80×187×187 voxels of ct resampled (overlap 0.9)" in status.error
    assert not (tmp_path / "out").exists()


def test_a_slide_job_past_its_tile_limit_fails_before_inference(strict_worker, tmp_path):
    from ops.samples import he_slide

    slide = he_slide(tmp_path / "big.tif", (2000, 3000), seed=31)
    status = run(strict_worker, "nuclei-seg", slide, tmp_path / "out")
    assert status.state == "failed" and status.stage == "carina.nuclei.find_tissue"
    assert "tissue tiles of 256 px in big.tif, more than CARINA_MAX_TILES=5" in status.error


def test_an_overlap_past_nine_tenths_is_refused_at_submit(strict_worker, tmp_path):
    with pytest.raises(InvalidJobRequest, match=r"overlap=0.99: a fraction from 0 to 0.9"):
        submit(create_app(strict_worker), strict_worker, "spleen-seg", tmp_path / "ct.nii.gz", tmp_path,
               params={"overlap": 0.99})


def test_a_stage_past_its_time_limit_fails_its_job_with_the_limit_named(redis_server, project_triton, tmp_path):
    from ops.samples import he_slide

    # A database of its own: the strict worker above reads the same queue names on /6.
    env = {**os.environ, "CARINA_REDIS_URL": redis_server.url.replace("/0", "/8"),
           "CARINA_NAMESPACE": f"slow{uuid.uuid4().hex[:6]}", "CARINA_SHM_DIR": "/dev/shm", "CARINA_HOST_ID": "host-t",
           "CARINA_TRITON_URL": project_triton.url, "CARINA_STAGE_SOFT_TIME_LIMIT_S": "1",
           "CARINA_STAGE_TIME_LIMIT_S": "20"}
    settings = Settings.from_env(env)
    slide = he_slide(tmp_path / "slide.tif", (6000, 8000), seed=32)  # its inference takes several seconds
    worker = start_worker(env, tmp_path / "worker.log", "io,cpu,gpu", concurrency=1, host_id="host-t")
    try:
        status = run(settings, "nuclei-seg", slide, tmp_path / "out", num_workers=1)
    finally:
        stop_process_group(worker)
        remove_segments(settings)
    assert status.state == "failed", status
    assert status.error == (f"StageTimeLimit: {status.stage} ran past CARINA_STAGE_SOFT_TIME_LIMIT_S=1 s "
                            "and was interrupted")
    assert not (tmp_path / "out" / "image.tif").exists()
