"""A full disk: every pipeline fails with the reason and leaves nothing partial behind."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import assert_no_memory_held, run_job

DISK_BYTES = 512 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (mounting needs root, as CI has; elsewhere the test skips)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def ct_volume(folder):
    from ops.samples import CT_GEOMETRY, ct_phantom
    from ops.volume import write_volume

    return write_volume(ct_phantom((48, 160, 160)), CT_GEOMETRY, folder / "ct.mhd")  # 2.4 MB of pixels


def ct_series(folder):
    from ops.samples import ct_phantom, ct_series

    ct_series(folder / "series", ct_phantom((24, 160, 160)))
    return folder / "series"


def slide(folder):
    from ops.samples import he_slide

    return he_slide(folder / "slide.tif", (3000, 4000), seed=41)


@pytest.mark.parametrize("pipeline, make_input", [("fastio-itk", ct_volume), ("3dblur", ct_series),
                                                  ("spleen-seg", ct_volume), ("nuclei-seg", slide)])
def test_a_full_disk_fails_the_job_with_the_reason_and_leaves_nothing(deployment, small_disk, tmp_path, pipeline,
                                                                      make_input):
    source = make_input(tmp_path)
    status = run_job(deployment, source, small_disk / "out", pipeline=pipeline)
    assert status.state == "failed", status
    assert "No space left on device" in status.error
    assert list(small_disk.iterdir()) == []  # neither a partial result nor its staging folder
    assert_no_memory_held(deployment)
