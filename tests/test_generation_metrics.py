"""Generation metrics (torch-fidelity on features), class entropy, the MNIST classifier extractor, the torch-fidelity
registry adapter, and the content-keyed reference cache."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from colddiff.datasets import EMBEDDED_MNIST, EmbeddedMNIST, ImageFolder, ImageTransform, find_images
from colddiff.evaluation import (
    CachedFeatures,
    MnistClassifierFeatures,
    PixelFeatures,
    ReferenceCache,
    build_extractor,
    class_entropy,
    dataset_fingerprint,
    extract_features_and_logits,
    frechet_distance,
    generation_metrics,
    kernel_distance,
    precision_recall,
    real_vs_real,
)
from colddiff.evaluation.features import CifarResNetFeatures
from tests.helpers import SHARED_DATA


def gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov.double())
    return (torch.randn(n, len(mean), generator=g, dtype=torch.float64) @ chol.T + mean.double()).float()


def embedded_digits(split: str, n: int) -> torch.Tensor:
    with np.load(EMBEDDED_MNIST) as data:
        return torch.from_numpy(data[f"{split}_images"][:n].copy())[:, None].float() / 255


# --------------------------------------------------------------------------------- metrics with known answers
def test_identical_sets_give_zero_distance_and_full_precision_recall():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=g)
    metrics = generation_metrics(a, a.clone(), kid_subsets=10, kid_subset_size=100)
    assert metrics["FD"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    shifted = generation_metrics(a, a + 1.0, kid_subsets=10, kid_subset_size=100)
    assert abs(metrics["KD"]) < shifted["KD"] / 10 and shifted["FD"] == pytest.approx(5.0)  # |mu1 - mu2|^2 = 5
    assert metrics["N_real"] == metrics["N_fake"] == 200 and metrics["KD_subset_size"] == 100


def test_well_separated_clouds_give_zero_precision_and_recall():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(150, 4, generator=g)
    fake = torch.randn(120, 4, generator=g) + 50.0
    precision, recall = precision_recall(real, fake, neighbourhood=3)
    assert precision == 0.0 and recall == 0.0
    half = torch.cat([real[:60], fake[:60]])  # half the generated samples on the real data: precision 1/2
    assert precision_recall(real, half)[0] == pytest.approx(0.5)


def test_precision_recall_distinguish_mode_dropping_from_bad_samples():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(400, 2, generator=g)
    dropped = real[real[:, 0] > 0][:150] + 0.01 * torch.randn(150, 2, generator=g)  # one half of the real data
    precision, recall = precision_recall(real, dropped)
    assert precision > 0.95 and 0.3 < recall < 0.7


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    mu1, mu2 = torch.zeros(4), torch.tensor([1.0, -0.5, 0.0, 2.0])
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    s1, s2 = torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.5])), a @ a.T / 4 + 0.5 * torch.eye(4)
    root = scipy.linalg.sqrtm(s1.double().numpy() @ s2.double().numpy()).real
    closed = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1 + s2).item() - 2 * np.trace(root))
    x, y = gaussian(40000, mu1, s1, 4), gaussian(40000, mu2, s2, 5)
    assert frechet_distance(x, y) == pytest.approx(closed, rel=0.02)


def test_frechet_distance_agrees_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(6)
    real, fake = torch.randn(500, 16, generator=g), torch.randn(300, 16, generator=g) * 1.3 + 0.2
    metric = FrechetInceptionDistance(feature=Identity(), normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-7)


def test_kernel_distance_on_whole_sets_equals_the_unbiased_mmd_and_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 6

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(80, 6, generator=g).double(), (torch.randn(80, 6, generator=g) * 0.8 + 0.3).double()
    kernel = lambda a, b: (a @ b.T / 6 + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    mmd = ((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
           - 2 * kxy.mean())
    mean, std = kernel_distance(x.float(), y.float(), subsets=3, subset_size=80)  # every subset is the whole set
    assert mean == pytest.approx(float(mmd), rel=1e-5) and std == pytest.approx(0.0, abs=1e-6 * abs(mean))
    metric = KernelInceptionDistance(feature=Identity(), subsets=2, subset_size=80, normalize=True)
    metric.update(x, real=True)
    metric.update(y, real=False)
    assert mean == pytest.approx(float(metric.compute()[0]), rel=1e-5)


def test_generation_metrics_are_seeded():
    g = torch.Generator().manual_seed(8)
    real, fake = torch.randn(300, 8, generator=g), torch.randn(250, 8, generator=g) + 0.2
    first = generation_metrics(real, fake, kid_subsets=20, kid_subset_size=50, seed=3)
    assert generation_metrics(real, fake, kid_subsets=20, kid_subset_size=50, seed=3) == first
    other = generation_metrics(real, fake, kid_subsets=20, kid_subset_size=50, seed=4)
    assert other["KD"] != first["KD"] and other["FD"] == first["FD"]


def test_metrics_reject_bad_features():
    with pytest.raises(ValueError, match="same D"):
        generation_metrics(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2))
    with pytest.raises(ValueError, match="NaN"):
        generation_metrics(torch.full((10, 2), float("nan")), torch.randn(10, 2))


def test_class_entropy_of_known_histograms():
    uniform = torch.eye(10).repeat(3, 1)  # 3 images of every class
    result = class_entropy(uniform)
    assert result["entropy"] == pytest.approx(math.log(10)) and result["entropy_fraction"] == pytest.approx(1.0)
    assert result["counts"] == [3] * 10 and result["N"] == 30
    collapsed = class_entropy(torch.tensor([[0.0, 5.0, 1.0]]).repeat(7, 1))
    assert collapsed["entropy"] == 0.0 and collapsed["counts"] == [0, 7, 0]
    two = class_entropy(torch.eye(4)[[0, 0, 2, 2]])
    assert two["entropy"] == pytest.approx(math.log(2)) and two["entropy_fraction"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="logits"):
        class_entropy(torch.zeros(0, 10))


# ----------------------------------------------------------------------------------- the MNIST classifier
def test_mnist_classifier_extractor_classifies_the_embedded_test_digits():
    extractor = build_extractor("mnist")
    assert isinstance(extractor, MnistClassifierFeatures) and build_extractor("mnist-cnn").name == "mnist-cnn"
    assert extractor.metric_names() == ("FD-mnist-cnn", "KD-mnist-cnn") and extractor.is_classifier
    digits = embedded_digits("test", 500)  # official MNIST test images: never seen in training
    with np.load(EMBEDDED_MNIST) as data:
        labels = torch.from_numpy(data["test_labels"][:500].astype(np.int64))
    with torch.no_grad():
        features, logits = extractor.features_and_logits(digits)
        assert features.shape == (500, 128) and logits.shape == (500, 10)
        assert torch.equal(extractor(digits), features) and torch.equal(extractor.logits(digits), logits)
        assert (logits.argmax(1) == labels).float().mean() >= 0.98
        resized = torch.nn.functional.interpolate(digits[:50], size=32, mode="bilinear", antialias=True)
        assert (extractor.logits(resized).argmax(1) == labels[:50]).float().mean() >= 0.9  # 32x32 is resized
    with pytest.raises(ValueError, match="1-channel.*convert explicitly"):
        extractor(digits[:2].expand(-1, 3, -1, -1))


def test_non_classifiers_have_no_logits():
    with pytest.raises(TypeError, match="not a classifier"):
        PixelFeatures().logits(torch.rand(2, 1, 8, 8))
    features, logits = extract_features_and_logits(PixelFeatures(), [torch.rand(3, 1, 4, 4)], "cpu")
    assert features.shape == (3, 16) and logits is None


def test_mnist_classifier_training_is_deterministic_and_learns():
    from colddiff.evaluation.mnist_classifier import MnistCNN, accuracy, fit

    images = embedded_digits("train", 512)
    with np.load(EMBEDDED_MNIST) as data:
        labels = torch.from_numpy(data["train_labels"][:512].astype(np.int64))
    models = []
    for _ in range(2):
        torch.manual_seed(0)  # the same initial weights; fit's shuffling and augmentation follow its seed
        models.append(fit(MnistCNN(), images, labels, epochs=1, batch_size=64, lr=3e-3, seed=5))
    first, second = models
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert accuracy(first, images, labels) > 0.3  # after 8 steps, from chance (0.1)


@pytest.mark.skipif(not (SHARED_DATA / "cifar10").is_dir(), reason="needs ../shared/data")
def test_cifar_resnet_gives_logits_that_classify():
    extractor = CifarResNetFeatures(SHARED_DATA / "cifar10_classifier" / "resnet20-12fca82f.th", depth=20)
    with np.load(SHARED_DATA / "cifar10" / "cifar10_lossless_subset_train4k_test1k.npz") as data:
        images = torch.from_numpy(data["x_test"][:200].copy()).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(data["y_test"][:200].astype(np.int64))
    features, logits = extract_features_and_logits(extractor, images.split(100), "cpu")
    assert features.shape == (200, 64) and torch.allclose(features, extractor(images), atol=1e-5)
    assert (logits.argmax(1) == labels).float().mean() > 0.8


def test_real_vs_real_floor_on_digits():
    train, test = embedded_digits("train", 300), embedded_digits("test", 200)
    floor = real_vs_real(build_extractor("mnist-cnn"), train, test, batch_size=128, kid_subsets=10,
                         kid_subset_size=100)
    noise = real_vs_real(build_extractor("mnist-cnn"), train, torch.rand(200, 1, 28, 28), batch_size=128,
                         kid_subsets=10, kid_subset_size=100)
    assert floor["extractor"] == "mnist-cnn" and floor["N_real"] == 300 and floor["N_fake"] == 200
    assert floor["FD"] < noise["FD"] / 10 and floor["precision"] > 0.5 > noise["precision"]
    assert floor["class_entropy"]["entropy_fraction"] > 0.95 and floor["reference_class_entropy"]["N"] == 300


# ----------------------------------------------------------------------------------- torch-fidelity registry
class _Uint8Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = torch.round(images * 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def test_torch_fidelity_calculate_metrics_with_the_registered_extractor_agrees():
    from torch_fidelity import calculate_metrics

    from colddiff.evaluation.fidelity import register_torch_fidelity_extractors

    names = register_torch_fidelity_extractors()
    assert register_torch_fidelity_extractors() == names and names["mnist-cnn"] == "colddiff-mnist-cnn"
    real, fake = embedded_digits("train", 120), embedded_digits("test", 100)
    fake_rgb = fake.expand(-1, 3, -1, -1)  # torch-fidelity's folders are RGB: converted back to one channel
    ours = generation_metrics(*(extract_features_and_logits(build_extractor("mnist-cnn"), [x], "cpu")[0]
                                for x in (real, fake)), kid_subsets=5, kid_subset_size=50, seed=11)
    theirs = calculate_metrics(input1=_Uint8Images(fake_rgb), input2=_Uint8Images(real),
                               feature_extractor="colddiff-mnist-cnn", fid=True, kid=True, prc=True, cuda=False,
                               cache=False, verbose=False, save_cpu_ram=True, batch_size=64, kid_subsets=5,
                               kid_subset_size=50, rng_seed=11)
    assert theirs["frechet_inception_distance"] == pytest.approx(ours["FD"], rel=1e-4)
    assert theirs["kernel_inception_distance_mean"] == pytest.approx(ours["KD"], rel=1e-3)
    assert (theirs["precision"], theirs["recall"]) == (ours["precision"], ours["recall"])
    with pytest.raises(ValueError, match="channels differ"):
        calculate_metrics(input1=_Uint8Images(torch.rand(8, 3, 28, 28)), input2=_Uint8Images(real[:8]),
                          feature_extractor="colddiff-mnist-cnn", fid=True, cuda=False, cache=False, verbose=False,
                          save_cpu_ram=True)


# ------------------------------------------------------------------------------- content-keyed reference cache
def _write_digits(folder, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray((image[0] * 255).round().byte().numpy()).save(folder / f"{i:03d}.png")


def test_cache_is_not_fooled_by_overwritten_images(tmp_path):
    """Compute, overwrite every image of the folder (same names, same count), recompute: not the stale entry."""
    folder, extractor, cache = tmp_path / "ref", build_extractor("mnist-cnn"), ReferenceCache(tmp_path / "cache")
    _write_digits(folder, embedded_digits("train", 24))
    calls = []

    def lookup() -> CachedFeatures:
        dataset = ImageFolder(find_images(folder), ImageTransform(28, 1, train=False))

        def compute():
            calls.append(1)
            return extract_features_and_logits(extractor, [torch.stack([dataset[i] for i in range(len(dataset))])],
                                               "cpu")

        return cache.load_or_compute(dataset, extractor, compute, dataset_id=f"folder:{folder}", split="test",
                                     size=28, channels=1)

    first = lookup()
    assert not first.hit and first.describe() == f"computed and stored as {first.key}" and first.path.is_file()
    again = lookup()
    assert again.hit and again.key == first.key and again.describe() == f"cache {first.key}" and len(calls) == 1
    assert torch.equal(again.features, first.features) and torch.equal(again.logits, first.logits)
    _write_digits(folder, embedded_digits("test", 24))  # the attack: every image replaced, same names and count
    after = lookup()
    assert not after.hit and after.key != first.key and len(calls) == 2
    assert after.features.shape == first.features.shape and not torch.allclose(after.features, first.features)


def test_fingerprints_follow_content(tmp_path):
    folder = tmp_path / "imgs"
    _write_digits(folder, embedded_digits("train", 6))
    transform = ImageTransform(28, 1, train=False)
    dataset = ImageFolder(find_images(folder), transform)
    content, stat = dataset_fingerprint(dataset), dataset_fingerprint(dataset, file_contents=False)
    assert dataset_fingerprint(ImageFolder(find_images(folder), transform)) == content
    assert dataset_fingerprint(ImageFolder(find_images(folder), ImageTransform(32, 1, train=False))) != content
    # rewrite one file with other pixels, then restore its old modification time (as cp -p / rsync -t do)
    path = dataset.files[2]
    old = path.stat()
    _write_digits(tmp_path / "other", embedded_digits("test", 3))
    path.write_bytes((tmp_path / "other" / "002.png").read_bytes())
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert dataset_fingerprint(dataset) != content  # the default reads the bytes
    if path.stat().st_size == old.st_size:  # stat mode is blind to it only when the size is equal too
        assert dataset_fingerprint(dataset, file_contents=False) == stat
    train, test = EmbeddedMNIST("train", transform), EmbeddedMNIST("test", transform)
    assert dataset_fingerprint(train) == dataset_fingerprint(EmbeddedMNIST("train", transform))
    assert dataset_fingerprint(train) != dataset_fingerprint(test)
    assert dataset_fingerprint(Subset(train, range(10))) != dataset_fingerprint(Subset(train, range(1, 11)))
    assert dataset_fingerprint(Subset(train, range(10))) == dataset_fingerprint(Subset(train, list(range(10))))

    class Plain(Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], 0

    images = torch.rand(5, 1, 4, 4)
    changed = images.clone()
    changed[4, 0, 3, 3] += 0.5
    assert dataset_fingerprint(Plain(images)) == dataset_fingerprint(Plain(images.clone()))
    assert dataset_fingerprint(Plain(images)) != dataset_fingerprint(Plain(changed))


def test_cache_key_without_fingerprint_warns(tmp_path):
    cache = ReferenceCache(tmp_path)
    with pytest.warns(UserWarning, match="cannot notice changed images"):
        legacy = cache.key("d", "test", 28, 1, PixelFeatures(), 10)
    keyed = cache.key("d", "test", 28, 1, PixelFeatures(), 10, fingerprint="abc")
    assert keyed != legacy != cache.key("d", "test", 28, 1, PixelFeatures(), 10, fingerprint="abd")


class _Identity(torch.nn.Module):
    """A restorer that returns its input (a RestorationNetwork: it declares its channels and size)."""

    in_channels, out_channels, image_size = 1, 1, 28

    def forward(self, x, t):
        return x


def test_select_prior_setting_prefers_the_bandwidth_that_keeps_samples_near_the_data():
    """With a restorer that returns its input, pixelation generation gives the prior's start states (a training
    thumbnail, upsampled, plus the kernel noise): a wide kernel (0.3) strays from the held-out digits, a narrow one
    (0.02) stays near them; the lower FD wins, ties go to the first candidate, and the prior keeps the choice."""
    import colddiff.degradations as cd
    from colddiff.evaluation import build_extractor, select_prior_setting
    from colddiff.pipeline import Pipeline
    from colddiff.priors import LowResKDEPrior

    train = EmbeddedMNIST("train", ImageTransform(28, 1, train=False))
    test = EmbeddedMNIST("test", ImageTransform(28, 1, train=False))
    prior = LowResKDEPrior(1, 7, bandwidth=0.1)
    prior.fit(torch.stack([train[i] for i in range(500)]))
    model = Pipeline(cd.Pixelate(21, schedule="linear"), _Identity(), prior=prior, image_size=28, channels=1,
                     sampler="naive")
    reference = torch.stack([test[i] for i in range(200)])
    best, rows = select_prior_setting(model, "bandwidth", [0.3, 0.02], reference, build_extractor("pixels"), num=200)
    assert best == 0.02 and model.prior.bandwidth == 0.02 and rows[0]["FD"] > rows[1]["FD"]
    best, rows = select_prior_setting(model, "bandwidth", [0.05, 0.05], reference, build_extractor("pixels"), num=50)
    assert best == 0.05 and rows[0]["FD"] == rows[1]["FD"]  # the same seed: the same images
    with pytest.raises(ValueError, match="has no setting 'width'"):
        select_prior_setting(model, "width", [1.0], reference, build_extractor("pixels"))
