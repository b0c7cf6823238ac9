import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from rqvae import config
from rqvae.config import ConfigError, TrainerConfig

CONFIGS = Path(__file__).parent.parent / "configs"


def test_defaults_are_the_documented_ones():
    cfg = TrainerConfig()
    assert (cfg.learning_rate, cfg.lambda_commit, cfg.lambda_codebook) == (1e-3, 0.25, 1.0)
    assert (cfg.lambda_wasserstein, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters) == (0.0, 0.05, 200)
    assert (cfg.sinkhorn_epsilon_mode, cfg.sinkhorn_tolerance) == ("relative", 0.005)
    assert cfg.wasserstein_scale == "per_element" and cfg.sinkhorn_overrelaxation == 1.6
    assert (cfg.model.num_levels, cfg.model.num_codes, cfg.model.latent_dim) == (2, 64, 16)
    assert cfg.model.encoder_hidden == (256, 128) and cfg.batch_size == 128


def test_config_is_frozen_and_hashable():
    cfg = TrainerConfig()
    assert hash(cfg) == hash(TrainerConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3


def test_toml_round_trip():
    cfg = config.replace(TrainerConfig(), {"lambda_wasserstein": 0.5, "model.encoder_hidden": [7, 5],
                                           "data.dataset": 'odd "name"', "run.run_dir": "runs/x"})
    assert config.from_dict(tomllib.loads(config.dumps(cfg))) == cfg


def test_overrides_reach_nested_sections_and_skip_none():
    cfg = config.replace(TrainerConfig(), {"model.num_codes": 8, "seed": None, "steps": 5})
    assert cfg.model.num_codes == 8 and cfg.seed == 0 and cfg.steps == 5


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_loads_and_says_how_to_run_it(path):
    cfg = config.load(path)
    lines = path.read_text().splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert len(header) >= 4
    assert any(f"rqvae train -c configs/{path.name}" in line for line in header)
    assert any("Expected:" in line for line in header)
    assert isinstance(cfg, TrainerConfig)


def test_presets_set_the_documented_lambdas():
    lambdas = {name: (c.lambda_codebook, c.lambda_wasserstein) for name in
               ("traditional", "wasserstein", "hybrid") for c in [config.load(CONFIGS / f"{name}.toml")]}
    assert lambdas == {"traditional": (1.0, 0.0), "wasserstein": (0.0, 1.0), "hybrid": (1.0, 0.5)}
    assert config.load(CONFIGS / "default.toml") == TrainerConfig()


def test_the_flag_on_any_config_is_the_hybrid_preset():
    # Presets carry the lambdas (and restart its threshold) only: `--lambda-wasserstein 0.5` on
    # the traditional preset or the defaults trains exactly what configs/hybrid.toml trains.
    hybrid = config.load(CONFIGS / "hybrid.toml")
    for base in (config.load(None), config.load(CONFIGS / "traditional.toml")):
        flagged = config.replace(base, {"lambda_wasserstein": 0.5})
        assert config.dumps(flagged) == config.dumps(hybrid)
    for name in ("traditional", "wasserstein", "hybrid", "restart"):
        keys = set(tomllib.loads((CONFIGS / f"{name}.toml").read_text()))
        assert keys <= {"lambda_codebook", "lambda_wasserstein", "dead_code_threshold"}, name


@pytest.mark.parametrize(
    "toml, message",
    [
        ("lambda_wasserstien = 1.0", "did you mean 'lambda_wasserstein'"),
        ("[model]\nnum_code = 3", "unknown config key 'model.num_code'; did you mean 'model.num_codes'"),
        ('steps = "10"', "steps must be int"),
        ("lambda_commit = true", "lambda_commit must be float"),
        ("[model]\nencoder_hidden = 3", "model.encoder_hidden must be a list"),
        ("lambda_codebook = -1.0", "lambda_codebook must be >= 0"),
        ("sinkhorn_epsilon = 0.0", "sinkhorn_epsilon must be > 0"),
        ("sinkhorn_iters = 0", "sinkhorn_iters must be >= 1"),
        ('sinkhorn_epsilon_mode = "scaled"',
         "sinkhorn_epsilon_mode must be 'relative', 'nearest' or 'absolute', got 'scaled'"),
        ("sinkhorn_tolerance = -0.1", "sinkhorn_tolerance must be >= 0"),
        ("sinkhorn_overrelaxation = 2.0", "sinkhorn_overrelaxation must be in [1, 2)"),
        ("sinkhorn_overrelaxation = 0.5", "sinkhorn_overrelaxation must be in [1, 2)"),
        ("wasserstein_levels = 3", "wasserstein_levels must be in [0, model.num_levels = 2]"),
        ("wasserstein_levels = -1", "wasserstein_levels must be in [0, model.num_levels = 2]"),
        ('wasserstein_scale = "mean"',
         "wasserstein_scale must be 'per_element' or 'whole', got 'mean'"),
        ("[model]\nnum_levels = 0", "model.num_levels must be >= 1"),
        ("[model]\nnum_codes = 0", "model.num_codes must be >= 1"),
        ("model = 3", "model must be a table"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path)


def test_malformed_toml_gives_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("steps = 3\nlambda_commit = = 1\n")
    with pytest.raises(ConfigError, match="line 2"):
        config.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def test_shape_differences_lists_only_shape_keys():
    a = TrainerConfig()
    b = config.replace(a, {"model.num_codes": 32, "lambda_wasserstein": 1.0})
    assert config.shape_differences(a, b) == ["model.num_codes: 64 -> 32"]


def test_set_assignments_read_toml_values_and_name_bad_keys():
    overrides = config.parse_assignments(["model.num_codes=256", "model.encoder_hidden=[64, 32]",
                                          "kmeans_init=true", "data.dataset=tfds:mnist"])
    cfg = config.replace(config.TrainerConfig(), overrides)
    assert (cfg.model.num_codes, cfg.model.encoder_hidden) == (256, (64, 32))
    assert cfg.kmeans_init is True and cfg.data.dataset == "tfds:mnist"
    with pytest.raises(config.ConfigError, match="KEY=VALUE"):
        config.parse_assignments(["num_codes"])
    with pytest.raises(config.ConfigError, match="did you mean 'model.num_codes'"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["num_codes=8"]))
    with pytest.raises(config.ConfigError, match="did you mean 'data.dataset'"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["dataset=npz:x.npz"]))
    # A section given a value, or a value given keys: one line, as for the same in a file.
    with pytest.raises(config.ConfigError, match=r"model must be a table \[model\], got 3"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["model=3"]))
    with pytest.raises(config.ConfigError, match="cannot set seed.x: seed is 0, not a table"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["seed.x=1"]))


def test_every_setting_is_read_by_the_step_or_by_the_loop_alone():
    # A new TrainerConfig field must be placed: in StepConfig or LossConfig (same name), so the
    # compiled step sees it, or in LOOP_ONLY. Nothing reaches the step by accident or is lost.
    step_fields = {f.name for f in dataclasses.fields(config.StepConfig)}
    loss_fields = {f.name for f in dataclasses.fields(config.LossConfig)}
    for f in dataclasses.fields(config.TrainerConfig):
        placed = [f.name in step_fields, f.name in loss_fields, f.name in config.LOOP_ONLY]
        assert sum(placed) == 1, f.name
    cfg = config.replace(config.TrainerConfig(), {"lambda_wasserstein": 0.5, "seed": 3,
                                                  "run.dead_window": 7, "steps": 99})
    step = config.step_config(cfg)
    assert step.loss.lambda_wasserstein == 0.5 and step.seed == 3 and step.dead_window == 7
    assert step == config.step_config(config.replace(cfg, {"steps": 5, "run.log_every": 3}))


def test_a_run_saved_before_a_key_existed_keeps_the_value_it_trained_with(tmp_path):
    # A run's config.toml lists every key it knew; one without wasserstein_scale (and the other
    # later keys) was trained with the original losses, and resumes and reports as such.
    from rqvae.config import BEFORE_KEY_EXISTED, dumps, load, load_saved

    text = dumps(TrainerConfig(lambda_wasserstein=0.5))
    old = "\n".join(line for line in text.splitlines()
                    if line.split(" = ")[0] not in BEFORE_KEY_EXISTED)
    (tmp_path / "config.toml").write_text(old)
    saved = load_saved(tmp_path / "config.toml")
    assert (saved.wasserstein_scale, saved.codebook_loss) == ("whole", "sum")
    assert (saved.sinkhorn_epsilon_mode, saved.sinkhorn_tolerance) == ("absolute", 0.0)
    assert saved.sinkhorn_overrelaxation == 1.0
    assert saved.lambda_wasserstein == 0.5
    assert load(tmp_path / "config.toml").wasserstein_scale == "per_element"  # a user's file
    # A run saved with every key loads as saved.
    (tmp_path / "config.toml").write_text(text)
    assert load_saved(tmp_path / "config.toml") == load(tmp_path / "config.toml")
