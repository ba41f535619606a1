"""The paper-reproduction recipes use the official code's forms, and every cell assembles
and takes a step (on random images: CIFAR/STL-10 are not on this machine)."""
import pytest
import torch

import biossl.compare as compare
from biossl.assemble import assemble
from biossl.compare import load_suite
from biossl.views.batch import ViewBatch


def cells(name):
    suite = load_suite(name)
    return [(cell.label, compare.cell_config(suite, cell, suite.seeds[0])) for cell in suite.cells]


@pytest.mark.parametrize("table", ["biossl-table1", "biossl-table2"])
def test_bio_ssl_tables_use_the_official_forms(table):
    for label, cfg in cells(table):
        enc, obj = cfg.encoder.params, cfg.objective.params
        if table == "biossl-table1":
            assert cfg.encoder.name == "conv6" and enc.activation_after == [0, 2], label
            assert obj.head_pool is None, label  # official heads flatten the whole map
        else:
            assert (cfg.encoder.name, enc.activation, enc.bias) == ("vgg6", "hardtanh", False), label
            assert tuple(cfg.views.params.size) == (64, 64), label
            if cfg.objective.name == "hinge":
                assert (obj.head_pool, obj.head_pool_mode) == (2, "window"), label
        if cfg.objective.name == "hinge":
            assert obj.negatives_wrap is False, label
        if cfg.objective.name == "ntxent":  # Bio-SSL's SimCLRLoss
            assert (obj.temperature, obj.reduction) == (0.1, "sum_directions"), label
        if cfg.transport.name == "targets":
            r = cfg.transport.params
            assert (r.target_loss, r.noise_std, r.inverse_order) == ("element_mean", 1.0, "after_targets")
        if cfg.schedule.name == "greedy":  # Bio-SSL: 400 epochs per layer
            assert cfg.train.epochs == 400 * {"conv6": 5, "vgg6": 6}[cfg.encoder.name], label


def test_clapp_stl10_uses_the_official_forms():
    for label, cfg in cells("clapp-stl10"):
        if cfg.objective.name != "clapp":
            continue
        obj = cfg.objective.params
        if cfg.schedule.name == "simultaneous":
            assert obj.draws == "per_stage", label
        if obj.sampling == "both":  # CLAPP-s
            assert (obj.negative_draw, obj.negatives, obj.context_path) == ("any_location", 16, "transpose"), label
        else:  # CLAPP, its explicit rule, hinge-loss CPC
            assert (obj.negative_draw, obj.coin, obj.either_divisor, obj.retro_score) == \
                ("any_image", "per_pass", "coin_counts", "separate"), label
            assert cfg.train.epochs == 600, label


def random_step(cfg, n=4):
    cfg.train.device = "cpu"
    cfg.train.precision = "fp32"
    cfg.train.channels_last = False
    a = assemble(cfg)
    shape = a.recipe.sample_shape(tuple(a.spec.image_shape))
    g = torch.Generator().manual_seed(0)
    if a.recipe.kind == "pairs":
        batch = ViewBatch(torch.rand(2 * n, *shape, generator=g) * 2 - 1, n, "pairs")
    else:
        rows, cols = a.recipe.grid
        batch = ViewBatch(torch.rand(n * rows * cols, *shape, generator=g) * 2 - 1, n, "grid", (rows, cols))
    a.rule.start_epoch(0)
    return a.rule.step(batch)


@pytest.mark.slow
@pytest.mark.parametrize("table", ["biossl-table1", "biossl-table2", "clapp-stl10"])
def test_every_paper_cell_takes_a_finite_step(table):
    for label, cfg in cells(table):
        out = random_step(cfg)
        assert torch.isfinite(torch.tensor(out["loss"])), label


@pytest.mark.parametrize("label", ["e2e-dtp", "gll-urf gb5", "simclr e2e-bp"])
def test_official_conv6_cells_take_a_finite_step(label):
    """Official conv6 (no nonlinearity after convs 1, 3, 4) with DTP's inverses, flattening
    layer-wise heads and the SimCLR row's loss."""
    cfg = dict(cells("biossl-table1"))[label]
    out = random_step(cfg)
    assert torch.isfinite(torch.tensor(out["loss"]))
