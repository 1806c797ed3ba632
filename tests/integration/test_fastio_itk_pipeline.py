"""``fastio-itk`` end to end: front door → Redis → real prefork workers → FastIO → ITK."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
from celery import Celery

from fastio import FastIOContext
from ops.volume import read_volume, write_volume
from queues.errors import BrokerUnavailable, ConfigError, InvalidJobRequest, UnknownPipeline
from queues.pipelines import submit, wait
from queues.settings import Settings

from tests.helpers import GEOMETRY, assert_no_memory_held, digest, run_job

JOB_TIMEOUT_S = 60
run_job = partial(run_job, pipeline="fastio-itk", timeout_s=JOB_TIMEOUT_S)


def test_crop_runs_through_three_stages_and_keeps_geometry(deployment, sample, tmp_path):
    path, volume = sample
    before = digest(path.parent)
    status = run_job(deployment, path, tmp_path / "out", params={"crop_start": [2, 3, 4], "crop_size": [10, 12, 5]})
    assert status.state == "done", status.error
    assert status.stage_index == 3 and status.output == str(tmp_path / "out")

    out, geometry = read_volume(tmp_path / "out" / "output.mhd")
    np.testing.assert_array_equal(out, volume[4:9, 3:15, 2:12])
    direction = np.array(GEOMETRY["direction"]).reshape(3, 3)
    expected_origin = np.array(GEOMETRY["origin"]) + direction @ (np.array([2, 3, 4]) * GEOMETRY["spacing"])
    np.testing.assert_allclose(geometry["origin"], expected_origin, atol=1e-4)
    np.testing.assert_allclose(geometry["spacing"], GEOMETRY["spacing"], atol=1e-6)
    np.testing.assert_allclose(geometry["direction"], GEOMETRY["direction"], atol=1e-6)
    assert (tmp_path / "out" / "config.meta").is_file() and (tmp_path / "out" / "config_render.json").is_file()
    assert digest(path.parent) == before
    assert_no_memory_held(deployment)


def test_folder_input_with_default_crop_copies_the_whole_volume(deployment, sample, tmp_path):
    path, volume = sample
    status = run_job(deployment, path.parent, tmp_path / "out")
    assert status.state == "done", status.error
    np.testing.assert_array_equal(read_volume(tmp_path / "out" / "output.mhd")[0], volume)


def test_every_stage_of_a_job_runs_on_the_host_holding_its_memory(deployment, sample, tmp_path):
    path, _ = sample
    app = deployment.app
    job_ids = [submit(app, deployment.settings, "fastio-itk", path, tmp_path / f"o{i}") for i in range(8)]
    hosts_per_job = []
    for job_id in job_ids:
        assert wait(deployment.jobs(), job_id, JOB_TIMEOUT_S).state == "done"
        result = app.AsyncResult(job_id).get(timeout=10)
        hosts_per_job.append({step["host"] for step in result["trace"]})
    assert all(len(hosts) == 1 for hosts in hosts_per_job), hosts_per_job


def test_a_stage_sent_to_the_wrong_host_is_rerouted_to_the_holder(deployment, tmp_path):
    """The test process plays host-a's first stages; the last one is misrouted to host-b."""
    job_id = "reroute-job"
    client = deployment.client()
    ctx = FastIOContext(client, job_id, deployment.settings_for("host-a").fastio_config())
    ctx.publish_array(np.ones((3, 4, 5), np.int16), "fastio_itk_filtered", GEOMETRY)
    payload = {"job": job_id, "pipeline": "fastio-itk", "input": "", "output": str(tmp_path / "out"),
               "config": None, "params": {}, "handles": {"fastio_itk_filtered": "fastio_itk_filtered"},
               "trace": []}
    result = deployment.app.send_task("carina.fastio_itk.write_volume", args=[payload], queue="io.host-b")
    done = result.get(timeout=JOB_TIMEOUT_S)
    assert done["trace"][-1]["host"] == "host-a"
    assert "re-routed to io.host-a" in deployment.log_tail()
    np.testing.assert_array_equal(read_volume(tmp_path / "out" / "output.mhd")[0], np.ones((3, 4, 5)))


def test_an_app_with_a_trusted_key_can_send_a_stage_by_name(deployment, sample, tmp_path):
    from queues.signing import configure

    path, _ = sample
    url = deployment.settings.redis_url
    outsider = Celery("someapp", broker=url, backend=url)
    outsider.conf.update(result_accept_content=["json"])
    configure(outsider, deployment.settings)  # its messages signed with this deployment's key
    payload = {"job": "outsider-job", "pipeline": "fastio-itk", "input": str(path), "output": str(tmp_path / "out"),
               "config": None, "params": {}, "handles": {}, "trace": []}
    result = outsider.send_task("carina.fastio_itk.read_volume", args=[payload], queue="io").get(timeout=30)
    assert result["handles"] == {"fastio_itk": "fastio_itk"}
    # A stage run alone is a whole job: freed when it ends, just after its result is stored.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return assert_no_memory_held(deployment)
        except AssertionError:
            time.sleep(0.1)
    assert_no_memory_held(deployment)


@pytest.mark.parametrize(
    "make_input, params, reason",
    [
        (lambda d: d / "absent.mhd", {}, "does not exist"),
        (lambda d: d, {}, "holds no volume"),
        (lambda d: (d / "notes.mhd").write_text("just text, no header") and d / "notes.mhd", {}, "not a MetaImage header"),
        (lambda d: (d / "scan.dcm").write_bytes(b"\0" * 200) and d / "scan.dcm", {}, "not a volume format"),
        ("truncated", {}, "truncated"),
    ],
    ids=["missing", "empty-folder", "text-as-mhd", "not-an-image", "truncated-raw"],
)
def test_bad_input_fails_the_job_with_the_reason_and_loses_nothing(deployment, sample, tmp_path,
                                                                   make_input, params, reason):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    if make_input == "truncated":
        path = write_volume(np.zeros((4, 4, 4), np.int16), GEOMETRY, inbox / "t.mhd")
        (inbox / "t.raw").write_bytes(b"\0" * 10)
    else:
        path = make_input(inbox)
    before = digest(path.parent)
    status = run_job(deployment, path, tmp_path / "out", params=params)
    assert status.state == "failed"
    assert reason in status.error
    assert digest(path.parent) == before
    assert_no_memory_held(deployment)


@pytest.mark.parametrize("params, reason", [
    ({"crop_start": [16, 0, 0]}, "CROP_START_X=16 is outside the image (size 16 along X)"),
    ({"crop_size": [0, -1, -1]}, "CROP_SIZE_X=0"),
    ({"crop_start": [10, 0, 0], "crop_size": [10, -1, -1]}, "past the image's edge"),
], ids=["crop-outside", "crop-size-0", "crop-past-edge"])
@pytest.mark.parametrize("given", ["file", "folder"])
def test_a_crop_outside_the_volume_is_refused_at_submit_naming_the_file(deployment, sample, tmp_path, params,
                                                                        reason, given):
    path = sample[0]
    before = deployment.jobs().recent(1)
    with pytest.raises(InvalidJobRequest, match=f"^{re.escape(path.name)}: .*{re.escape(reason)}"):
        submit(deployment.app, deployment.settings, "fastio-itk", path if given == "file" else path.parent,
               tmp_path / "out", params=params)
    assert deployment.jobs().recent(1) == before and not (tmp_path / "out").exists()


def test_cli_submit_wait_and_status(deployment, sample, tmp_path):
    path, _ = sample
    cli = [sys.executable, "-m", "carina"]
    ok = subprocess.run(cli + ["submit", "fastio-itk", "-i", str(path), "-o", str(tmp_path / "out"),
                               "--crop-start", "0", "0", "0", "--crop-size", "4", "4", "4", "--wait"],
                        env=deployment.env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    job_id = ok.stdout.strip()
    assert "done" in ok.stderr and "warning" not in ok.stderr  # every queue kind has a live worker
    status = subprocess.run(cli + ["status", job_id], env=deployment.env, capture_output=True, text=True)
    assert "state:    done" in status.stdout

    bad = subprocess.run(cli + ["submit", "fastio-itk", "-i", str(path), "-o", str(tmp_path / "o2"),
                                "--crop-start", "99", "0", "0", "--wait"],
                         env=deployment.env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "CROP_START_X=99 is outside" in bad.stderr  # refused at submit

    nonint = subprocess.run(cli + ["submit", "fastio-itk", "-i", str(path), "-o", "x", "--crop-size", "a", "1", "1"],
                            env=deployment.env, capture_output=True, text=True)
    assert nonint.returncode == 2 and "invalid int value: 'a'" in nonint.stderr

    unknown = subprocess.run(cli + ["submit", "no-such-pipe", "-i", str(path), "-o", "x"],
                             env=deployment.env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown pipeline 'no-such-pipe'" in unknown.stderr


def test_python_api_for_apps(deployment, sample, tmp_path):
    code = ("import queues; "
            f"j = queues.submit('fastio-itk', {str(sample[0])!r}, {str(tmp_path / 'out')!r}, crop_size=[5, 5, 5]); "
            "queues.wait(j, 60); s = queues.status(j); print(s.state, s.output)")
    out = subprocess.run([sys.executable, "-c", code], env=deployment.env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["done", str(tmp_path / "out")], out.stderr
    assert read_volume(tmp_path / "out" / "output.mhd")[0].shape == (5, 5, 5)


def test_refusals_before_anything_is_queued(deployment, sample, tmp_path):
    path, _ = sample
    with pytest.raises(UnknownPipeline, match="unknown pipeline .nope.; known pipelines: .*fastio-itk"):
        submit(deployment.app, deployment.settings, "nope", path, tmp_path)
    with pytest.raises(InvalidJobRequest, match="crop_start=.*three integers"):
        submit(deployment.app, deployment.settings, "fastio-itk", path, tmp_path, params={"crop_start": [1.5, 0, 0]})
    with pytest.raises(InvalidJobRequest, match="does not take"):
        submit(deployment.app, deployment.settings, "fastio-itk", path, tmp_path, params={"sigma": 1})
    with pytest.raises(ConfigError, match="CROP_SIZE_Y='ten' is not an integer"):
        Settings.from_env({"CROP_SIZE_Y": "ten"})


def test_redis_down_at_submit_is_a_clear_error(sample, tmp_path):
    from queues.app import create_app
    from carina.local import free_port

    settings = Settings.from_env({"CARINA_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        submit(create_app(settings), settings, "fastio-itk", sample[0], tmp_path / "out")
    cli = subprocess.run([sys.executable, "-m", "carina", "submit", "fastio-itk", "-i", str(sample[0]), "-o", "x"],
                         env={"CARINA_REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "cannot reach Redis" in cli.stderr


@pytest.mark.parametrize("dtype, written_as", [(np.int8, np.int16), (np.int64, np.float64), (np.uint64, np.float64)])
def test_pixel_types_itk_cannot_read_run_through_in_the_type_documented(deployment, tmp_path, dtype, written_as):
    from tests.helpers import write_nifti

    volume = (np.arange(8 * 10 * 12) % 120).astype(dtype).reshape(8, 10, 12)
    path = write_nifti(tmp_path / "in" / "ct.nii", volume)
    status = run_job(deployment, path, tmp_path / "out", params={"crop_start": [1, 2, 3], "crop_size": [4, 5, 2]})
    assert status.state == "done", status.error
    written, _ = read_volume(tmp_path / "out" / "output.mhd")
    assert written.dtype == written_as
    np.testing.assert_array_equal(written, volume[3:5, 2:7, 1:5].astype(written_as))


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_integer_types_itk_does_not_wrap_for_cropping_run_through_in_their_own_type(deployment, tmp_path, dtype):
    volume = (np.arange(8 * 10 * 12) * 40_000).astype(dtype).reshape(8, 10, 12)
    path = write_volume(volume, GEOMETRY, tmp_path / "in" / "ct.nii.gz")
    status = run_job(deployment, path, tmp_path / "out", params={"crop_start": [1, 2, 3], "crop_size": [4, 5, 2]})
    assert status.state == "done", status.error
    written, _ = read_volume(tmp_path / "out" / "output.mhd")
    assert written.dtype == dtype
    np.testing.assert_array_equal(written, volume[3:5, 2:7, 1:5])
