"""Recovering the complete frames of damaged movies: a crashed acquisition and copies cut short."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_pgsr.cli import recover_main
from napari_pgsr.io import read_movie, write_movie
from napari_pgsr.recover import find_complete_frames, recover_movie

FRAMES = np.random.default_rng(3).integers(0, 4000, (6, 32, 48)).astype(np.uint16)

# an acquisition writing frame by frame into one stack that dies before closing the file
CRASH = """
import os, sys, numpy as np, tifffile
frames = np.load(sys.argv[2])
layout = {"imagej": dict(imagej=True), "ome": dict(ome=True), "big-endian": dict(byteorder=">")}[sys.argv[3]]
writer = tifffile.TiffWriter(sys.argv[1], **layout)
for frame in frames:
    writer.write(frame, contiguous=True, resolution=(1 / 0.16, 1 / 0.16), metadata={"unit": "um"})
writer._fh.flush()
os._exit(1)
"""


@pytest.mark.parametrize("layout", ["imagej", "ome", "big-endian"])
def test_crashed_acquisition_is_recovered(tmp_path, layout):
    np.save(tmp_path / "frames.npy", FRAMES)
    crashed = tmp_path / f"crashed_{layout}.tif"
    subprocess.run([sys.executable, "-c", CRASH, str(crashed), str(tmp_path / "frames.npy"), layout])
    before = crashed.read_bytes()
    # the file indexes only its first frame: it is not taken for a snapshot
    with pytest.raises(ValueError, match=f"crashed_{layout}.tif indexes one frame, but the pixel data of 5 more "
                       "follow it.*napari-pgsr-recover"):
        read_movie(crashed)
    found = recover_movie(crashed, tmp_path / "recovered.tif")
    assert found.shape == (6, 32, 48)
    recovered = read_movie(tmp_path / "recovered.tif")
    np.testing.assert_array_equal(recovered.data.compute(), FRAMES)
    assert recovered.data.dtype == np.uint16  # (a big-endian file's frames were saved as float32)
    if layout == "imagej":  # (tifffile writes an OME file's metadata only when it is closed)
        assert recovered.pixel_size_um == pytest.approx(0.16)
    assert "recovered from the damaged file" in recovered.metadata["description"]
    assert crashed.read_bytes() == before  # only read


@pytest.mark.parametrize("name, compression", [("cut.tif", None), ("cut.ome.tif", "zlib")])
def test_copy_cut_short_gives_its_complete_frames(tmp_path, name, compression):
    whole = tmp_path / f"whole_{name}"
    ome = name.endswith(".ome.tif")
    tifffile.imwrite(whole, FRAMES, imagej=not ome, ome=ome, compression=compression, metadata={"axes": "TYX"})
    data = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[:len(data) * 6 // 10])
    with tifffile.TiffFile(whole) as tif:  # frames whose data end before the cut are complete
        complete = sum(page.dataoffsets[-1] + page.databytecounts[-1] <= len(data) * 6 // 10
                       for page in tif.pages)
    assert 1 < complete < 6
    found = find_complete_frames(cut)
    assert found.shape == (complete, 32, 48)
    # read in chunks as a lazy array would, a frame, a slice and a crop
    np.testing.assert_array_equal(np.asarray(found.frames[1]), FRAMES[1])
    np.testing.assert_array_equal(np.asarray(found.frames[0:2, 3:9]), FRAMES[0:2, 3:9])
    recover_movie(cut, tmp_path / "recovered.ome.tif")
    np.testing.assert_array_equal(read_movie(tmp_path / "recovered.ome.tif").data.compute(), FRAMES[:complete])


@pytest.mark.parametrize("cut", [0.6, 0.8])
def test_frames_stored_each_with_its_index_entry_or_before_the_whole_index_are_not_mixed_with_it(tmp_path, cut):
    # each frame beside its own index entry (as libtiff and Micro-Manager write): only the pages tell where
    # pixels are; and a stack whose index of the other frames follows all the pixels, cut inside that index
    interleaved, stacked = tmp_path / "interleaved.tif", tmp_path / "stacked.ome.tif"
    with tifffile.TiffWriter(interleaved) as writer:
        for frame in FRAMES:
            writer.write(frame, contiguous=False, metadata=None)
    small = FRAMES[:, :8, :8].repeat(7, axis=0)  # 42 frames smaller than their index entries: a big index
    tifffile.imwrite(stacked, small, ome=True, metadata={"axes": "TYX"})
    for path, frames in ((interleaved, FRAMES), (stacked, small)):
        data = path.read_bytes()
        with tifffile.TiffFile(path) as tif:  # frames whose pixels end before the cut
            complete = sum(page.dataoffsets[-1] + page.databytecounts[-1] <= int(len(data) * cut)
                           for page in tif.pages)
        path.write_bytes(data[:int(len(data) * cut)])
        found = find_complete_frames(path)
        assert found.shape[0] == complete >= 2, path.name
        np.testing.assert_array_equal(np.asarray(found.frames[:complete]), frames[:complete])
    assert complete == 42  # the stack's pixels are whole, its index cut: no index bytes read as frames


def test_recover_refuses_whole_files_and_keeps_outputs(tmp_path, capsys):
    whole = write_movie(tmp_path / "whole.tif", FRAMES)
    with pytest.raises(ValueError, match="whole.tif is not damaged: it reads as a movie of 6 frames"):
        find_complete_frames(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:len(data) // 2])
    (tmp_path / "taken.tif").write_bytes(b"a user's file")
    assert recover_main([str(cut), "-o", str(tmp_path / "taken.tif")]) == 2
    assert "taken.tif exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert (tmp_path / "taken.tif").read_bytes() == b"a user's file"
    assert recover_main([str(cut), "-o", str(cut)]) == 2
    assert "refusing to write over the damaged file" in capsys.readouterr().err
    assert cut.read_bytes() == data[:len(data) // 2]
    cut.write_bytes(data[:len(data) // 4])  # one frame and a half left
    assert recover_main([str(cut), "-o", str(tmp_path / "out.tif")]) == 2
    assert "only 1 complete frame found; a movie needs at least 2" in capsys.readouterr().err
    cut.write_bytes(data[:len(data) * 3 // 4])
    assert recover_main([str(cut), "-o", str(tmp_path / "out.tif")]) == 0
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(read_movie(tmp_path / "out.tif").data.compute(), FRAMES[:4])


def test_a_hyperstack_of_channels_is_not_recovered_as_a_movie(tmp_path):
    """Channels 0 and 1 of a 2-channel ImageJ file, copied page by page, alternated dim and bright: a fake
    low/high movie that split and train would take."""
    rng = np.random.default_rng(0)
    movie = np.stack([rng.integers(90, 110, (4, 32, 48)), rng.integers(2900, 3100, (4, 32, 48))],
                     axis=1).astype(np.uint16)
    whole = tmp_path / "two_channels.tif"
    tifffile.imwrite(whole, movie, imagej=True, metadata={"axes": "TCYX"})
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    with pytest.raises(ValueError, match=r"cut.tif is truncated or damaged: its ImageJ header announces 8 images "
                                         r"but the file indexes 1 .*; it holds 2 channels, which recover does not"):
        read_movie(cut)
    for path in (whole, cut):
        with pytest.raises(ValueError, match=rf"{path.name} holds 2 channels besides time; recover copies the "
                                             r"frames of a single-channel T x Y x X movie only"):
            find_complete_frames(path)
    assert recover_main([str(cut), "-o", str(tmp_path / "out.tif"), "--quiet"]) == 2
    assert not (tmp_path / "out.tif").exists()


def test_single_frame_with_metadata_after_its_pixels_stays_a_single_frame(tmp_path):
    # a snapshot whose description, rewritten longer, was appended after the pixel data (Micro-Manager also
    # stores its metadata there)
    path = tmp_path / "snapshot.tif"
    tifffile.imwrite(path, FRAMES[0], description="short", metadata=None)
    tifffile.tiffcomment(path, "a long note " * 1000)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.tags["ImageDescription"].valueoffset > page.dataoffsets[0]  # else this test tests nothing
    with pytest.raises(ValueError, match="snapshot.tif .*single frame"):
        read_movie(path)
    with pytest.raises(ValueError, match="only 1 complete frame found"):  # its description is no frame
        find_complete_frames(path)


def test_the_cli_reports_in_one_line_without_tifffile_logging_the_damage(tmp_path, capfd, caplog):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, FRAMES, compression="zlib", metadata={"axes": "TYX"})
    tifffile.tiffcomment(whole, "a long note " * 100)  # appended at the end: cut off with it, and logged
    data = whole.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:len(data) * 6 // 10])
    assert recover_main([str(tmp_path / "cut.tif"), "-o", str(tmp_path / "out.tif")]) == 0
    out, err = capfd.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'out.tif'}: ") and " complete frames of 32 x 48 uint16" in out
    assert "frame/s]" in err and not [record for record in caplog.records if record.name == "tifffile"]
    assert recover_main([str(tmp_path / "cut.tif"), "-o", str(tmp_path / "out.tif"), "--overwrite", "--quiet"]) == 0
    assert capfd.readouterr() == ("", "")


def test_files_with_no_complete_frame_and_an_unwritable_output_are_one_line(tmp_path, capsys, monkeypatch):
    """A file holding its header alone, or cut in its first page's index, and a folder that cannot be written
    to gave tracebacks."""
    frames = np.random.default_rng(0).integers(0, 1000, (6, 32, 32)).astype(np.uint16)
    whole = write_movie(tmp_path / "whole.tif", frames).read_bytes()
    tifffile.imwrite(tmp_path / "tiled.tif", frames, tile=(16, 16))
    for name, data, said in [("header.tif", whole[:8], "holds no readable frame (cut after 8 bytes)"),
                             ("index.tif", whole[:180], "cut within the index of its first frame"),
                             ("tiles.tif", (tmp_path / "tiled.tif").read_bytes()[:190],
                              "cut within the index of its first frame")]:
        (tmp_path / name).write_bytes(data)
        assert recover_main([str(tmp_path / name), "-o", str(tmp_path / "out.tif")]) == 2, name
        assert said in capsys.readouterr().err, name
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole[:len(whole) * 6 // 10])
    import errno

    from napari_pgsr import recover

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if Path("/proc").is_dir():  # a place no file can be made: the error named the output's temporary file
        assert recover_main([str(cut), "-o", "/proc/out.tif", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "could not write /proc/out.tif" in err and ".tmp." not in err
    assert recover_main([str(tmp_path / "gone.tif"), "-o", str(tmp_path / "x.tif")]) == 2  # the input: as before
    assert "not found" in capsys.readouterr().err
    monkeypatch.setattr(recover, "write_movie", full_disk)
    assert recover_main([str(cut), "-o", str(tmp_path / "out.tif"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'out.tif'}: No space left on device" in err and "Traceback" not in err


def test_recovering_a_crashed_acquisition_lets_go_of_its_pages(tmp_path):
    """The memory-mapped frames read in native byte order were not let go of: a 150 MB acquisition added
    150 MiB of resident memory, so a 40 GB one would not fit."""
    def file_backed_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssFile")) / 1024

    frames = np.tile(np.arange(2, dtype=np.uint16)[:, None, None] * 900 + 100, (60, 512, 512))  # 120 x 512², 60 MiB
    np.save(tmp_path / "frames.npy", frames)
    crashed = tmp_path / "crashed.tif"
    subprocess.run([sys.executable, "-c", CRASH, str(crashed), str(tmp_path / "frames.npy"), "imagej"])
    before, during = file_backed_mib(), []
    found = recover_movie(crashed, tmp_path / "recovered.tif", progress=lambda done, total: during.append(
        file_backed_mib()))
    assert found.shape == (120, 512, 512) and len(during) >= 100
    assert max(during) - before < 20  # (while writing: the frames' map goes when the recovery is let go of)


def test_a_copy_cut_within_an_index_entry_points_to_recover(tmp_path):
    """Cut one byte into the fifth page's index entry, the movie was 'a damaged TIFF (IndexError ...)' with no
    word of napari-pgsr-recover, which finds all six frames whole."""
    tifffile.imwrite(tmp_path / "whole.tif", FRAMES, imagej=True, metadata={"axes": "TYX"})
    with tifffile.TiffFile(tmp_path / "whole.tif") as whole:
        entry = whole.pages[4].offset
    (tmp_path / "cut.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:entry + 1])
    with pytest.raises(ValueError, match=r"cut.tif is a damaged TIFF .*napari-pgsr-recover cut.tif -o recovered.tif"):
        read_movie(tmp_path / "cut.tif")
    np.testing.assert_array_equal(np.asarray(find_complete_frames(tmp_path / "cut.tif").frames[:]), FRAMES)



def test_recover_refuses_an_ome_tiff_cut_in_its_ome_xml_whose_rest_names_channels(tmp_path, capsys):
    """read_movie refused it (what its planes are is not known) and pointed to recover, which copied its two
    channels in turn as time: low and high for split."""
    two = np.stack([np.stack([FRAMES[0], FRAMES[1]])] * 5)  # T C Y X
    tifffile.imwrite(tmp_path / "two.ome.tif", two, ome=True, metadata={"axes": "TCYX"})
    (tmp_path / "cut.ome.tif").write_bytes((tmp_path / "two.ome.tif").read_bytes()[:-100])
    assert recover_main([str(tmp_path / "cut.ome.tif"), "-o", str(tmp_path / "out.tif")]) == 2
    assert "holds 2 channels besides time" in capsys.readouterr().err and not (tmp_path / "out.tif").exists()


def test_a_single_ome_file_announcing_more_planes_than_it_holds_says_so(tmp_path):
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="48" SizeY="32" '
           'SizeC="1" SizeZ="1" SizeT="8"><Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData IFD="0" '
           'PlaneCount="8"><UUID FileName="short.ome.tif">urn:uuid:1</UUID></TiffData></Pixels></Image></OME>')
    tifffile.imwrite(tmp_path / "short.ome.tif", FRAMES, description=xml, metadata=None)
    with pytest.raises(ValueError, match=r"short.ome.tif: its OME-XML announces 8 image planes, but the file holds 6 "
                                         r"\(none from plane 6\): an acquisition stopped early"):
        read_movie(tmp_path / "short.ome.tif")
