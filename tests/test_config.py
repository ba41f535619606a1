"""Config loading: typed sections, per-component validation, overrides, clear errors."""
import pytest

from biossl.config import ConfigError, apply_overrides, build_config, load_config


def test_recipe_loads_with_component_params():
    cfg = load_config("fmnist-bp-hinge")
    assert cfg.rule.name == "bp" and cfg.objective.name == "hinge"
    assert cfg.objective.params.negatives == 5 and cfg.objective.params.grad_block is True
    assert cfg.encoder.params.channels == [32, 64, 128]


def test_overrides_parse_types_and_switch_components():
    cfg = load_config("fmnist-bp-hinge", ["train.lr=3e-4", "objective.name=ntxent",
                                          "objective.temperature=0.2", "train.epochs=1"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.epochs == 1
    assert cfg.objective.name == "ntxent" and cfg.objective.params.temperature == 0.2


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config("fmnist-bp-hinge", ["train.lrr=1"])
    assert "train.lrr" in str(e.value) and "lr" in str(e.value) and "batch_size" in str(e.value)
    with pytest.raises(ConfigError, match="objective.tau2"):
        load_config("fmnist-bp-hinge", ["objective.tau2=1"])
    with pytest.raises(ConfigError, match="allowed keys"):
        build_config({"trian": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config("fmnist-bp-hinge", ["train.epochs=two"])
    with pytest.raises(ConfigError, match="objective.grad_block: expected true/false"):
        load_config("fmnist-bp-hinge", ["objective.grad_block=3"])
    with pytest.raises(ConfigError, match="not allowed; choose one of"):
        load_config("fmnist-bp-hinge", ["train.optimizer=lbfgs"])


def test_unknown_component_lists_registered_names():
    with pytest.raises(ConfigError) as e:
        load_config("fmnist-bp-hinge", ["rule.name=magic"])
    assert "magic" in str(e.value) and "bp" in str(e.value)


def test_component_validate_is_called():
    with pytest.raises(ConfigError, match="negatives"):
        load_config("fmnist-bp-hinge", ["objective.negatives=1"])


def test_round_trip_through_dict():
    cfg = load_config("fmnist-bp-hinge", ["train.seed=4"])
    again = build_config(cfg.to_dict())
    assert again == cfg


def test_missing_recipe_lists_known():
    with pytest.raises(ConfigError, match="fmnist-bp-hinge"):
        load_config("no-such-recipe")


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
