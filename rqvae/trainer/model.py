"""The RQ-VAE: encoder (MLP or conv), N-level residual quantizer with straight-through gradients,
mirrored decoder. Images travel flat, (batch, height * width * channels), in [0, 1].

`ModelConfig.compute_dtype` sets the dtype of the encoder's and decoder's products; their
parameters, and everything they return (z_e, the reconstruction), are float32, so the quantizer,
the losses and the optimizer never see another dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rqvae.quantizer.layer import ResidualVQ
from rqvae.trainer.config import ModelConfig


class MLP(nn.Module):
    widths: tuple[int, ...]  # hidden widths then the output width; ReLU between layers
    dtype: Any = jnp.float32  # of the products; parameters and the output are float32

    @nn.compact
    def __call__(self, x):
        for width in self.widths[:-1]:
            x = nn.relu(_dense(width, self.dtype)(x))
        return _dense(self.widths[-1], self.dtype)(x).astype(jnp.float32)


def _dense(features: int, dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32)


# The conv layers compute 4x4 stride-2 convolutions and their transposes as one matrix product
# each (patches @ kernel), not as `lax.conv`. XLA:CPU leaves the weight gradient of a strided or
# transposed convolution (a dilated convolution with the batch as its feature dimension) to a
# generic single-threaded loop, and inside the train loop's while body it does so for every conv
# layer: a step of the 32x32x3 model took seconds, 20 times its arithmetic. Products
# differentiate into products, which every backend runs at speed. Parameters and function are
# those of `nn.Conv` and `nn.ConvTranspose(features, (4, 4), strides=(2, 2))`, SAME padding.


def _patches_2x2(x_BxHxWxC):
    """Every 2x2 window at stride 1 as one pixel of 4C channels, ordered (row, column, channel):
    (B, H-1, W-1, 4C)."""
    _, h, w, _ = x_BxHxWxC.shape
    return jnp.concatenate([x_BxHxWxC[:, dy:h - 1 + dy, dx:w - 1 + dx]
                            for dy in (0, 1) for dx in (0, 1)], axis=-1)


def _kernel_and_bias(module: nn.Module, x_BxHxWxC, features: int, dtype):
    """The parameters of `nn.Conv` / `nn.ConvTranspose(features, (4, 4))` (same names, shapes and
    initializers), and the input, promoted to `dtype` for the product."""
    kernel = module.param("kernel", nn.initializers.lecun_normal(),
                          (4, 4, x_BxHxWxC.shape[-1], features))
    bias = module.param("bias", nn.initializers.zeros_init(), (features,))
    return nn.dtypes.promote_dtype(x_BxHxWxC, kernel, bias, dtype=dtype)


class StridedConv(nn.Module):
    """`nn.Conv(features, (4, 4), strides=(2, 2))`, SAME padding, as one matrix product of the
    4x4 patches at stride 2 (im2col) with the kernel."""

    features: int
    dtype: Any = jnp.float32  # of the product; the parameters are float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        _, height, width, channels = x_BxHxWxC.shape
        x_BxHxWxC, kernel, bias = _kernel_and_bias(self, x_BxHxWxC, self.features, self.dtype)
        out_h, out_w = -(-height // 2), -(-width // 2)
        # SAME pads one pixel before and the rest after, to 2 * out + 2.
        x = jnp.pad(x_BxHxWxC, ((0, 0), (1, 2 * out_h + 1 - height), (1, 2 * out_w + 1 - width),
                                (0, 0)))
        patches = jnp.concatenate([x[:, dy:dy + 2 * out_h:2, dx:dx + 2 * out_w:2]
                                   for dy in range(4) for dx in range(4)], axis=-1)
        return patches @ kernel.reshape(16 * channels, self.features) + bias


class StridedConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, (4, 4), strides=(2, 2))`, SAME padding, as one matrix product.

    Output pixel 2j + r (phase r) reads input pixels j - 1 + r and j + r, with kernel taps r and
    2 + r: every phase is a 2x2 stride-1 convolution of the input (sub-pixel convolution), and the
    four phases interleave into the image (depth-to-space).
    """

    features: int
    dtype: Any = jnp.float32  # of the product; the parameters are float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        batch, height, width, channels = x_BxHxWxC.shape
        x_BxHxWxC, kernel, bias = _kernel_and_bias(self, x_BxHxWxC, self.features, self.dtype)
        patches = _patches_2x2(jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0))))
        # kernel row 2 * tap_row + phase_row: columns (phase row, phase col, feature)
        kernel = kernel.reshape(2, 2, 2, 2, channels, self.features).transpose(0, 2, 4, 1, 3, 5)
        y = patches @ kernel.reshape(4 * channels, 4 * self.features)
        y = y.reshape(batch, height + 1, width + 1, 2, 2, self.features)
        # Phase (r, s) of input pixel j sits at window j + r, so each phase is its own slice.
        rows = [jnp.stack([y[:, r:r + height, s:s + width, r, s] for s in (0, 1)], axis=3)
                for r in (0, 1)]
        return jnp.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width, self.features) + bias


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions, then a dense layer to the latent: (B, H*W*C) -> (B, D)."""

    image_shape: tuple[int, ...]
    channels: tuple[int, ...]
    latent_dim: int
    dtype: Any = jnp.float32  # of the products; parameters and the output are float32

    @nn.compact
    def __call__(self, x_BxP):
        x = x_BxP.reshape(-1, *self.image_shape)
        for i, width in enumerate(self.channels):  # named as nn.Conv would be: same parameters
            x = nn.relu(StridedConv(width, self.dtype, name=f"Conv_{i}")(x))
        return _dense(self.latent_dim, self.dtype)(x.reshape(x.shape[0], -1)).astype(jnp.float32)


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder: (B, D) -> (B, H*W*C) pre-sigmoid logits."""

    image_shape: tuple[int, ...]
    channels: tuple[int, ...]
    dtype: Any = jnp.float32  # of the products; parameters and the output are float32

    @nn.compact
    def __call__(self, z_BxD):
        height, width, out_channels = self.image_shape
        # Each stride-2 SAME convolution rounds up; the output is cropped back to the image.
        small = ((height + 3) // 4, (width + 3) // 4)
        x = nn.relu(_dense(small[0] * small[1] * self.channels[-1], self.dtype)(z_BxD))
        x = x.reshape(-1, *small, self.channels[-1])
        x = nn.relu(StridedConvTranspose(self.channels[0], self.dtype, name="ConvTranspose_0")(x))
        x = StridedConvTranspose(out_channels, self.dtype, name="ConvTranspose_1")(x)
        return x[:, :height, :width, :].reshape(x.shape[0], -1).astype(jnp.float32)


class GridEncoder(nn.Module):
    """Stride-2 convolutions, then a 1x1 projection to the latent at every position:
    (B, H*W*C) -> (B, H / 2^S, W / 2^S, D) for S = len(channels)."""

    image_shape: tuple[int, ...]
    channels: tuple[int, ...]
    latent_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxP):
        x = x_BxP.reshape(-1, *self.image_shape)
        for i, width in enumerate(self.channels):
            x = nn.relu(StridedConv(width, self.dtype, name=f"Conv_{i}")(x))
        return _dense(self.latent_dim, self.dtype)(x).astype(jnp.float32)  # 1x1: per position


class GridDecoder(nn.Module):
    """The mirror of GridEncoder: (B, H', W', D) -> (B, H*W*C) pre-sigmoid logits."""

    image_shape: tuple[int, ...]
    channels: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z_BxHxWxD):
        x = nn.relu(_dense(self.channels[-1], self.dtype)(z_BxHxWxD))  # 1x1
        widths = (*reversed(self.channels[:-1]), self.image_shape[-1])
        for i, width in enumerate(widths):
            x = StridedConvTranspose(width, self.dtype, name=f"ConvTranspose_{i}")(x)
            x = nn.relu(x) if i < len(widths) - 1 else x
        return x.reshape(x.shape[0], -1).astype(jnp.float32)


class RQVAE(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.compute_dtype)
        if cfg.latent == "grid":
            self.encoder = GridEncoder(cfg.image_shape, cfg.conv_channels, cfg.latent_dim, dtype)
            self.decoder = GridDecoder(cfg.image_shape, cfg.conv_channels, dtype)
        elif cfg.architecture == "conv":
            self.encoder = ConvEncoder(cfg.image_shape, cfg.conv_channels, cfg.latent_dim, dtype)
            self.decoder = ConvDecoder(cfg.image_shape, cfg.conv_channels, dtype)
        else:
            self.encoder = MLP((*cfg.encoder_hidden, cfg.latent_dim), dtype)
            decoder_hidden = cfg.decoder_hidden or tuple(reversed(cfg.encoder_hidden))
            self.decoder = MLP((*decoder_hidden, cfg.input_dim), dtype)
        # The library's layer, in this module's scope: its `codebook` parameter is the
        # model's own (params["params"]["codebook"]).
        self.quantizer = ResidualVQ(cfg.num_levels, cfg.num_codes, cfg.latent_dim,
                                    cfg.shared_codebook)
        nn.share_scope(self, self.quantizer)

    def __call__(self, x_BxP: jax.Array) -> tuple[jax.Array, dict]:
        """Returns the reconstruction (images: in [0, 1]) and the quantizer's aux
        (`ResidualVQ`): the quantizer sees one point per image (vector latent), or one per
        position of each image's feature map (grid latent, N = B * H' * W')."""
        z_q, _, aux = self.quantizer(self.encoder(x_BxP))
        return self._output(self.decoder(z_q)), aux

    def reconstruct_levels(self, x_BxP: jax.Array) -> jax.Array:
        """The reconstruction from the codes of the first l levels, for l = 1 .. L: (L, B, P);
        the last is the model's reconstruction."""
        z_e = self.encoder(x_BxP)
        _, _, aux = self.quantizer(z_e)
        partial_sums_LxNxD = jnp.cumsum(aux["level_codes"], axis=0)
        return jnp.stack([self._output(self.decoder(z_NxD.reshape(z_e.shape)))
                          for z_NxD in partial_sums_LxNxD])

    def _output(self, decoded_BxP: jax.Array) -> jax.Array:
        """The reconstruction from the decoder's output: images through a sigmoid (with
        `sigmoid_grad = "constant"`, `sigmoid_with_constant_slope`), vectors as they are."""
        if self.cfg.data_kind != "images":
            return decoded_BxP
        if self.cfg.sigmoid_grad == "exact":
            return nn.sigmoid(decoded_BxP)
        return sigmoid_with_constant_slope(decoded_BxP)

    def encode(self, x_BxP: jax.Array) -> jax.Array:
        """Per-level code indices of each image: (B, L), or (B, H', W', L) for a grid latent."""
        return self.quantizer(self.encoder(x_BxP))[1]

    def decode(self, codes: jax.Array) -> jax.Array:
        """The reconstruction (B, P) from code indices as `encode` gives them."""
        return self._output(self.decoder(self.quantizer.decode(codes)))


@jax.custom_jvp
def sigmoid_with_constant_slope(logits):
    """The sigmoid, differentiated as if its slope were 1/4 (its slope at 0) everywhere.

    Under an MSE the exact slope saturates: a pixel whose logit is far below 0 gets a gradient
    about exp(logit) times its error, so a model pushed into an all-black output never leaves it
    (a grid tokenizer on digits, whose re-seeded codes multiply the decoder's input tenfold while
    most of each image is background: docs/results.md, "Collapse"). With the slope held at 1/4
    each pixel's gradient is (output - target) / 2, the binary cross-entropy's gradient halved: it
    has the MSE gradient's sign and the same minimum, is the MSE's own gradient wherever the
    logit is near 0, and never vanishes. The value is the sigmoid's, bit for bit.
    """
    return nn.sigmoid(logits)


@sigmoid_with_constant_slope.defjvp
def _sigmoid_with_constant_slope_jvp(primals, tangents):
    (logits,), (tangent,) = primals, tangents
    return nn.sigmoid(logits), 0.25 * tangent
