import os
import warnings

import numpy as np
import psutil
import pytest
import tifffile

from napari_pgsr.io import read_image, read_movie, source_files, write_movie


@pytest.mark.parametrize("name", ["movie.tif", "movie.ome.tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_write_read_round_trip_keeps_pixels_and_pixel_size(tmp_path, name, dtype):
    data = (np.random.default_rng(0).random((5, 24, 31)) * 200).astype(dtype)
    written = []
    path = write_movie(tmp_path / name, data, pixel_size_um=0.16, progress=lambda *step: written.append(step))
    assert written == [(i, 5) for i in range(1, 6)]  # after each frame
    movie = read_movie(path)
    assert movie.shape == (5, 24, 31) and movie.data.dtype == dtype
    assert movie.pixel_size_um == pytest.approx(0.16)
    np.testing.assert_array_equal(movie.data.compute(), data)
    assert not list(tmp_path.glob(".tmp.*"))  # the temporary file was renamed away
    assert path.stat().st_mode & 0o044 == 0o044 or os.umask(os.umask(0)) & 0o044  # readable as usual


def test_missing_pixel_size_is_not_invented(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((6, 8, 8), np.uint16))
    movie = read_movie(tmp_path / "plain.tif")
    assert movie.pixel_size_um is None
    assert "pixel size not recorded" in movie.metadata["note"]


def test_compressed_tiff_is_read_lazily_through_zarr(tmp_path):
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    tifffile.imwrite(tmp_path / "zlib.tif", data, compression="zlib", photometric="minisblack",
                     metadata={"axes": "TYX"})
    movie = read_movie(tmp_path / "zlib.tif")
    assert not isinstance(movie.frames, np.memmap)
    np.testing.assert_array_equal(np.asarray(movie.frames[2, 3:5, 4:9]), data[2, 3:5, 4:9])
    np.testing.assert_array_equal(movie.data[3].compute(), data[3])


def test_opening_a_movie_reads_only_the_frames_shown(tmp_path):
    # 1 GiB movie whose pixel data is never written (a sparse file): opening it must not touch that
    path = tmp_path / "big.tif"
    big = tifffile.memmap(path, shape=(512, 1024, 1024), dtype=np.uint16, imagej=True,
                          metadata={"axes": "TYX"})
    big[300, 10, 10] = 7
    big.flush()
    del big
    process = psutil.Process()
    before = process.memory_info().rss
    movie = read_movie(path)
    assert movie.shape == (512, 1024, 1024)
    frames = [movie.data[i].compute() for i in (0, 300, 511)]
    grown = process.memory_info().rss - before
    assert frames[1][10, 10] == 7
    assert grown < 64 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB after reading 3 of 512 frames"


def test_user_data_is_never_overwritten(tmp_path, movie_file):
    data = read_movie(movie_file)
    before = movie_file.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        write_movie(movie_file, np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(ValueError, match="file the data was read from"):
        write_movie(movie_file, data.frames, overwrite=True)  # the memory-mapped source itself
    with pytest.raises(ValueError, match="file the data was read from"):
        write_movie(movie_file, data.data, overwrite=True, protected=(movie_file,))
    for derived in (data.data, data.data * 2, data.data[1:3]):  # the lazy movie and what is computed from it
        with pytest.raises(ValueError, match="file the data was read from"):
            write_movie(movie_file, derived, overwrite=True)
    assert movie_file.read_bytes() == before
    assert source_files(data.data + 1) == {movie_file.resolve()} and source_files(np.zeros(3)) == set()


def test_failed_write_leaves_no_partial_file(tmp_path):
    class Broken:
        shape, ndim, dtype, size = (3, 8, 8), 3, np.dtype(np.uint16), 192

        def __getitem__(self, index):
            if index == 2:
                raise OSError("disk full")
            return np.zeros((8, 8), np.uint16)

    with pytest.raises(OSError, match="disk full"):
        write_movie(tmp_path / "out.tif", Broken())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("layout", [dict(bigtiff=True), dict(tile=(16, 16), compression="zlib"),
                                    dict(imagej=True, truncate=True), dict(rowsperstrip=4, compression="zlib"),
                                    dict(ome=True, bigtiff=True)])
def test_whole_files_of_other_layouts_are_not_taken_for_truncated_ones(tmp_path, layout):
    frames = np.random.default_rng(1).integers(0, 1000, (6, 32, 32)).astype(np.uint16)
    path = tmp_path / ("m.ome.tif" if layout.get("ome") else "m.tif")
    tifffile.imwrite(path, frames, photometric="minisblack", metadata={"axes": "TYX"}, **layout)
    np.testing.assert_array_equal(read_movie(path).data.compute(), frames)


def test_bad_files_get_clear_errors(tmp_path, movie_file, caplog):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_movie(tmp_path / "nope.tif")
    (tmp_path / "text.tif").write_text("these are not pixels")
    with pytest.raises(ValueError, match=r"text.tif is not a readable TIFF"):
        read_movie(tmp_path / "text.tif")
    (tmp_path / "cut.tif").write_bytes(movie_file.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut.tif"):
        read_movie(tmp_path / "cut.tif")
    # a copy cut short keeps the first frame's index only: it was read as a single frame, or one frame
    frames = np.random.default_rng(0).integers(0, 1000, (20, 32, 32)).astype(np.uint16)
    for name, message in (("cut.tif", "its ImageJ header announces 20 images but the file indexes 1"),
                          ("cut.ome.tif", r"the metadata of its first page reaches past the end of the file")):
        whole = write_movie(tmp_path / f"whole_{name}", frames).read_bytes()
        (tmp_path / name).write_bytes(whole[:len(whole) * 6 // 10])
        for read in (read_movie, read_image):
            caplog.clear()
            with pytest.raises(ValueError, match=f"{name} is truncated or damaged: {message}.*napari-pgsr-recover"):
                read(tmp_path / name)
            # one line: tifffile's own 'invalid page offset' log no longer comes before it
            assert not [record for record in caplog.records if record.name == "tifffile"], name
    # an OME-TIFF missing only its last bytes (its OME-XML): read as a plain stack, its 2 channels as time
    two = np.stack([np.stack([frames[0], frames[1] * 10])] * 10)
    tifffile.imwrite(tmp_path / "two.ome.tif", two, ome=True, metadata={"axes": "TCYX", "PhysicalSizeX": 0.108})
    (tmp_path / "two_cut.ome.tif").write_bytes((tmp_path / "two.ome.tif").read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"two_cut.ome.tif is truncated or damaged: the metadata of its first page "
                                         r"reaches past .*channels, z-slices or time points\) is not known"):
        read_movie(tmp_path / "two_cut.ome.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=r"rgb.tif has axes YXS .*S=3 \(colour sample \(RGB\)\).*T x Y x X"):
        read_movie(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((5, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "ZYX", "spacing": 0.2})
    with pytest.raises(ValueError, match=r"z.tif has axes ZYX.*Z=5 \(depth \(Z\)\).*Z-stack.*axes='TYX'"):
        read_movie(tmp_path / "z.tif")
    assert read_movie(tmp_path / "z.tif", axes="TYX").shape == (5, 16, 16)  # the user says it is time
    # tifffile's own default for 3-D ImageJ data is channels: the advice works without Python too
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((6, 16, 16), np.uint16), imagej=True)
    with pytest.raises(ValueError, match=r"c.tif has axes CYX.*save it as a time series \(Fiji: Image > "
                       r"Properties\.\.\., Channels = Slices = 1, Frames = 6; Python: tifffile.imwrite"):
        read_movie(tmp_path / "c.tif")
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        tifffile.imwrite(tmp_path / "t.tif", tif.asarray(), imagej=True, metadata={"axes": "TYX"})
    assert read_movie(tmp_path / "t.tif").shape == (6, 16, 16)  # as the advice says
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((16, 16), np.uint16))
    with pytest.raises(ValueError, match=r"one.tif .*single frame.*at least 2 frames"):
        read_movie(tmp_path / "one.tif")
    tifffile.imwrite(tmp_path / "tz.tif", np.zeros((3, 4, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "TZYX"})
    with pytest.raises(ValueError, match=r"T=3 \(time\) x Z=4.*save one channel or z-plane of it"):
        read_movie(tmp_path / "tz.tif")  # (no axes= makes 4 dimensions a movie: that advice was wrong here)
    # two channels over time, as Micro-Manager stores two exposure presets: the stacks route is named
    tifffile.imwrite(tmp_path / "tc.tif", np.zeros((3, 2, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "TCYX"})
    with pytest.raises(ValueError, match=r"if its 2 channels are a low and a high exposure of the same field, .*"
                                         r"--low c0.tif --high c1.tif"):
        read_movie(tmp_path / "tc.tif")


def test_tifffile_log_is_passed_on_for_a_file_that_opens_and_dropped_for_one_refused(caplog):
    import logging

    from napari_pgsr.tiff_structure import tifffile_log_unless_refused

    with tifffile_log_unless_refused():
        logging.getLogger("tifffile").warning("odd tag")
    assert [record.getMessage() for record in caplog.records if record.name == "tifffile"] == ["odd tag"]
    caplog.clear()
    with pytest.raises(ValueError), tifffile_log_unless_refused():
        logging.getLogger("tifffile").warning("invalid page offset")
        raise ValueError("x.tif is truncated")
    assert not [record for record in caplog.records if record.name == "tifffile"]


def test_writer_rejects_other_extensions_and_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\.tif, \.tiff or \.ome\.tif"):
        write_movie(tmp_path / "movie.png", np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 4, 4\)"):
        write_movie(tmp_path / "movie.tif", np.zeros((2, 2, 4, 4), np.uint16))


def test_fiji_plain_stack_of_slices_opens_as_time(tmp_path):
    # Fiji saves an image sequence as 'slices' with no frames and no z-spacing: that is a movie
    tifffile.imwrite(tmp_path / "fiji.tif", np.zeros((6, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    movie = read_movie(tmp_path / "fiji.tif")
    assert movie.shape == (6, 16, 16) and "read as time points" in movie.metadata["axes_note"]


def test_frames_appended_one_by_one_open_as_one_movie(tmp_path):
    path = tmp_path / "appended.tif"
    for value in range(6):
        tifffile.imwrite(path, np.full((16, 16), value, np.uint16), append=True)
    movie = read_movie(path)
    assert movie.shape == (6, 16, 16)
    np.testing.assert_array_equal(movie.data[:, 0, 0].compute(), np.arange(6))


def test_blocks_of_frames_appended_by_tifffile_open_as_one_movie(tmp_path):
    """A script streaming to disk with imwrite(block, append=True) writes a series per block: the movie was
    read as its first block."""
    path = tmp_path / "blocks.tif"
    for block in range(3):
        tifffile.imwrite(path, np.arange(5 * block, 5 * block + 5, dtype=np.uint16)[:, None, None]
                         * np.ones((1, 16, 20), np.uint16), append=True)
    movie = read_movie(path)
    assert movie.shape == (15, 16, 20) and [int(np.asarray(movie.data[i])[0, 0]) for i in range(15)] == list(range(15))
    assert movie.metadata["series_note"].startswith("the file holds 3 blocks of frames")


def test_pixel_size_units(tmp_path):
    ome = tmp_path / "angstrom.ome.tif"
    tifffile.imwrite(ome, np.zeros((4, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 1600.0, "PhysicalSizeXUnit": "Å"})
    assert read_movie(ome).pixel_size_um is None  # an unknown unit is not guessed
    nm = tmp_path / "nm.ome.tif"
    tifffile.imwrite(nm, np.zeros((4, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 160.0, "PhysicalSizeXUnit": "nm"})
    assert read_movie(nm).pixel_size_um == pytest.approx(0.16)
    one = write_movie(tmp_path / "one_um.tif", np.zeros((4, 8, 8), np.uint16), pixel_size_um=1.0)
    assert read_movie(one).pixel_size_um == pytest.approx(1.0)


def test_int16_movies_stay_int16(tmp_path):
    """A signed 16-bit camera movie was saved as float32 (twice the size, and no longer camera counts)."""
    movie = (np.arange(2 * 4 * 4).reshape(2, 4, 4) - 10).astype(np.int16)
    read = read_movie(write_movie(tmp_path / "signed.tif", movie))
    assert read.data.dtype == np.int16
    np.testing.assert_array_equal(read.data.compute(), movie)


def test_imagej_cannot_hold_int32_so_the_writer_says_so(tmp_path):
    with pytest.warns(UserWarning, match=r"int32\.tif: ImageJ TIFF cannot hold int32 .*\.ome\.tif"):
        write_movie(tmp_path / "int32.tif", np.zeros((2, 4, 4), np.int32))
    path = write_movie(tmp_path / "int32.ome.tif", np.full((2, 4, 4), 2**25 + 1, np.int32))
    assert read_movie(path).data[0, 0, 0].compute() == 2**25 + 1


def test_a_compressed_pyramid_reads_its_full_resolution_and_other_positions_are_named(tmp_path):
    """A zlib OME-TIFF pyramid (bfconvert -pyramid-resolutions) was called damaged ('Group' has no shape); a
    file of two positions opened the first without a word."""
    movie = np.random.default_rng(0).integers(0, 4000, (4, 64, 64)).astype(np.uint16)
    pyramid = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(pyramid) as writer:
        writer.write(movie, subifds=1, metadata={"axes": "TYX"}, compression="zlib")
        writer.write(movie[:, ::2, ::2], subfiletype=1, compression="zlib")
    np.testing.assert_array_equal(read_movie(pyramid).data.compute(), movie)
    positions = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(positions, ome=True) as writer:
        writer.write(movie, metadata={"axes": "TYX"})
        writer.write(movie[:3], metadata={"axes": "TYX"})
    with pytest.warns(UserWarning, match=r"positions.ome.tif: the file holds 2 image series of this frame size "
                                         r"\(positions\?\); this is the first, \(4, 64, 64\); the others "
                                         r"\[\(3, 64, 64\)\] are not read"):
        first = read_movie(positions)
    assert first.shape == (4, 64, 64) and "the others [(3, 64, 64)]" in first.metadata["series_note"]


def test_frames_one_pixel_wide_are_refused_as_imagej_and_kept_as_ome(tmp_path):
    """tifffile writes a T x Y x 1 ImageJ stack as one T x Y image, which then reads as a damaged file."""
    column = np.arange(48, dtype=np.uint16).reshape(6, 8, 1)
    with pytest.raises(ValueError, match=r"narrow\.tif: ImageJ TIFF cannot hold frames 1 pixel wide "
                                         r"\(shape \(6, 8, 1\)\); name the file \.ome\.tif"):
        write_movie(tmp_path / "narrow.tif", column)
    assert not list(tmp_path.iterdir())
    path = write_movie(tmp_path / "narrow.ome.tif", column)
    np.testing.assert_array_equal(read_movie(path).data.compute(), column)


def test_imagej_pixel_size_with_its_unit_in_the_resolution_tag_or_a_greek_mu(tmp_path):
    """Fiji reads both; they were 'pixel size unknown'."""
    frames = np.zeros((2, 8, 8), np.uint16)
    tag_unit = tmp_path / "cm.tif"
    tifffile.imwrite(tag_unit, frames, imagej=True, metadata={"axes": "TYX"}, resolution=(62500.0, 62500.0),
                     resolutionunit=3)
    assert read_movie(tag_unit).pixel_size_um == pytest.approx(0.16)
    mu = tmp_path / "mu.tif"
    tifffile.imwrite(mu, frames, imagej=True, metadata={"axes": "TYX", "unit": "\\u03BCm"}, resolution=(6.25, 6.25))
    assert read_movie(mu).pixel_size_um == pytest.approx(0.16)
    # Micro-Manager: pixels per centimetre in the tag, unit=um in the ImageJ description (read 1.6e-5 um)
    micro_manager = tmp_path / "mm.tif"
    tifffile.imwrite(micro_manager, frames, imagej=True, metadata={"axes": "TYX", "unit": "um"},
                     resolution=(62500, 62500), resolutionunit=3)
    assert read_movie(micro_manager).pixel_size_um == pytest.approx(0.16)


def test_pixels_that_are_not_square_are_warned_about(tmp_path):
    """Spot widths in nm use one pixel size: a file whose pixels are 100 x 200 nm says so, by name."""
    path = tmp_path / "rect.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint16), resolution=(1e4 / 0.1, 1e4 / 0.2), resolutionunit=3)
    with pytest.warns(UserWarning, match=r"rect.tif: its pixels are not square \(100 nm wide, 200 nm high\)"):
        assert read_movie(path, axes="TYX").pixel_size_um == pytest.approx(0.1)
    square = tmp_path / "square.tif"
    write_movie(square, np.zeros((2, 8, 8), np.uint16), pixel_size_um=0.16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_movie(square).pixel_size_um == pytest.approx(0.16)


def test_a_big_endian_movie_is_written_as_the_same_integers(tmp_path):
    """A Motorola-order uint16 movie (>u2) was saved as float32, twice the size, with a warning."""
    frames = np.arange(2 * 8 * 8, dtype=">u2").reshape(2, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_movie(tmp_path / "native.tif", frames)
    back = read_movie(tmp_path / "native.tif").data.compute()
    assert back.dtype == np.uint16 and (back == frames).all()


def test_the_tag_check_sizes_rationals_and_skips_types_tiff_does_not_define(tmp_path):
    """A RATIONAL (two 4-byte integers) was sized as 4 bytes, so a resolution cut off the end of the file went
    unseen (and the pixel size with it); a tag of an undefined type refused a file tifffile reads."""
    import struct

    from napari_pgsr.tiff_structure import tag_values_past_end

    frames = np.random.default_rng(0).integers(0, 1000, (6, 32, 32)).astype(np.uint16)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TYX"}, extratags=[(65000, 4, 1, 7, True)])
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages.first.tags[65000].offset
    struct.pack_into("<HHI", data, entry, 65000, 99, 100)  # type 99 (no TIFF type), 100 of them "at" offset 7
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:
        assert not tag_values_past_end(tif, tif.pages.first.offset)
    assert read_movie(path).shape == (6, 32, 32)
    tifffile.imwrite(path, frames, resolution=(1 / 0.16, 1 / 0.16))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["XResolution"]
        entry, offset = tag.offset, tag.valueoffset
    # point XResolution's 8 bytes at the last 4 of the file: half of it past the end
    struct.pack_into("<I", data, entry + 8, len(data) - 4)
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:
        assert tag_values_past_end(tif, tif.pages.first.offset)
