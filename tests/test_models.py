"""The cached float baselines: converged_float_model stops on a validation split of the training set and is cached;
a damaged cache file is trained again with a warning."""

import re

import numpy as np
import pytest

from tf_ecqx import models
from tf_ecqx.datasets import Split


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CACHE_DIR", tmp_path)
    return tmp_path


def test_the_converged_baseline_stops_early_on_held_out_training_images_and_is_cached(fashion_small, cache, capsys):
    train = Split(fashion_small[0].x[:1024], fashion_small[0].y[:1024])
    model = models.converged_float_model("mlp", train, patience=1, max_epochs=40, verbose=2)
    epochs = re.findall(r"Epoch (\d+)/40", capsys.readouterr().out)
    assert 2 <= len(epochs) < 40, "early stopping ended the run (1024 images overfit long before 40 epochs)"
    (cached,) = cache.glob("mlp_converged_*.keras")
    again = models.converged_float_model("mlp", train, patience=1, max_epochs=40, verbose=2)
    assert not re.findall(r"Epoch \d+/40", capsys.readouterr().out), "the second call loads the cache"
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cached.exists()


def test_a_damaged_cache_file_is_trained_again_with_a_warning(fashion_small, cache):
    train = Split(fashion_small[0].x[:256], fashion_small[0].y[:256])
    path = cache / "mlp_e1_b64_s0_n256.keras"
    path.write_bytes(b"not a keras file")
    with pytest.warns(UserWarning, match=r"cannot be loaded .* training it again and replacing the file"):
        models.trained_float_model("mlp", train, epochs=1, verbose=0)
    assert path.stat().st_size > 1000


def test_a_validation_fraction_outside_0_1_is_refused(fashion_small, cache):
    with pytest.raises(ValueError, match=r"validation_fraction=1\.5 must lie in \(0, 1\)"):
        models.converged_float_model("mlp", fashion_small[0], validation_fraction=1.5)
