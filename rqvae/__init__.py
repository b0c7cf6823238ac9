"""rqvae: residual-quantized VAEs whose codebooks stay alive."""
