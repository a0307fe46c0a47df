"""Data modules: the embedded digits, image folders, paired folders, torchvision datasets (offline)."""

from __future__ import annotations

import gzip
import logging
import shutil

import pytest
import torch

from colddiff.data import (
    EmbeddedMNISTDataModule,
    ImageFolderDataModule,
    PairedFolderDataModule,
    TorchvisionDataModule,
    find_images,
)
from tests.helpers import SHARED_DATA, make_image_folder


def test_embedded_mnist_is_real_digits_in_range():
    dm = EmbeddedMNISTDataModule(batch_size=16)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 6000 and len(dm.dataset("val")) == 1000
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (16, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1 and batch.max() > 0.9
    assert (batch < 0.05).float().mean() > 0.6  # digits: mostly black background


def test_embedded_mnist_resized_and_rgb():
    dm = EmbeddedMNISTDataModule(image_size=32, channels=3, batch_size=4, val_size=10)
    dm.setup("fit")
    assert len(dm.dataset("val")) == 10
    x = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    torch.testing.assert_close(x[:, 0], x[:, 1])


def test_image_folder_recursive_split_and_formats(tmp_path):
    files = make_image_folder(tmp_path, n=20, size=24)
    found = find_images(tmp_path)
    assert sorted(found) == sorted(files)
    dm = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, image_size=16, channels=3, batch_size=4,
                               num_workers=0)
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    assert len(train) == 16 and len(val) == 4
    assert not set(train.files) & set(val.files)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    gray = ImageFolderDataModule(str(tmp_path), val_fraction=0, image_size=16, channels=1, batch_size=4,
                                 num_workers=0)
    gray.setup("fit")
    assert gray.dataset("train")[0].shape == (1, 16, 16)
    assert gray.val_dataloader() == []


def test_image_folder_split_is_deterministic(tmp_path):
    make_image_folder(tmp_path, n=30)
    a = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, split_seed=3, batch_size=2)
    b = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, split_seed=3, batch_size=2)
    a.setup("fit"), b.setup("fit")
    assert a.dataset("val").files == b.dataset("val").files


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "missing"), batch_size=2).setup("fit")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no images"):
        ImageFolderDataModule(str(tmp_path / "empty"), batch_size=2).setup("fit")
    make_image_folder(tmp_path / "few", n=3)
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        ImageFolderDataModule(str(tmp_path / "few"), val_fraction=0, batch_size=8).setup("fit")


def _corrupt_folder(root):
    files = make_image_folder(root, n=8, size=16)
    files[2].write_bytes(b"this is not an image")
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 3])  # truncated
    return files


def test_unreadable_image_raises_naming_the_file(tmp_path):
    files = _corrupt_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), val_fraction=0, image_size=8, batch_size=2, num_workers=0)
    dm.setup("fit")
    dataset = dm.dataset("train")
    for bad in (files[2], files[3]):
        with pytest.raises(ValueError, match=f"cannot read image file .*{bad.name}"):
            dataset[dataset.files.index(bad)]


def test_unreadable_images_skipped_on_request(tmp_path, caplog):
    _corrupt_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm = ImageFolderDataModule(str(tmp_path), val_fraction=0, image_size=8, batch_size=2, num_workers=0,
                                   skip_bad=True)
        dm.setup("fit")
    assert len(dm.dataset("train")) == 6
    assert "skipped 2 unreadable image file(s) of 8" in caplog.text
    assert all(x.shape == (3, 8, 8) for x in dm.dataset("train"))


def test_paired_folders_give_image_and_partner(tmp_path):
    make_image_folder(tmp_path / "faces", n=10, seed=1)
    make_image_folder(tmp_path / "animals", n=5, seed=2)
    dm = PairedFolderDataModule(str(tmp_path / "faces"), partner_root=str(tmp_path / "animals"), val_fraction=0.2,
                                image_size=16, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "partner"}
    assert batch["image"].shape == batch["partner"].shape == (4, 3, 16, 16)
    val = dm.dataset("val")
    assert torch.equal(val[0]["partner"], val[0]["partner"])  # fixed pairs for evaluation
    assert len(dm.partner_dataset("train")) == 5


def test_torchvision_dataset_missing_offline_is_a_clear_error(tmp_path):
    dm = TorchvisionDataModule("CIFAR10", root=str(tmp_path), download=False, batch_size=2)
    with pytest.raises(FileNotFoundError, match="CIFAR10 was not found under root"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="name must be one of"):
        TorchvisionDataModule("ImageNet", root=str(tmp_path))


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist")
def test_torchvision_mnist_from_the_shipped_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (SHARED_DATA / "mnist").glob("*.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    dm = TorchvisionDataModule("MNIST", root=str(tmp_path), download=False, image_size=32, channels=1,
                               batch_size=8, num_workers=0, val_size=100)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 60000 and len(dm.dataset("val")) == 100
    x = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and x.max() > 0.9


def test_bad_data_module_arguments():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        EmbeddedMNISTDataModule(channels=2)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        EmbeddedMNISTDataModule(image_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        ImageFolderDataModule("x", val_fraction=1.0)


def _passes(loader, n):
    return [[batch[0].tolist() for batch in loader] for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_loader_continues_its_order_after_a_checkpoint(workers):
    from torch.utils.data import TensorDataset

    from colddiff.data import ResumableDataLoader

    data = TensorDataset(torch.arange(20))

    def make(seed=5):
        return ResumableDataLoader(data, batch_size=4, shuffle=True, drop_last=True, seed=seed, num_workers=workers,
                                   persistent_workers=workers > 0)

    pass0, pass1, pass2 = _passes(make(), 3)
    assert pass0 != pass1 and sorted(sum(pass1, [])) == list(range(20))
    assert _passes(make(), 3) == [pass0, pass1, pass2]  # the order is a function of (seed, pass) only

    interrupted = make()
    _passes(interrupted, 1)
    iterator = iter(interrupted)
    taken = [next(iterator)[0].tolist() for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"seed": 5, "pass": 1, "batches": 2}

    resumed = make(seed=0)
    resumed.load_state_dict(state)
    assert taken + [batch[0].tolist() for batch in resumed] == pass1
    assert _passes(resumed, 1) == [pass2]

    at_end = make()
    at_end.load_state_dict({"seed": 5, "pass": 1, "batches": 5})  # saved after the last batch of pass 1
    assert _passes(at_end, 1) == [pass2]
    with pytest.raises(ValueError, match="expected a state with 'pass' and 'batches'"):
        at_end.load_state_dict({"epoch": 3})
