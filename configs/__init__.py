"""The presets: TOML configs shipped with the package, for `rqvae train -c NAME`."""
