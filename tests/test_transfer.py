"""Transfer probes: a dataset of another image shape is resized to the training shape
(biossl.data.resize), `biossl eval RUN --set eval.dataset=digits` works, and a suite's
`transfer:` datasets add a per-stage table without retraining finished cells."""
import json

import pytest
import torch
import torch.nn.functional as F

from biossl.cli import main
from biossl.compare import Cell, Suite, run_suite
from biossl.data.resize import fit_images, resize_note

TINY = ["data.train_subset=256", "encoder.channels=[4,8]", "encoder.pool=[true,true]",
        "train.batch_size=64", "train.epochs=1", "train.threads=1", "train.log_every=2",
        "eval.probe_epochs=2", "eval.few_labels=10", "eval.max_train=600", "eval.max_test=300"]


def test_fit_images_spatial_matches_bilinear_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=g)
    out = fit_images(x, (1, 28, 28))
    ref = F.interpolate(x.double(), size=(28, 28), mode="bilinear", align_corners=False)
    assert out.dtype == torch.uint8 and out.shape == (5, 1, 28, 28)
    assert (out.double() - ref.round()).abs().max() <= 1      # rounding of float32 vs float64
    const = torch.full((2, 1, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(fit_images(const, (1, 28, 28)), torch.full((2, 1, 28, 28), 77, dtype=torch.uint8))


def test_fit_images_channels():
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8, generator=g)
    gray = fit_images(rgb, (1, 4, 4))
    ref = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).round()
    assert torch.equal(gray[:, 0], ref.to(torch.uint8))
    g1 = rgb[:, :1]
    assert torch.equal(fit_images(g1, (3, 4, 4)), g1.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="cannot map 2-channel images to 3 channels"):
        fit_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), (3, 4, 4))
    assert resize_note((1, 8, 8), (1, 28, 28)) == "resized: bilinear 8×8→28×28"
    assert resize_note((1, 28, 28), (1, 28, 28)) == ""


def test_eval_on_digits_resizes_and_keeps_the_main_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fmnist-bp-hinge", *TINY, "--out", str(run)]) == 0
    assert main(["eval", str(run)]) == 0
    main_table = (run / "probe.csv").read_text()
    assert main(["eval", str(run), "--set", "eval.dataset=digits"]) == 0
    assert (run / "probe.csv").read_text() == main_table          # not overwritten
    md = (run / "probe-dataset=digits.md").read_text()
    assert "probe on digits" in md and "bilinear 8×8→28×28" in md
    assert "probe-dataset=digits" in capsys.readouterr().out
    assert main(["eval", str(run), "--set", "eval.dataset=digits", "--set", "eval.resize=false"]) == 2
    err = capsys.readouterr().err
    assert "image shapes differ" in err and "eval.resize=true" in err


def test_suite_transfer_table_added_without_retraining(tmp_path, monkeypatch):
    suite = Suite(name="t", seeds=[0], common=TINY, cells=[Cell("bp-hinge", "fmnist-bp-hinge")])
    run_suite(suite, tmp_path, progress=False)
    ckpt = tmp_path / "cells" / "bp-hinge-s0" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    assert "Transfer" not in (tmp_path / "results.md").read_text()

    def boom(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr("biossl.train.train", boom)
    suite.transfer = ["digits"]
    rows = run_suite(suite, tmp_path, progress=False)
    assert ckpt.stat().st_mtime_ns == stamp
    md = (tmp_path / "results.md").read_text()
    assert "## Transfer: linear probe on digits" in md and "bilinear 8×8→28×28" in md
    trained = next(r for r in rows if r.label == "bp-hinge")
    random = next(r for r in rows if not r.trained)
    for r in (trained, random):
        assert all(0 <= r.stat("probe", s, "digits")[0] <= 100 for s in (1, 2))
    stored = json.loads((tmp_path / "cells" / "bp-hinge-s0" / "result.json").read_text())
    assert len(stored["transfer"]["digits"]["probe"]) == 2
