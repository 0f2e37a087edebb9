import numpy as np
import pytest
import torch

from napari_pgsr.data import Normalization, PatchDataset, dihedral, split_refs
from napari_pgsr.io import read_movie
from napari_pgsr.pairs import pair_stacks, split_alternating

IDENTITY = Normalization(0.0, 1.0, 0.0, 1.0)


def _coded_pairs(n_pairs=12, size=40):
    """Low frames whose pixel values encode (pair, y, x); high = 3 * low + 7."""
    pair, y, x = np.meshgrid(np.arange(n_pairs), np.arange(size), np.arange(size), indexing="ij")
    low = (pair * 10_000 + y * 100 + x).astype(np.float32)
    return pair_stacks(low + 1, 3 * (low + 1) + 7, name="coded")


def test_crops_are_aligned_and_offset_is_added_to_both():
    pairs = _coded_pairs()
    ds = PatchDataset(pairs, patch_size=8, split="all", length=50, offset_max=200, normalization=IDENTITY)
    offsets = set()
    for i in range(len(ds)):
        low, high = (t.numpy()[0] for t in ds[i])
        assert low.shape == (8, 8)
        offset = (3 * low - high + 7)[0, 0] / 2  # high = 3 (low - o) + 7 + o
        np.testing.assert_allclose(3 * low - high + 7, 2 * offset)
        assert offset == int(offset) and 0 <= offset <= 200
        offsets.add(offset)
        code = low - offset - 1
        p = int(code[0, 0] // 10_000)
        original = (p * 10_000 + np.arange(40)[:, None] * 100 + np.arange(40)[None, :]).astype(np.float32)
        # the crop is one of the 8 dihedral transforms of a contiguous 8x8 window of pair p
        y0, x0 = divmod(int(code.min() - p * 10_000), 100)
        window = original[y0:y0 + 8, x0:x0 + 8]
        assert any(np.array_equal(dihedral(window, k), code) for k in range(8))
    assert len(offsets) > 10


def test_augmentation_uses_all_eight_symmetries_and_validation_none():
    pairs = _coded_pairs()
    ds = PatchDataset(pairs, patch_size=8, split="all", length=200, normalization=IDENTITY)
    seen = set()
    for i in range(len(ds)):
        code = ds[i][0].numpy()[0] - 1
        corner = code - code.min()
        seen.add((corner[0, 0], corner[0, -1], corner[-1, 0]))
    assert len(seen) == 8
    val = PatchDataset(pairs, patch_size=8, split="validation", normalization=IDENTITY)
    for i in range(len(val)):
        code = val[i][0].numpy()[0]
        assert code[0, 1] - code[0, 0] == 1 and code[1, 0] - code[0, 0] == 100  # not flipped or rotated


def test_items_are_reproducible_and_change_with_epoch():
    pairs = _coded_pairs()
    ds = PatchDataset(pairs, patch_size=8, normalization=IDENTITY, seed=7)
    first = [ds[i][0] for i in range(5)]
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))


def test_split_by_time_blocks_never_puts_adjacent_frames_on_both_sides(ap2_small):
    pairs = split_alternating(simulate_long := ap2_small.movie)
    train, val = split_refs([pairs], validation_fraction=0.25, block_pairs=3)
    assert train and val and not set(train) & set(val)
    frames = lambda refs: {f for _, p in refs for f in (pairs.low_index[p], pairs.high_index[p])}  # noqa: E731
    train_frames, val_frames = frames(train), frames(val)
    assert min(abs(a - b) for a in train_frames for b in val_frames) > 1
    assert simulate_long.shape[0] == 40


def test_split_by_movie_when_several_movies():
    movies = [_coded_pairs(6, 16) for _ in range(4)]
    train, val = split_refs(movies, validation_fraction=0.25)
    assert {m for m, _ in val} == {3} and {m for m, _ in train} == {0, 1, 2}
    assert len(train) == 18 and len(val) == 6


@pytest.mark.parametrize("lengths, expected_share, whole", [
    ([100, 100], 0.10, False),  # one whole movie of two would hold out half the pairs
    ([20, 500], 0.10, False),   # the last movie would hold out 96%
    ([100, 100, 100, 100, 100], 0.20, True),
    ([90, 10], 0.10, True),     # the short last movie is about a tenth: it is held out whole
])
def test_several_movies_are_held_out_whole_only_when_they_hold_about_the_requested_share(
        lengths, expected_share, whole):
    movies = [pair_stacks(np.ones((n, 4, 4)), 10 * np.ones((n, 4, 4)), name=f"m{i}") for i, n in enumerate(lengths)]
    fraction = 0.2 if len(lengths) == 5 else 0.1
    train, val = split_refs(movies, fraction)
    assert len(val) / sum(lengths) == pytest.approx(expected_share, abs=0.01)
    assert ({m for m, _ in val} == {len(lengths) - 1}) == whole  # else validation blocks within every movie
    if not whole:
        assert {m for m, _ in val} == set(range(len(lengths))) and {m for m, _ in train} == set(range(len(lengths)))
    assert not set(train) & set(val)


def test_validation_patches_cover_the_whole_movie_not_its_start():
    """64 validation patches of a 2000-pair movie came from its first third only (pairs 69-687)."""
    pairs = pair_stacks(np.ones((2000, 8, 8)), 10 * np.ones((2000, 8, 8)), name="long")
    ds = PatchDataset(pairs, patch_size=8, split="validation", length=64, normalization=IDENTITY)
    used = [ds._validation_ref(i)[1] for i in range(len(ds))]
    held = sorted(p for _, p in ds.validation_refs)
    assert len(set(used)) == 64 and used[0] == held[0] and used[-1] > held[-1] - 16
    few = PatchDataset(pairs, patch_size=8, split="validation", length=400, normalization=IDENTITY)
    assert sorted({few._validation_ref(i)[1] for i in range(400)}) == held  # more items than pairs: each pair


def test_normalization_is_fitted_on_training_pairs_only():
    n = 40
    train_refs, val_refs = split_refs([pair_stacks(np.ones((n, 4, 4)), 10 * np.ones((n, 4, 4)))], 0.25, 4)
    val = np.array([p for _, p in val_refs])
    values = np.ones(n)
    values[val] = 1e6  # validation pairs are far brighter than anything in training
    low = np.broadcast_to(values[:, None, None], (n, 16, 16)).astype(np.float32)
    pairs = pair_stacks(low + np.arange(16, dtype=np.float32), 10 * low, name="bright validation")
    ds = PatchDataset(pairs, patch_size=8, validation_fraction=0.25, block_pairs=4)
    assert sorted(p for _, p in ds.validation_refs) == sorted(val.tolist())
    assert ds.normalization.low_hi < 100 and ds.normalization.high_hi < 100
    assert ds.normalization.to_dict() == Normalization.from_dict(ds.normalization.to_dict()).to_dict()
    low_t, high_t = ds[0]
    assert low_t.dtype == torch.float32 and low_t.shape == (1, 8, 8)
    raw = ds.normalization.high_inverse(high_t.numpy())
    np.testing.assert_allclose(ds.normalization.high(raw), high_t.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, fraction, expected", [(6, 0.1, 1), (64, 0.05, 3), (64, 0.1, 6), (200, 0.1, 20)])
def test_validation_fraction_is_honoured_even_for_short_movies(n, fraction, expected):
    pairs = pair_stacks(np.ones((n, 4, 4)), 10 * np.ones((n, 4, 4)), name="short")
    train, val = split_refs([pairs], fraction)
    assert len(val) == expected and len(train) >= n - expected - 2 * max(1, expected // 16 + 1)
    with pytest.raises(ValueError, match="short: 3 pairs are too few"):
        split_refs([pair_stacks(np.ones((3, 4, 4)), 10 * np.ones((3, 4, 4)), name="short")], 0.1)


def test_dataset_samples_from_the_file_not_through_dask(movie_file):
    movie = read_movie(movie_file)
    for data, name in ((movie, "ap2.tif"), (movie.data, "movie")):  # a Movie, or a napari layer's dask data
        pairs = split_alternating(data)
        assert pairs.name == name
        assert isinstance(pairs.low_source, np.memmap) and isinstance(pairs.high_source, np.memmap)
        low, high = PatchDataset(pairs, patch_size=16, split="all", normalization=IDENTITY, augment=False)[0]
        assert low.shape == (1, 16, 16)


def _two_file_ome(folder, movie):
    """A zlib OME-TIFF dataset of two files (as Micro-Manager splits long acquisitions)."""
    import uuid

    import tifffile

    half, (count, height, width) = len(movie) // 2, movie.shape
    ids = [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    planes = "".join(f'<TiffData FirstT="{i * half}" IFD="0" PlaneCount="{half}"><UUID FileName="{i}.ome.tif">'
                     f"{ids[i]}</UUID></TiffData>" for i in range(2))
    for i in range(2):
        xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/'
               f'2016-06" UUID="{ids[i]}"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
               f'Type="uint16" SizeX="{width}" SizeY="{height}" SizeC="1" SizeZ="1" SizeT="{count}">{planes}'
               "</Pixels></Image></OME>")
        tifffile.imwrite(folder / f"{i}.ome.tif", movie[i * half:(i + 1) * half], description=xml, metadata=None,
                         compression="zlib", photometric="minisblack")
    return folder / "0.ome.tif"


@pytest.mark.parametrize("files", [1, 2])
def test_dataloader_workers_read_a_compressed_movie_through_handles_of_their_own(tmp_path, files):
    import tifffile

    from napari_pgsr.simulate import simulate_movie

    frames = simulate_movie("beads", 24, (128, 128), seed=2).movie
    path = tmp_path / "zlib.tif"  # compressed: read through tifffile's file handles, not a memory map
    if files == 1:
        tifffile.imwrite(path, frames, photometric="minisblack", metadata={"axes": "TYX"}, compression="zlib",
                         rowsperstrip=16)
    else:
        path = _two_file_ome(tmp_path, frames)
    movie = read_movie(path)
    np.testing.assert_array_equal(movie.data.compute(), frames)
    dataset = PatchDataset(split_alternating(movie), patch_size=32, length=96)
    expected = [dataset[i] for i in range(96)]
    # forked workers shared the parent's file offsets: zlib reads interleaved (DeflateError, or wrong patches)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, multiprocessing_context="fork")
    for (low, high), (expected_low, expected_high) in zip(loader, expected, strict=True):
        assert torch.equal(low[0], expected_low) and torch.equal(high[0], expected_high)


def test_reads_only_the_frames_it_needs():
    class CountingFrames:
        def __init__(self, array):
            self.array, self.shape, self.ndim, self.dtype = array, array.shape, array.ndim, array.dtype
            self.touched = []

        def __getitem__(self, index):
            self.touched.append(index)
            return self.array[index]

    movie = np.random.default_rng(0).poisson(5, (200, 32, 32)).astype(np.uint16)
    movie[1::2] *= 10
    counting = CountingFrames(movie)
    pairs = split_alternating(movie)
    pairs.low_source = pairs.high_source = counting
    ds = PatchDataset(pairs, patch_size=16, normalization=IDENTITY)
    counting.touched.clear()
    ds[0]
    assert len(counting.touched) == 2
    for index in counting.touched:
        assert isinstance(index[0], int) and index[1].stop - index[1].start == 16
    # a temporal context of 2 reads four more low frames, and no high frame beside them (it read 8 more)
    context = PatchDataset(pairs, patch_size=16, normalization=IDENTITY, context=2)
    counting.touched.clear()
    low, _ = context[0]
    assert low.shape == (5, 16, 16) and len(counting.touched) == 2 + 4


def test_bad_inputs_are_explained():
    pairs = _coded_pairs(12, 40)
    with pytest.raises(ValueError, match=r"coded: frames of 40x40 pixels are smaller than the 64x64 patch"):
        PatchDataset(pairs, patch_size=64)
    with pytest.raises(ValueError, match="split must be"):
        PatchDataset(pairs, patch_size=8, split="test")
    with pytest.raises(ValueError, match="needs the training set's normalization"):  # ("no training pairs" before)
        PatchDataset(pairs, patch_size=8, split="validation", refs=[(0, 3), (0, 4)])
    low = np.ones((6, 16, 16), np.float32)
    low[2, 5, 5] = np.nan
    nan_pairs = pair_stacks(np.nan_to_num(low), np.nan_to_num(low) * 10, name="nan movie")
    nan_pairs.low_source = low
    ds = PatchDataset(nan_pairs, patch_size=16, split="all", normalization=IDENTITY, length=30)
    with pytest.raises(ValueError, match=r"nan movie: pair 2 \(frames 2/2\) contains NaN"):
        [ds[i] for i in range(30)]


def test_no_file_of_a_multi_file_dataset_is_written_over(tmp_path):
    """Save Selected Layers could replace the second file of the dataset the layer reads from."""
    from napari_pgsr._writer import write_image
    from napari_pgsr.io import read_movie

    frames = np.stack([np.full((16, 16), 110 if t % 2 == 0 else 1000, np.uint16) for t in range(8)])
    movie = read_movie(_two_file_ome(tmp_path, frames))
    before = (tmp_path / "1.ome.tif").read_bytes()
    with pytest.raises(ValueError, match=r"refusing to write .*1.ome.tif: it is the file the data was read from"):
        write_image(str(tmp_path / "1.ome.tif"), movie.data[::-1], {"metadata": movie.metadata})
    assert (tmp_path / "1.ome.tif").read_bytes() == before


def test_a_multi_file_dataset_with_a_file_missing_is_refused_by_name(tmp_path):
    """tifffile reads the frames of a missing companion file as zeros: split took them for dark frames."""
    from napari_pgsr.io import read_movie

    frames = np.stack([np.full((16, 16), 110 if t % 2 == 0 else 1000, np.uint16) for t in range(8)])
    first = _two_file_ome(tmp_path, frames)
    np.testing.assert_array_equal(read_movie(first).data.compute(), frames)
    (tmp_path / "1.ome.tif").rename(tmp_path / "elsewhere.tif")
    with pytest.raises(ValueError, match=r"0.ome.tif is one file of a multi-file dataset: 4 of its 8 image planes "
                                         r"\(from plane 4\) are in 1.ome.tif, which is not beside it"):
        read_movie(first)
    # all there, but the second cut short: it said to put the files together, as if one were missing
    (tmp_path / "elsewhere.tif").rename(tmp_path / "1.ome.tif")
    whole = (tmp_path / "1.ome.tif").read_bytes()
    (tmp_path / "1.ome.tif").write_bytes(whole[:len(whole) * 7 // 10])
    with pytest.raises(ValueError, match=r"0.ome.tif is one file of a multi-file dataset whose files are all beside "
                                         r"it, but .* could not be read from them: is 1.ome.tif cut short or damaged"):
        read_movie(first)
