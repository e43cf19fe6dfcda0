"""The layer contract over the whole registry: ``backward`` fills ``grads``, a plain dict of
arrays equal to central finite differences (float64), and reading it computes nothing."""

import numpy as np
import pytest

from cnncli.gradcheck import TOLERANCE, check_layer
from cnncli.layers import LAYERS
from test_layers import MINIMAL_SPECS


def _built(name, rng):
    spec, in_shape, _ = MINIMAL_SPECS[name]
    layer = LAYERS[name].from_spec(dict(spec), in_shape, rng, np.float64)
    x = rng.standard_normal((3, *in_shape))
    x[np.abs(x) < 1e-2] = 0.5  # off ReLU's kink
    return layer, x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_backward_fills_grads_with_the_finite_difference_gradient(name):
    assert name in MINIMAL_SPECS, f"add {name} to tests/test_layers.py's MINIMAL_SPECS"
    rng = np.random.default_rng(7)
    layer, x = _built(name, rng)
    results = check_layer(layer, x, rng, max_entries=None)
    assert {r.name for r in results} == {"x", *layer.params}
    for r in results:
        assert r.checked > 0 and r.max_rel_error <= TOLERANCE, (r.name, r.max_rel_error, r.skipped)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_grads_is_a_plain_dict_that_reading_does_not_recompute(name):
    rng = np.random.default_rng(3)
    layer, x = _built(name, rng)
    assert not isinstance(getattr(type(layer), "grads", None), property)
    out = layer.forward(x)
    layer.backward(rng.standard_normal(out.shape))
    first = layer.grads
    assert type(first) is dict and set(first) == set(layer.params)
    snapshot = {k: g.copy() for k, g in first.items()}
    second = layer.grads
    assert second is first
    for key, g in second.items():
        assert g is first[key] and isinstance(g, np.ndarray)
        np.testing.assert_array_equal(g, snapshot[key])
        assert g.shape == layer.params[key].shape and g.dtype == layer.params[key].dtype
