"""FID: the Fréchet distance against closed forms and an independent computation, and the Inception loader."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from eval.paper.fid import (
    InceptionFeatures,
    fid,
    find_inception_weights,
    frechet_distance,
    statistics,
)
from retarget.errors import WeightsError


def test_one_dimensional_gaussians():
    # N(0, 1) vs N(3, 4): (0 - 3)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
    assert frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([3.0]), np.array([[4.0]])) == \
        pytest.approx(10.0, abs=1e-9)


def test_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_general_covariances_equal_the_symmetric_form():
    """tr(S1 S2)^(1/2) computed as tr(S1^(1/2) S2 S1^(1/2))^(1/2): an independent route to the same number."""
    rng = np.random.default_rng(1)
    for dim in (2, 5, 16):
        x, y = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        s1, s2 = x @ x.T + 0.1 * np.eye(dim), y @ y.T + 0.1 * np.eye(dim)
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        root1 = np.real(linalg.sqrtm(s1))
        cross = np.real(linalg.sqrtm(root1 @ s2 @ root1))
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
        assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))


def test_statistics_of_samples_and_singular_covariances():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(5, 12))  # fewer samples than dimensions: singular covariance
    mu, sigma = statistics(features)
    assert np.allclose(mu, features.mean(0)) and np.allclose(sigma, np.cov(features.T))
    other = rng.normal(1.0, 1.0, size=(6, 12))
    value = frechet_distance(mu, sigma, *statistics(other))
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError):
        statistics(features[:1])


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize("n, m, dim", [(5, 7, 16), (3, 30, 12), (40, 50, 16)])
def test_fid_of_features_equals_the_statistics_route(n, m, dim):
    """Few samples (the samples' span) and many samples (the D x D square root) give the Fréchet distance of the
    sample statistics."""
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, dim)), rng.normal(0.5, 1.5, size=(m, dim))
    mu1, s1 = statistics(a)
    mu2, s2 = statistics(b)
    root1 = np.real(linalg.sqrtm(s1))
    cross = np.real(linalg.sqrtm(root1 @ s2 @ root1))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross)
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-9)


def test_inception_features(random_inception):
    features = InceptionFeatures(random_inception, device="cpu", batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = features(images)
    assert out.shape == (3, 2048) and np.isfinite(out).all()
    assert np.allclose(features(images[1:2]), out[1:2], atol=1e-4)  # batch-independent
    assert not np.allclose(out[0], out[1])


def test_inception_weights_errors_and_lookup(tmp_path, monkeypatch, random_inception):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(WeightsError, match="notes.pth"):
        InceptionFeatures(text)
    import torch

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(WeightsError, match="Inception-v3 layout"):
        InceptionFeatures(wrong)
    with pytest.raises(WeightsError, match="no such file"):
        find_inception_weights(tmp_path / "absent.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_inception_weights() is None  # nothing in the cache, nothing downloaded
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(random_inception)
    assert find_inception_weights() == cached
    assert find_inception_weights(random_inception) == random_inception
