import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqvae.quantizer.residual import quantize
from rqvae.trainer.config import ModelConfig
from rqvae.trainer.model import (
    RQVAE,
    StridedConv,
    StridedConvTranspose,
    sigmoid_with_constant_slope,
)

CFG = ModelConfig(image_shape=(8, 8, 1), encoder_hidden=(32,), latent_dim=4, num_levels=3,
                  num_codes=8)
CONV_CFG = ModelConfig(image_shape=(7, 10, 3), architecture="conv", conv_channels=(4, 8),
                       latent_dim=5, num_codes=8)


def _init(cfg=CFG, batch=5):
    model = RQVAE(cfg)
    x = jax.random.uniform(jax.random.key(1), (batch, cfg.input_dim))
    return model, model.init(jax.random.key(0), x), x


def test_forward_shapes_and_aux_keys():
    model, params, x = _init()
    x_recon, aux = model.apply(params, x)
    L, K, D, B = CFG.num_levels, CFG.num_codes, CFG.latent_dim, 5
    assert x_recon.shape == x.shape
    shapes = {k: v.shape for k, v in aux.items()}
    assert shapes["codebook"] == (L, K, D) and shapes["indices"] == (L, B)
    assert shapes["z_e"] == shapes["z_q"] == (B, D) and shapes["level_codes"] == (L, B, D)
    assert shapes["level_inputs"] == (L, B, D)


def test_the_output_sigmoid_keeps_its_value_and_a_gradient_where_it_saturates():
    model, params, x = _init()
    x_recon, aux = model.apply(params, x)
    logits = model.apply(params, aux["z_q"], method=lambda m, z: m.decoder(z))
    np.testing.assert_array_equal(x_recon, jax.nn.sigmoid(logits))  # bit for bit
    # A pixel at logit -30 with target 1: the exact slope leaves it ~1e-13 of a gradient, the
    # constant slope (output - target) / 2 of the binary cross-entropy.
    logits_N = jnp.array([-30.0, 0.0, 3.0])
    target_N = jnp.array([1.0, 1.0, 0.0])
    squared_error = lambda f: jax.grad(lambda z: jnp.sum((f(z) - target_N) ** 2))(logits_N)
    constant = squared_error(sigmoid_with_constant_slope)
    np.testing.assert_allclose(constant, (jax.nn.sigmoid(logits_N) - target_N) / 2, rtol=1e-6)
    exact = squared_error(jax.nn.sigmoid)
    assert abs(float(exact[0])) < 1e-12 and np.all(np.sign(exact) == np.sign(constant))
    np.testing.assert_allclose(constant[1], exact[1], rtol=1e-6)  # the same slope at 0
    saved = RQVAE(dataclasses.replace(CFG, sigmoid_grad="exact"))
    np.testing.assert_array_equal(saved.apply(params, x)[0], x_recon)


def test_levels_quantize_the_residual():
    model, params, x = _init()
    _, aux = model.apply(params, x)
    np.testing.assert_allclose(aux["level_inputs"][0], aux["z_e"])
    np.testing.assert_allclose(aux["level_inputs"][1], aux["z_e"] - aux["level_codes"][0], atol=1e-6)
    picked = aux["codebook"][jnp.arange(CFG.num_levels)[:, None], aux["indices"]]
    np.testing.assert_allclose(aux["z_q"], picked.sum(0), atol=1e-6)


def test_codebook_entry_quantizes_to_itself():
    codebook = jax.random.normal(jax.random.key(2), (2, 16, 3))
    z_q, aux = quantize(codebook[0], codebook)
    np.testing.assert_array_equal(aux["indices"][0], np.arange(16))
    # The residual is then zero, so level 2 adds its code nearest the origin.
    nearest_origin = codebook[1][jnp.argmin(jnp.sum(codebook[1] ** 2, -1))]
    np.testing.assert_allclose(z_q, codebook[0] + nearest_origin, atol=1e-6)


def test_codebook_starts_in_the_classic_small_cube():
    _, params, _ = _init()
    codebook = params["params"]["codebook"]
    assert float(jnp.max(jnp.abs(codebook))) <= 1.0 / CFG.num_codes
    assert float(jnp.std(codebook)) > 0.2 / CFG.num_codes


def test_straight_through_reaches_the_encoder_but_not_the_codebook():
    model, params, x = _init()

    def recon(p):
        x_recon, _ = model.apply(p, x)
        return jnp.mean((x - x_recon) ** 2)

    grads = jax.grad(recon)(params)["params"]
    assert float(jnp.abs(grads["codebook"]).max()) == 0.0
    encoder_grad = jax.tree.leaves(grads["encoder"])
    assert all(float(jnp.abs(g).max()) > 0 for g in encoder_grad)


def test_conv_architecture_round_trips_odd_image_shapes():
    cfg = CONV_CFG
    model = RQVAE(cfg)
    x = jax.random.uniform(jax.random.key(1), (3, cfg.input_dim))
    params = jax.jit(model.init)(jax.random.key(0), x)  # eager conv ops compile one by one
    x_recon, aux = jax.jit(model.apply)(params, x)
    assert x_recon.shape == (3, 7 * 10 * 3) and aux["z_e"].shape == (3, 5)
    kernels = [leaf.shape for leaf in jax.tree.leaves(params["params"]["encoder"]) if leaf.ndim == 4]
    assert kernels == [(4, 4, 3, 4), (4, 4, 4, 8)]


@pytest.mark.parametrize("ours, flax_layer", [
    (StridedConv(5), nn.Conv(5, (4, 4), strides=(2, 2))),
    (StridedConvTranspose(5), nn.ConvTranspose(5, (4, 4), strides=(2, 2))),
])
@pytest.mark.parametrize("height, width", [(7, 10), (1, 3)])
def test_conv_layers_are_flax_convolutions(ours, flax_layer, height, width):
    # Same parameter tree, same init, same function and gradients: only the formulation differs.
    x = jax.random.normal(jax.random.key(1), (2, height, width, 3))
    params = jax.jit(ours.init)(jax.random.key(0), x)
    flax_params = jax.jit(flax_layer.init)(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, params, flax_params)
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)

    def loss(layer):
        return jax.jit(jax.value_and_grad(
            lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x))), argnums=(0, 1)))(params, x)

    (value, grads), (flax_value, flax_grads) = loss(ours), loss(flax_layer)
    assert ours.apply(params, x).shape == flax_layer.apply(params, x).shape
    np.testing.assert_allclose(value, flax_value, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 grads, flax_grads)


def _dot_input_dtypes(jaxpr):
    """The dtype of the first operand of every matrix product, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn.invars[0].aval.dtype
        for value in eqn.params.values():
            if hasattr(value, "eqns") or hasattr(value, "jaxpr"):
                yield from _dot_input_dtypes(getattr(value, "jaxpr", value))


@pytest.mark.parametrize("cfg", [CFG, CONV_CFG], ids=["mlp", "conv"])
def test_bfloat16_compute_leaves_parameters_quantizer_and_outputs_float32(cfg):
    bf16_model = RQVAE(dataclasses.replace(cfg, compute_dtype="bfloat16"))
    model = RQVAE(cfg)
    x = jax.random.uniform(jax.random.key(1), (3, cfg.input_dim))
    params = jax.jit(model.init)(jax.random.key(0), x)  # eager conv ops compile one by one
    # The same float32 parameters (shapes and dtypes, without compiling another init).
    assert jax.eval_shape(bf16_model.init, jax.random.key(0), x) == jax.eval_shape(lambda: params)
    (x_recon, aux), (bf16_recon, bf16_aux) = jax.jit(model.apply)(params, x), jax.jit(
        bf16_model.apply)(params, x)
    assert bf16_recon.dtype == bf16_aux["z_e"].dtype == bf16_aux["z_q"].dtype == jnp.float32
    np.testing.assert_allclose(bf16_recon, x_recon, atol=2e-2)  # 8 mantissa bits
    dtypes = list(_dot_input_dtypes(jax.make_jaxpr(bf16_model.apply)(params, x).jaxpr))
    # The quantizer's distances, one product per level, in float32; every layer in bfloat16.
    assert dtypes.count(jnp.float32) == cfg.num_levels
    assert dtypes.count(jnp.bfloat16) == len(dtypes) - cfg.num_levels >= 4
