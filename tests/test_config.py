import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from rqvae.trainer import config, launch, names, presets
from rqvae.trainer.config import TrainerConfig
from rqvae.trainer.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"


def test_defaults_are_the_documented_ones():
    cfg = TrainerConfig()
    assert (cfg.optimizer.learning_rate, cfg.loss.lambda_commit) == (1e-3, 0.25)
    assert (cfg.loss.lambda_codebook, cfg.loss.lambda_wasserstein) == (1.0, 0.0)
    t = cfg.transport
    assert (t.epsilon, t.iters, t.tolerance, t.overrelaxation) == (0.05, 200, 0.005, 1.6)
    assert (t.anchor_window, t.encoder_grad) == (20, False)
    assert (cfg.model.num_levels, cfg.model.num_codes, cfg.model.latent_dim) == (2, 64, 16)
    assert cfg.model.encoder_hidden == (256, 128) and cfg.batch_size == 128


def test_every_setting_is_declared_once_and_the_defaults_file_comes_from_it():
    declared = config.declarations()
    tree_keys = list(config.flatten(config.to_dict(TrainerConfig())))
    assert list(declared) == tree_keys and all(d is not None and d.meaning for d in
                                               declared.values())
    # What `rqvae configs default` prints reads back to the defaults, each setting once but the
    # two the data set fills in.
    text = presets.text("default")
    assert config.from_dict(tomllib.loads(text)) == TrainerConfig()
    file_keys = list(config.flatten(tomllib.loads(text)))
    assert sorted(file_keys) == sorted(set(tree_keys) - {"model.image_shape", "model.data_kind"})
    assert "# seeds parameters, batches and every other random draw" in text
    # A key name, a short name and a flag each mean one setting, so a flat name, a run name's
    # tag and a flag are never ambiguous.
    leaves = [key.rsplit(".", 1)[-1] for key in tree_keys]
    shorts = [names.short_name(key) for key in tree_keys]
    flags = [d.flag for d in declared.values() if d.flag]
    assert len(set(leaves)) == len(leaves) and len(set(shorts)) == len(shorts)
    assert len(set(flags)) == len(flags) and "--lambda-wasserstein" in flags
    assert launch.SHAPE_KEYS == tuple(k for k in tree_keys if k.startswith("model.") and
                                      declared[k].shape)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.num_codes", 0, "model.num_codes must be >= 1, got 0"),
    ("model.encoder_hidden", [8, 0], "model.encoder_hidden must be numbers >= 1, got [8, 0]"),
    ("model.latent", "grids", "model.latent must be 'vector' or 'grid', got 'grids'"),
    ("data.holdout_fraction", 1.0, "data.holdout_fraction must be in (0, 1), got 1.0"),
    ("run.num_devices", -1, "run.num_devices must be >= 0 (0: every device), got -1"),
])
def test_a_declared_range_is_checked_with_its_key(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.replace(TrainerConfig(), {key: value})


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
    header = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")),
                          len(lines))]
    assert len(header) >= 4
    assert any(f"rqvae train -c {path.stem}" in line for line in header)
    assert any("Expected:" in line for line in header)
    assert isinstance(cfg, TrainerConfig)


def test_presets_set_the_documented_lambdas():
    lambdas = {name: (c.loss.lambda_codebook, c.loss.lambda_wasserstein) for name in
               ("traditional", "wasserstein", "hybrid")
               for c in [config.load(CONFIGS / f"{name}.toml")]}
    assert lambdas == {"traditional": (1.0, 0.0), "wasserstein": (0.0, 1.0), "hybrid": (1.0, 0.5)}
    assert config.load(CONFIGS / "default.toml") == TrainerConfig()  # a header, no keys


def test_the_flag_on_any_config_is_the_hybrid_preset():
    # Presets carry the lambdas (and restart its threshold) only: `--lambda-wasserstein 0.5` on
    # the traditional preset or the defaults trains exactly what configs/hybrid.toml trains.
    hybrid = config.load(CONFIGS / "hybrid.toml")
    for base in (config.load(None), config.load(CONFIGS / "traditional.toml")):
        flagged = config.replace(base, {"loss.lambda_wasserstein": 0.5})
        assert config.dumps(flagged) == config.dumps(hybrid)
    for name in ("traditional", "wasserstein", "hybrid", "restart"):
        keys = set(config.flatten(tomllib.loads((CONFIGS / f"{name}.toml").read_text())))
        assert keys <= {"loss.lambda_codebook", "loss.lambda_wasserstein",
                        "remedies.dead_code_threshold"}, name


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[loss]\nlambda_wasserstien = 1.0", "did you mean 'loss.lambda_wasserstein'"),
        ("lambda_wasserstien = 1.0", "did you mean 'loss.lambda_wasserstein'"),
        ("[model]\nnum_code = 3", "unknown config key 'model.num_code'; did you mean 'model.num_codes'"),
        ('steps = "10"', "steps must be int"),
        ("[loss]\nlambda_commit = true", "loss.lambda_commit must be float"),
        ("[model]\nencoder_hidden = 3", "model.encoder_hidden must be a list"),
        ("[loss]\nlambda_codebook = -1.0", "loss.lambda_codebook must be a finite number >= 0"),
        ("[loss]\nlambda_wasserstein = inf", "loss.lambda_wasserstein must be a finite number"),
        ("[transport]\nepsilon = 0.0", "transport.epsilon must be a finite number > 0"),
        ("[transport]\niters = 0", "transport.iters must be >= 1"),
        ("[transport]\ntolerance = -0.1", "transport.tolerance must be a finite number >= 0"),
        ("[transport]\noverrelaxation = 2.0", "transport.overrelaxation must be in [1, 2)"),
        ("[transport]\noverrelaxation = 0.5", "transport.overrelaxation must be in [1, 2)"),
        ("[transport]\nanchor_window = -1", "transport.anchor_window must be >= 0"),
        ("[optimizer]\ndecay_fraction = 1.5", "optimizer.decay_fraction must be in [0, 1]"),
        ("sinkhorn_iters = 0", "transport.iters must be >= 1"),  # a flat name of before
        ("sinkhorn_iters = 3\n[transport]\niters = 4", "sinkhorn_iters and transport.iters set "
         "the same value; keep transport.iters"),
        ('sinkhorn_epsilon_mode = "absolute"', 'sinkhorn_epsilon_mode = "absolute" is no longer a '
         'setting (the code always does what "relative" did'),
        ("ot_queue_size = 512", "ot_queue_size = 512 is no longer a setting"),
        ("[model]\ncodebook_init_scale = 0.5", "model.codebook_init_scale = 0.5 is no longer"),
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
    b = config.replace(a, {"model.num_codes": 32, "loss.lambda_wasserstein": 1.0})
    assert launch.shape_differences(a, b) == ["model.num_codes: 64 -> 32"]


def test_set_assignments_read_toml_values_and_name_bad_keys():
    overrides = config.parse_assignments(["model.num_codes=256", "model.encoder_hidden=[64, 32]",
                                          "remedies.kmeans_init=true", "data.dataset=tfds:mnist",
                                          "sinkhorn_iters=30"])
    cfg = config.replace(config.TrainerConfig(), overrides)
    assert (cfg.model.num_codes, cfg.model.encoder_hidden) == (256, (64, 32))
    assert cfg.remedies.kmeans_init is True and cfg.data.dataset == "tfds:mnist"
    assert cfg.transport.iters == 30  # a flat name of before still reaches its key
    assert config.replace(cfg, {"ot_queue_size": 0}) == cfg  # a retired key at today's value
    with pytest.raises(ConfigError, match="ot_queue_size = 64 is no longer a setting"):
        config.replace(cfg, {"ot_queue_size": 64})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.parse_assignments(["num_codes"])
    with pytest.raises(ConfigError, match="did you mean 'model.num_codes'"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["num_codes=8"]))
    with pytest.raises(ConfigError, match="did you mean 'data.dataset'"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["dataset=npz:x.npz"]))
    # A section given a value, or a value given keys: one line, as for the same in a file.
    with pytest.raises(ConfigError, match=r"model must be a table \[model\], got 3"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["model=3"]))
    with pytest.raises(ConfigError, match="cannot set seed.x: seed is 0, not a table"):
        config.replace(config.TrainerConfig(), config.parse_assignments(["seed.x=1"]))


def test_the_step_receives_its_sections_as_they_are():
    cfg = config.replace(config.TrainerConfig(), {"loss.lambda_wasserstein": 0.5, "seed": 3,
                                                  "run.dead_window": 7, "steps": 99})
    step = config.step_config(cfg)
    assert (step.loss, step.transport, step.remedies) == (cfg.loss, cfg.transport, cfg.remedies)
    assert (step.model, step.optimizer) == (cfg.model, cfg.optimizer)
    assert step.seed == 3 and step.dead_window == 7
    # What only the loop reads does not change the step, so it does not recompile.
    assert step == config.step_config(config.replace(cfg, {"steps": 5, "run.log_every": 3}))
    # Every section of the tree is either the step's or the loop's.
    step_fields = {f.name for f in dataclasses.fields(config.StepConfig)}
    loop_only = {"steps", "data", "run"}
    for f in dataclasses.fields(config.TrainerConfig):
        assert (f.name in step_fields) != (f.name in loop_only), f.name


def test_a_config_saved_by_the_flat_format_loads_as_the_same_run():
    # tests/fixtures/flat_config.toml: a hybrid run's config.toml as the flat format wrote it.
    path = Path(__file__).parent / "fixtures" / "flat_config.toml"
    saved = config.load_saved(path)
    assert (saved.loss.lambda_wasserstein, saved.loss.lambda_codebook) == (0.5, 1.0)
    assert saved.transport == TrainerConfig().transport  # its solve is today's default
    assert (saved.steps, saved.batch_size, saved.model.num_codes) == (1500, 256, 512)
    assert config.retired_values(path) == {}  # resumable: every retired key at today's value
    # Written back, the tree format reads as the same config.
    assert config.from_dict(tomllib.loads(config.dumps(saved))) == saved


def test_a_run_saved_before_a_key_existed_keeps_the_value_it_trained_with(tmp_path):
    # A flat config.toml lacking a key of BEFORE_KEY_EXISTED dates the run: it trained with the
    # original losses (now retired), so it loads for report and eval, and resume is refused.
    from rqvae.trainer.compat import BEFORE_KEY_EXISTED
    from rqvae.trainer.config import load_saved, retired_values

    flat = (Path(__file__).parent / "fixtures" / "flat_config.toml").read_text()
    old = "\n".join(line for line in flat.splitlines()
                    if line.split(" = ")[0] not in BEFORE_KEY_EXISTED)
    (tmp_path / "config.toml").write_text(old)
    saved = load_saved(tmp_path / "config.toml")
    assert (saved.transport.tolerance, saved.transport.overrelaxation) == (0.0, 1.0)
    assert saved.transport.anchor_window == 0 and saved.loss.lambda_wasserstein == 0.5
    assert retired_values(tmp_path / "config.toml") == {
        "codebook_loss": "sum", "sinkhorn_epsilon_mode": "absolute", "wasserstein_scale": "whole"}


def test_a_run_saved_before_the_learning_rate_decayed_resumes_at_a_constant_rate(tmp_path):
    # A tree-format config.toml written before optimizer.decay_fraction existed trained at a
    # constant rate, and resumes so; a new config decays by default.
    cfg = config.replace(config.TrainerConfig(), {"steps": 50})
    lines = config.dumps(cfg).splitlines()
    (tmp_path / "config.toml").write_text(
        "\n".join(line for line in lines if not line.startswith("decay_fraction")))
    assert config.load_saved(tmp_path / "config.toml").optimizer.decay_fraction == 0.0
    assert cfg.optimizer.decay_fraction == 0.2
    (tmp_path / "new.toml").write_text(config.dumps(cfg))
    assert config.load_saved(tmp_path / "new.toml") == cfg
