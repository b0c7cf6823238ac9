"""Image tokenizers: a grid of latents, quantized at every position of the encoder's feature map."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rqvae.quantizer.residual import quantize
from rqvae.trainer import config
from rqvae.trainer.config import ModelConfig
from rqvae.trainer.errors import ConfigError
from rqvae.trainer.model import RQVAE

GRID = ModelConfig(image_shape=(16, 16, 3), architecture="conv", latent="grid",
                   conv_channels=(4, 8), latent_dim=5, num_levels=2, num_codes=16)


def _init(cfg=GRID, batch=3):
    model = RQVAE(cfg)
    x = jax.random.uniform(jax.random.key(1), (batch, cfg.input_dim))
    return model, model.init(jax.random.key(0), x), x


@pytest.mark.parametrize("stages, side", [((4,), 8), ((4, 8), 4), ((4, 8, 8), 2)])
def test_images_become_grids_of_code_stacks_and_back(stages, side):
    cfg = dataclasses.replace(GRID, conv_channels=stages)
    model, params, x = _init(cfg)
    x_recon, aux = model.apply(params, x)
    points = 3 * side * side
    assert x_recon.shape == x.shape
    assert aux["indices"].shape == (2, points) and aux["z_e"].shape == (points, 5)
    assert aux["level_inputs"].shape == (2, points, 5)
    codes = model.apply(params, x, method=RQVAE.encode)
    assert codes.shape == (3, side, side, 2)
    # The code grid is the quantizer's choice at each position, image by image.
    np.testing.assert_array_equal(codes.reshape(-1, 2).T, aux["indices"])


def test_a_1x1_grid_quantizes_as_the_vector_quantizer_does():
    # With one position per image, the points are the images' latents: the same assignments as
    # quantizing those latents as vectors.
    cfg = dataclasses.replace(GRID, image_shape=(4, 4, 1))  # two stages: 1x1
    model, params, x = _init(cfg, batch=6)
    _, aux = model.apply(params, x)
    z_e = model.apply(params, x, method=lambda m, x: m.encoder(x))
    assert z_e.shape == (6, 1, 1, 5)
    _, vector_aux = quantize(z_e.reshape(6, 5), params["params"]["codebook"])
    np.testing.assert_array_equal(aux["indices"], vector_aux["indices"])


def test_a_grid_needs_conv_and_an_image_that_divides():
    with pytest.raises(ConfigError, match="model.latent 'grid' needs model.architecture"):
        config.replace(config.TrainerConfig(), {"model.latent": "grid"})
    with pytest.raises(ConfigError, match="a grid latent downsamples by 4 .* images of 10x10"):
        config.replace(config.TrainerConfig(), {
            "model.latent": "grid", "model.architecture": "conv", "model.image_shape": [10, 10, 1]})


def test_the_transport_term_reaches_every_code_from_the_positions(tiny_cfg, digits):
    # 8 images of 8x8 on a 4x4 grid give 128 points a step for 64 codes far from the data: the
    # term re-anchors every code onto positions within a few steps.
    from rqvae.trainer import step

    grid_cfg = config.step_config(config.replace(tiny_cfg, {
        "model.architecture": "conv", "model.latent": "grid", "model.conv_channels": [4],
        "model.num_codes": 64, "batch_size": 8, "transport.anchor_window": 2}))
    state = step.init_state(grid_cfg, len(digits.train))
    params = state.params
    far = params["params"]["codebook"] + 50.0
    state = state.replace(params={**params, "params": {**params["params"], "codebook": far}})
    update = jax.jit(step._update_on_device_data, static_argnames="cfg")
    picked = jnp.zeros((2, 64), bool)
    for _ in range(12):
        state, outcome = update(state, jnp.asarray(digits.train), cfg=grid_cfg)
        picked |= outcome["counts"] > 0
    assert bool(picked.all()), (~picked).sum(1)


def test_eval_counts_codes_over_positions_and_encode_writes_grids(tiny_cfg, digits):
    from rqvae.trainer import evaluate, step

    cfg = config.step_config(config.replace(tiny_cfg, {
        "model.architecture": "conv", "model.latent": "grid", "model.conv_channels": [4]}))
    params = step.init_state(cfg, len(digits.train)).params
    codes = evaluate.encode(params, digits.train, cfg)
    assert codes.shape == (len(digits.train), 4, 4, 2) and codes.dtype == np.int32
    result = evaluate.evaluate(params, digits, cfg)
    used = [len(np.unique(codes[..., level])) for level in range(2)]
    assert result["train_used"] == used  # every position of every image counted, no padding


def test_one_codebook_shared_by_every_level(tiny_cfg, digits):
    # RQ-VAE's tokenizer (Lee et al. 2022): one codebook, its gradient the levels' sum; restart
    # and re-anchoring keep one codebook, re-seeded where no level picks a code.
    from rqvae.trainer import step

    shared = config.step_config(config.replace(tiny_cfg, {
        "model.architecture": "conv", "model.latent": "grid", "model.conv_channels": [4],
        "model.shared_codebook": True, "model.num_codes": 64, "batch_size": 8,
        "transport.anchor_window": 2}))
    state = step.init_state(shared, len(digits.train))
    assert state.params["params"]["codebook"].shape == (1, 64, 4)
    x = jnp.asarray(digits.train[:8])
    model = step.make_model(shared)
    _, aux = model.apply(state.params, x)
    assert aux["codebook"].shape == (2, 64, 4)
    np.testing.assert_array_equal(aux["codebook"][0], aux["codebook"][1])
    params = state.params
    far = params["params"]["codebook"] + 50.0
    state = state.replace(params={**params, "params": {**params["params"], "codebook": far}})
    update = jax.jit(step._update_on_device_data, static_argnames="cfg")
    picked = jnp.zeros((64,), bool)
    for _ in range(12):
        state, outcome = update(state, jnp.asarray(digits.train), cfg=shared)
        picked |= (outcome["counts"] > 0).any(0)
    assert state.params["params"]["codebook"].shape == (1, 64, 4)
    assert bool(picked.all()), int((~picked).sum())
    fitted = step.kmeans_init(step.init_state(shared, len(digits.train)), digits.train, cfg=shared)
    assert fitted.params["params"]["codebook"].shape == (1, 64, 4)


def test_each_levels_reconstruction_decodes_the_partial_sum_of_its_codes():
    model, params, x = _init()
    levels = model.apply(params, x, method=RQVAE.reconstruct_levels)
    x_recon, aux = model.apply(params, x)
    assert levels.shape == (2, *x.shape)
    np.testing.assert_allclose(levels[-1], x_recon, rtol=1e-6, atol=1e-6)
    # Level 1 alone: the decoder on the level-1 codes, laid out as the grid.
    first = model.apply(params, aux["level_codes"][0].reshape(3, 4, 4, 5),
                        method=lambda m, z: jax.nn.sigmoid(m.decoder(z)))
    np.testing.assert_allclose(levels[0], first, rtol=1e-6, atol=1e-6)
