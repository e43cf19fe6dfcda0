"""The gradient check at kinks: correct code never fails on ReLU zeros and max-pool ties (50
random batches on digits and on MNIST-like images with exact zero backgrounds), wrong gradients
still fail by name, and a gradient that could not be checked at all is never a pass."""

import numpy as np
import pytest

from cnncli import gradcheck
from cnncli.gradcheck import TOLERANCE, check_layer
from cnncli.layers import LAYERS, MaxPool2D, ReLU


KINKY_NETWORK = """
network:
  - {type: relu}
  - {type: POOL, kernel_size: 2}
  - {type: conv2d, out_channels: 4, kernel_size: 3}
  - {type: flatten}
  - {type: dense, out_features: 10}
training: {loss: mse}
"""


def kinky_config(tmp_path, data: str, pool: str = "max_pool2d", name: str = "kinky"):
    path = tmp_path / f"{name}-{pool}.yaml"
    path.write_text(f"seed: 0\ndata: {data}\n" + KINKY_NETWORK.replace("POOL", pool))
    return path


def mnist_like_npz(tmp_path, n=120, size=12):
    """Images like MNIST's: uint8 strokes on an exactly zero background."""
    rng = np.random.default_rng(7)
    x = np.zeros((n, size, size), np.uint8)
    for img in x:
        for _ in range(3):
            r, c, length = rng.integers(1, size - 1), rng.integers(1, size - 1), rng.integers(2, 8)
            if rng.random() < 0.5:
                img[r, c:c + length] = rng.integers(100, 256)
            else:
                img[r:r + length, c] = rng.integers(100, 256)
    y = rng.integers(0, 10, n)
    path = tmp_path / "mnist-like.npz"
    np.savez(path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    assert (x == 0).mean() > 0.7  # mostly background
    return path


def test_relu_then_max_pool_never_fails_correct_code_on_50_random_batches(cnn, tmp_path):
    """The issue's false failure: ReLU zeros tie in max-pool windows and the central difference
    straddled the tie. 50 batches (seeds) each on digits and on MNIST-like images: 0 failures."""
    npz = mnist_like_npz(tmp_path)
    configs = [kinky_config(tmp_path, "{name: digits}"),
               kinky_config(tmp_path, f"{{name: npz, path: '{npz}'}}", name="mnist-like")]
    skipped = 0
    for config in configs:
        for seed in range(50):
            result = cnn("gradcheck", str(config), "--seed", str(seed), "--max-entries", "40")
            assert result.exit_code == 0, (config, seed, result.output)
            assert "FAIL" not in result.output and "unchecked" not in result.output
            assert "skipped at kinks" in result.output  # the column is shown
            skipped += sum(int(line.split("│")[4]) for line in result.output.splitlines()
                           if line.count("│") == 7 and line.split("│")[4].strip().isdigit())
    # The check points did meet kinks (ties within eps), and skipped them instead of failing.
    assert skipped > 0


def test_a_max_pool_routing_to_the_wrong_window_entry_fails_by_name(cnn, monkeypatch, tmp_path):
    class WrongWindowMaxPool(MaxPool2D):
        """Sends each window's gradient to the entry after its maximum (row-major, cyclic)."""

        def forward(self, x):
            self._x = x
            return super().forward(x)

        def backward(self, dout):
            x, k = self._x, self.kernel_size
            n, c, p, q = dout.shape
            win = x[:, :, :p * k, :q * k].reshape(n, c, p, k, q, k).transpose(0, 1, 2, 4, 3, 5)
            arg = (win.reshape(n, c, p, q, k * k).argmax(axis=-1) + 1) % (k * k)  # wrong entry
            rows = np.arange(p)[:, None] * k + arg // k
            cols = np.arange(q)[None, :] * k + arg % k
            dx = np.zeros_like(x)
            ni, ci = np.indices((n, c))
            np.add.at(dx, (ni[..., None, None], ci[..., None, None], rows, cols), dout)
            return dx

    WrongWindowMaxPool.type_name = "wrong_max_pool2d"
    monkeypatch.setitem(LAYERS, "wrong_max_pool2d", WrongWindowMaxPool)
    config = kinky_config(tmp_path, "{name: digits}", pool="wrong_max_pool2d")
    result = cnn("gradcheck", str(config))
    assert result.exit_code == 1, result.output
    assert "layer 1 (wrong_max_pool2d) x" in result.output
    assert "layer 0" not in result.output.split("Error:")[1]  # only the broken layer is named


def test_a_gradient_on_kinks_only_is_unchecked_not_passed():
    """ReLU inputs exactly at 0 and max-pool windows of equal entries: every entry is a kink."""
    rng = np.random.default_rng(0)
    for layer, x in [(ReLU(), np.zeros((2, 3, 4, 4))), (MaxPool2D(2), np.ones((2, 3, 4, 4)))]:
        (r,) = check_layer(layer, x, rng, max_entries=None)
        assert r.unchecked and not r.passed and r.checked == 0 and r.skipped == x.size
        assert np.isnan(r.max_rel_error)


def test_kinks_are_skipped_and_the_rest_still_checked():
    """ReLU inputs of which a third sit exactly at 0: those are skipped, the others checked."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 30))
    x[:, ::3] = 0.0
    (r,) = check_layer(ReLU(), x, rng, max_entries=None)
    assert r.passed and r.skipped == 40 and r.checked == 80 and r.max_rel_error < TOLERANCE


def test_max_pool_on_relu_zeros_skips_the_tied_windows_and_checks_the_others():
    """ReLU outputs without any nudge: about 1 window in 16 is all zeros, a four-way tie; the
    central difference there mixes the slopes (the check before this one failed on them)."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((4, 3, 8, 8)), 0.0)
    (r,) = check_layer(MaxPool2D(2), x, rng, max_entries=None)
    tied = int((x.reshape(4, 3, 4, 2, 4, 2).max(axis=(3, 5)) == 0).sum())
    assert tied > 0
    assert r.passed and r.skipped == 4 * tied and r.checked == x.size - 4 * tied


def test_a_wrong_gradient_on_a_kink_free_layer_is_never_skipped():
    """Twice the true gradient everywhere: the one-sided differences agree, so nothing is excused."""
    class DoubleReLU(ReLU):
        def backward(self, dout):
            return 2 * super().backward(dout)

    rng = np.random.default_rng(2)
    (r,) = check_layer(DoubleReLU(), rng.standard_normal((3, 20)), rng, max_entries=None)
    assert not r.passed and r.skipped == 0 and r.max_rel_error > 0.1


def test_the_command_exits_1_with_a_hint_when_a_gradient_is_unchecked(cnn, monkeypatch, tmp_path):
    """All-black images and no jitter: the ReLU input and every max-pool window sit on kinks."""
    monkeypatch.setattr(gradcheck, "JITTER", 0.0)
    monkeypatch.setattr(gradcheck, "LAYER_NUDGE", 0.0)
    npz = tmp_path / "black.npz"
    np.savez(npz, x_train=np.zeros((10, 8, 8), np.uint8), y_train=np.arange(10),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.arange(2))
    config = kinky_config(tmp_path, f"{{name: npz, path: '{npz}'}}")
    result = cnn("gradcheck", str(config))
    assert result.exit_code == 1, result.output
    assert "unchecked" in result.output
    assert "layer 0 (relu) x" in result.output and "layer 1 (max_pool2d) x" in result.output
    assert "try another --seed or a larger --batch" in result.output
    assert "all" not in result.output.splitlines()[-1]  # never "all ... gradients pass"
