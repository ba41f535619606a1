"""Config loading: typed sections, per-component validation, overrides, clear errors."""
import pytest

from biossl.config import ConfigError, apply_overrides, build_config, load_config


def test_recipe_loads_with_component_params():
    cfg = load_config("fmnist-bp-hinge")
    assert (cfg.schedule.name, cfg.transport.name, cfg.objective.name) == ("e2e", "bp", "hinge")
    assert cfg.objective.params.negatives == 4 and cfg.objective.params.grad_block is True
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
        load_config("fmnist-bp-hinge", ["schedule.name=magic"])
    assert "magic" in str(e.value) and "greedy" in str(e.value)


def test_component_validate_is_called():
    with pytest.raises(ConfigError, match="delta must be ≥ 0"):
        load_config("fmnist-bp-hinge", ["objective.delta=-1"])


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


# --------------------------------------------------------------------------- ranges
def _numeric_keys():
    """(section, component name or None, key, annotation text) of every int/float key."""
    import dataclasses
    import typing

    from biossl.config import DataConfig, EvalConfig, TrainConfig, type_text
    from biossl.registry import AXES, load_all
    load_all()
    classes = [("data", None, DataConfig), ("train", None, TrainConfig), ("eval", None, EvalConfig)]
    classes += [(axis, e.name, e.config) for axis in ("views", "encoder", "objective", "schedule", "transport")
                for e in AXES[axis].entries() if e.config is not None]
    out = []
    for section, name, cls in classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            text = type_text(hints[f.name])
            if text.split()[0] in ("int", "float"):
                out.append((section, name, f.name, text))
    return out


def test_every_numeric_key_has_a_range():
    """Far below any sensible value (and nan for floats) is refused, naming the key."""
    keys = _numeric_keys()
    assert len(keys) > 40 and ("train", None, "lr", "float > 0") in keys
    for section, name, key, text in keys:
        bad_values = [-10**6] + (["nan"] if text.startswith("float") else [])
        for bad in bad_values:
            raw = {section: ({"name": name} if name else {}) | {key: bad}}
            with pytest.raises(ConfigError, match=rf"{section}\.{key}|{key}"):
                build_config(raw)


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: must be an integer ≥ 1, got 0"),
    ("train.batch_size=-3", "train.batch_size: must be an integer ≥ 1, got -3"),
    ("train.epochs=0", "train.epochs: must be an integer ≥ 1, got 0"),
    ("train.lr=nan", "train.lr: must be a finite number > 0, got nan"),
    ("train.lr=.inf", "train.lr: must be a finite number > 0, got inf"),
    ("train.lr=0", "train.lr: must be a finite number > 0, got 0"),
    ("train.lr=-1e-3", "train.lr: must be a finite number > 0, got -1e-3"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be a finite number ≥ 0, got -0.1"),
    ("train.momentum=1", "train.momentum: must be a finite number ≥ 0 and < 1, got 1"),
    ("data.train_subset=-5", "data.train_subset: must be an integer ≥ 1, got -5"),
    ("data.train_subset=0", "data.train_subset: must be an integer ≥ 1, got 0"),
    ("eval.knn_k=0", "eval.knn_k: must be an integer ≥ 1, got 0"),
    ("eval.probe_epochs=0", "eval.probe_epochs: must be an integer ≥ 1, got 0"),
    ("eval.batch_size=0", "eval.batch_size: must be an integer ≥ 1, got 0"),
    ("train.threads=0", "train.threads: must be an integer ≥ 1, got 0"),
    ("train.threads=-2", "train.threads: must be an integer ≥ 1, got -2"),
    ("train.checkpoint_every=0", "train.checkpoint_every: must be an integer ≥ 1, got 0"),
    ("train.log_every=0", "train.log_every: must be an integer ≥ 1, got 0"),
    ("objective.tau=0", "objective.tau: must be a finite number > 0, got 0"),
    ("encoder.kernel=0", "encoder.kernel: must be an integer ≥ 1, got 0"),
])
def test_out_of_range_names_key_value_and_range(override, message):
    import re
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_config("fmnist-bp-hinge", [override])


def test_in_range_values_and_null_pass():
    cfg = load_config("fmnist-bp-hinge", ["train.lr=1e-6", "train.batch_size=1", "data.train_subset=null",
                                          "train.threads=1", "train.momentum=0", "eval.few_labels=0"])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.data.train_subset) == (1e-6, 1, None)
    assert (cfg.train.threads, cfg.train.momentum, cfg.eval.few_labels) == (1, 0.0, 0)
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer, got 2.5"):
        load_config("fmnist-bp-hinge", ["train.batch_size=2.5"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_accepted(device):
    assert load_config("fmnist-bp-hinge", [f"train.device={device}"]).train.device == device


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_device_lists_the_allowed_ones(device):
    with pytest.raises(ConfigError, match=r"train: device '.*' is not a device biossl can run on; "
                                          r"allowed: auto, cpu, cuda, cuda:I, mps"):
        load_config("fmnist-bp-hinge", [f"train.device='{device}'"])


def test_range_text():
    from biossl.bounds import Range
    assert [str(r) for r in (Range(1), Range(0, min_open=True), Range(0, 1, max_open=True), Range())] == [
        "≥ 1", "> 0", "≥ 0 and < 1", "any value"]
    r = Range(0, 1, min_open=True)
    assert [r.contains(v) for v in (0, 1e-9, 1, 1.5, float("nan"), float("inf"))] == [
        False, True, True, False, False, False]


# --------------------------------------------------------------------------- recipes shipped in the package
def test_recipes_and_suites_are_found_from_any_folder(tmp_path, monkeypatch):
    from pathlib import Path

    import biossl
    from biossl.compare import load_suite
    from biossl.config import RECIPES_DIR, SUITES_DIR, recipe_names
    monkeypatch.chdir(tmp_path)
    assert RECIPES_DIR == Path(biossl.__file__).parent / "configs" and SUITES_DIR == RECIPES_DIR / "suites"
    assert {"fmnist-bp-hinge", "fmnist-hinge-cpc", "fmnist-clapp-s", "biossl-t1"} <= set(recipe_names())
    assert load_config("fmnist-bp-hinge").name == "fmnist-bp-hinge"
    assert load_suite("fmnist-quick").cells[0].label == "e2e-bp hinge"
    own = tmp_path / "mine.yaml"
    own.write_text("train: {epochs: 2}\n")
    assert load_config("mine.yaml").train.epochs == 2 and load_config(str(own)).name == "mine"


def test_a_user_suite_finds_recipes_next_to_it_then_packaged_ones(tmp_path, monkeypatch):
    from biossl.compare import cell_config, load_suite
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "small.yaml").write_text("# A user's recipe.\nencoder: {name: convstack, channels: [4, 8, 8]}\n")
    (folder / "suite.yaml").write_text(
        "name: study\ncells:\n  - {label: mine, config: small}\n"
        "  - {label: packaged, config: fmnist-bp-hinge}\n")
    monkeypatch.chdir(tmp_path)  # not the suite's folder
    suite = load_suite(str(folder / "suite.yaml"))
    mine, packaged = (cell_config(suite, c, 0) for c in suite.cells)
    assert mine.encoder.params.channels == [4, 8, 8] and mine.name == "mine"
    assert packaged.encoder.params.channels == [32, 64, 128] and packaged.objective.params.negatives == 4


def test_every_recipe_has_a_one_line_description():
    from biossl.config import RECIPES_DIR, recipe_description, recipe_names
    for name in recipe_names():
        desc = recipe_description(RECIPES_DIR / f"{name}.yaml")
        assert desc.endswith(".") and 20 < len(desc) <= 100, (name, desc)
    assert recipe_description(RECIPES_DIR / "fmnist-bp-hinge.yaml") == (
        "BP + contrastive hinge on Fashion-MNIST, sized for 2 CPU cores (a few minutes).")


# --------------------------------------------------------------------------- biossl config
def test_field_docs_read_the_strings_under_fields():
    from biossl.keys import field_docs
    from biossl.views.recipes import DeformConfig
    docs = field_docs(DeformConfig)
    assert docs["flip_p"] and docs["translate"]  # inherited and own fields
    from biossl.config import TrainConfig
    assert field_docs(TrainConfig)["lr"] == "Learning rate of every optimizer the rule creates."


def test_every_key_of_every_component_has_type_and_doc():
    from biossl.keys import describe
    from biossl.registry import AXES, load_all
    load_all()
    seen = set()
    for axis in ("views", "encoder", "objective", "schedule", "transport"):
        for name in AXES[axis].names():
            for k in describe(load_config("fmnist-bp-hinge", [f"{axis}.name={name}"])):
                assert k.doc and k.type, k.key
                seen.add(k.key)
    assert {"train.lr", "transport.inverse_warmup", "objective.temperature", "views.patch",
            "encoder.width", "name", "data.root"} <= seen


def test_describe_shows_value_default_type_and_doc():
    from biossl.keys import describe, format_keys
    keys = {k.key: k for k in describe(load_config("fmnist-bp-hinge", ["train.lr=3e-4"]))}
    lr = keys["train.lr"]
    assert (lr.type, lr.value, lr.default) == ("float > 0", 3e-4, 1e-3)
    assert format_keys([lr]) == ("train.lr = 0.0003   [float > 0; default 0.001]\n"
                                 "    Learning rate of every optimizer the rule creates.")
    assert format_keys([keys["data.train_subset"]]).startswith(
        "data.train_subset = null   [int ≥ 1 | None]\n")
    assert keys["schedule.name"].type.split(" | ")[:2] == ["e2e", "greedy"]
