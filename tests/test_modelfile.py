import zipfile

import pytest
import torch

from napari_pgsr.data import Normalization
from napari_pgsr.modelfile import FORMAT, load_model, save_model
from napari_pgsr.models.unet import UNet

NORM = Normalization(100.0, 250.0, 100.0, 900.0)


def test_round_trip_keeps_weights_architecture_normalization_and_metadata(tmp_path):
    net = UNet(in_channels=3, depth=1, width=4)
    path = save_model(tmp_path / "m.pgsr", net, NORM, {"config": {"context": 1}, "history": {"step": 5}})
    model = load_model(path)
    assert model.network.architecture == net.architecture and model.context == 1
    for key, value in net.state_dict().items():
        torch.testing.assert_close(model.network.state_dict()[key], value)
    assert model.normalization == NORM and model.metadata["history"]["step"] == 5
    assert model.training_state is None and not model.network.training
    assert not list(tmp_path.glob(".tmp.*"))


def test_file_loads_with_weights_only(tmp_path):
    path = save_model(tmp_path / "m.pgsr", UNet(depth=1, width=2), NORM, {},
                      training_state={"step": 3, "torch_rng": torch.get_rng_state(), "train_refs": [[0, 1]]})
    archive = torch.load(path, weights_only=True)  # nothing but tensors, numbers and strings
    assert archive["format"] == FORMAT and archive["training_state"]["step"] == 3


def test_bad_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "none.pgsr")
    (tmp_path / "text.pgsr").write_text("not a model")
    with pytest.raises(ValueError, match="text.pgsr is not a readable napari-pgsr model file"):
        load_model(tmp_path / "text.pgsr")
    (tmp_path / "movie.tif").write_bytes(b"II*\x00" + bytes(100))  # the movie given where the model goes
    with pytest.raises(ValueError, match=r"movie.tif is not a readable napari-pgsr model file \(it is a TIFF "
                       r"image: give the model file first, then the movie\)"):
        load_model(tmp_path / "movie.tif")
    good = save_model(tmp_path / "good.pgsr", UNet(depth=1, width=2), NORM, {})
    (tmp_path / "cut.pgsr").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.pgsr is not a readable"):
        load_model(tmp_path / "cut.pgsr")
    torch.save({"format": FORMAT, "format_version": 99, "metadata_json": "{}", "state_dict": {}},
               tmp_path / "future.pgsr")
    with pytest.raises(ValueError, match="format version 99, newer than this napari-pgsr reads"):
        load_model(tmp_path / "future.pgsr")
    for version in (None, "1", 0):  # a missing one said 'version None, newer than this napari-pgsr reads (1)'
        torch.save({"format": FORMAT, "format_version": version, "metadata_json": "{}", "state_dict": {}},
                   tmp_path / "odd.pgsr")
        with pytest.raises(ValueError, match=rf"odd.pgsr is a damaged napari-pgsr model file: its format version "
                                             rf"is {version!r}; expected a whole number from 1 to 1"):
            load_model(tmp_path / "odd.pgsr")
    torch.save({"code": NORM}, tmp_path / "pickled.pt")  # a Python object: refused, with no unsafe advice
    with pytest.raises(ValueError, match=r"pickled.pt is not a readable napari-pgsr model file \(it holds Python "
                       r"objects that a safe load refuses\)$"):
        load_model(tmp_path / "pickled.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a napari-pgsr model file"):
        load_model(tmp_path / "other.pt")
    torch.save({"format": FORMAT, "format_version": 1, "state_dict": {},
                "metadata_json": '{"architecture": {"name": "stylegan"}, "normalization": {}}'},
               tmp_path / "arch.pgsr")
    with pytest.raises(ValueError, match="arch.pgsr: unknown model architecture 'stylegan'"):
        load_model(tmp_path / "arch.pgsr")


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed!",))

    torch.save({"format": FORMAT, "format_version": 1, "evil": Payload()}, tmp_path / "evil.pgsr")
    with pytest.raises(ValueError, match="evil.pgsr is not a readable"):
        load_model(tmp_path / "evil.pgsr")
    assert zipfile.is_zipfile(tmp_path / "evil.pgsr")


def test_a_torchscript_file_is_named_as_one(tmp_path):
    """torch's refusal advised loading it with weights_only=False, which a model file never needs."""
    import torch

    torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 1, 3)), tmp_path / "weights_torchscript.pt")
    with pytest.raises(ValueError, match=r"weights_torchscript.pt is a TorchScript file, not a napari-pgsr model "
                                         r"file; give the .pgsr file"):
        load_model(tmp_path / "weights_torchscript.pt")


def test_a_damaged_file_is_refused_not_loaded_as_other_weights(tmp_path):
    """torch reads no checksums: a flipped byte in the weights loaded as different weights, unsaid; one in
    the zip's directory gave a BadZipFile traceback."""
    path = save_model(tmp_path / "u.pgsr", UNet(depth=1, width=4), Normalization(0.0, 1.0, 0.0, 1.0), {})
    original = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        weights = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    local = weights.header_offset  # the local header's name and extra lengths (its padding is in the extra)
    start = local + 30 + int.from_bytes(original[local + 26:local + 28], "little") + int.from_bytes(
        original[local + 28:local + 30], "little")
    flipped = bytearray(original)
    flipped[start + 5] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"u.pgsr is damaged: its part .*/data/0 fails its checksum"):
        load_model(path)
    directory = bytearray(original)
    directory[int.from_bytes(original[original.rfind(b"PK\x05\x06") + 16:][:4], "little")] ^= 0xFF
    path.write_bytes(bytes(directory))
    with pytest.raises(ValueError, match=r"u.pgsr is not a readable napari-pgsr model file \(a damaged zip archive"):
        load_model(path)
