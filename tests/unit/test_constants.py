"""Constants the front door must know without importing ops/ (no numpy there): each copy is
held to its source, so the two sides of the boundary cannot drift."""

from __future__ import annotations

from ops import pyramid, tissue, volume, wsi
from queues import watch
from queues.catalogue import get_pipeline
from queues.settings import Settings

from fastio.config import POSIX_SHM_DIR


def test_the_watch_folder_takes_every_volume_format_the_reader_reads():
    assert set(watch.VOLUME_SUFFIXES) == set(volume.READABLE_SUFFIXES)


def test_the_watch_folder_takes_every_slide_format_the_reader_finds():
    assert set(watch.SLIDE_SUFFIXES) == set(wsi.SLIDE_SUFFIXES)


def test_submit_checks_tile_sizes_by_the_tiler_s_rule():
    [tile] = [p for p in get_pipeline(Settings(), "nuclei-seg").parameters if p.name == "tile_size"]
    assert (tile.multiple_of, tile.minimum, tile.maximum) == (pyramid.TILE_MULTIPLE, pyramid.TILE_MULTIPLE,
                                                              tissue.MAX_TILE_SIZE)
    assert tissue.TILE_SIZE_MULTIPLE is pyramid.TILE_MULTIPLE


def test_shared_memory_lives_where_posix_names_do_by_default():
    assert Settings().shm_dir == POSIX_SHM_DIR


def test_a_detached_nrrd_header_and_its_data_file_are_one_drop(tmp_path):
    header = tmp_path / "ct.nhdr"
    header.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: ct-pixels.bin\n")
    assert {p.name for p in watch.companions(header)} >= {"ct-pixels.bin", "ct.raw", "ct.raw.gz"}
