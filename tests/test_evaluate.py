"""Evaluation package: features, standardisation, probes, kNN, table outputs."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from biossl.config import EvalConfig
from biossl.encoders.base import StageStack
from biossl.evaluate import (ProbeRow, evaluate_encoder, extract_features, few_label_epochs,
                             few_label_probe, format_table, knn_accuracy, knn_predict,
                             linear_probe, plot_rows, select_per_class, standardize, write_csv)
from biossl.views.base import ViewRecipe, to_float


def small_stack(seed: int = 0) -> StageStack:
    torch.manual_seed(seed)
    return StageStack([nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
                       nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))],
                      in_channels=1)


def blobs(n: int, d: int, k: int, sep: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * sep
    y = torch.randint(0, k, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


# --------------------------------------------------------------------------- features
def test_extract_features_matches_manual_gap():
    enc = small_stack()
    enc.train()
    imgs = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    feats = extract_features(enc, imgs, ViewRecipe(), batch_size=3, progress=False)
    assert enc.training, "the encoder's mode must be restored"
    assert [tuple(f.shape) for f in feats] == [(10, 4), (10, 8)]
    with torch.no_grad():
        outs = enc(to_float(imgs))
    for f, h in zip(feats, outs):
        assert f.dtype == torch.float32
        torch.testing.assert_close(f, h.mean(dim=(2, 3)))
    # Features leave inference mode usable for training a probe.
    assert not feats[0].is_inference()


def test_standardize_uses_train_stats_only():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(500, 6, generator=g) * 3 + 5
    test = torch.randn(300, 6, generator=g) * 0.5 - 2     # other mean and scale
    a, b = standardize(train, test)
    torch.testing.assert_close(a.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.std(0, correction=0), torch.ones(6), atol=1e-5, rtol=0)
    mean, std = train.mean(0), train.std(0, correction=0)
    torch.testing.assert_close(b, (test - mean) / std)
    assert (b.mean(0) < -1).all()                          # test stats were not used
    # A dead train feature is centred only, not divided by ~0.
    train[:, 0] = 1.0
    test[:, 0] = 1.5
    _, b = standardize(train, test)
    assert torch.allclose(b[:, 0], torch.full((300,), 0.5))


# --------------------------------------------------------------------------- kNN
def brute_knn(train_x, train_y, test_x, k, num_classes, temperature):
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    preds = []
    for q in test_x:
        q = q / np.linalg.norm(q)
        sims = tr @ q
        nn_idx = np.argsort(-sims)[:k]
        votes = np.zeros(num_classes)
        for j in nn_idx:
            votes[train_y[j]] += 1.0 if temperature is None else np.exp(sims[j] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("temperature", [0.07, None])
def test_knn_matches_brute_force(temperature):
    x, y = blobs(400, 8, 5, sep=0.7, seed=1)
    tx, ty = blobs(57, 8, 5, sep=0.7, seed=2)
    ref = brute_knn(x.double().numpy(), y.numpy(), tx.double().numpy(), 7, 5, temperature)
    pred = knn_predict(x, y, tx, 5, k=7, temperature=temperature, chunk=10)
    assert np.array_equal(pred.numpy(), ref)
    acc = knn_accuracy(x, y, tx, ty, k=7, num_classes=5, temperature=temperature, chunk=13)
    assert acc == pytest.approx(100.0 * (ref == ty.numpy()).mean(), abs=1e-9)  # the reference's accuracy


def test_knn_known_answer_is_cosine_not_euclidean_and_weighted_by_temperature():
    """Hand-worked case. Query q = (1, 0.9); cosines: A = (10, 9) ≈ 1.000 (class 0, far but
    aligned), B = (1, 0) 0.743 and C = (0, 1) 0.669 (class 1, near), D = (−1, −1) −0.999.
    k=1: A (a Euclidean kNN would pick B). k=3 unweighted: A, B, C → class 1 by 2 votes to 1.
    k=3 at τ=0.07: e^(1/0.07) ≈ 1.6e6 for class 0 against e^(0.743/0.07) + e^(0.669/0.07) ≈ 5.5e4."""
    train_x = torch.tensor([[10.0, 9.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[1.0, 0.9], [-2.0, -1.9]])  # the second: D (class 2) for every k here
    assert knn_predict(train_x, train_y, q, 3, k=1).tolist() == [0, 2]
    assert knn_predict(train_x, train_y, q[:1], 3, k=3, temperature=None).tolist() == [1]
    assert knn_predict(train_x, train_y, q[:1], 3, k=3, temperature=0.07).tolist() == [0]
    acc = knn_accuracy(train_x, train_y, q, torch.tensor([0, 1]), k=1, num_classes=3)
    assert acc == pytest.approx(50.0)


def test_knn_chunking_and_k_clamp():
    x, y = blobs(50, 4, 3, sep=2.0, seed=3)
    tx, _ = blobs(20, 4, 3, sep=2.0, seed=4)
    assert torch.equal(knn_predict(x, y, tx, 3, k=5, chunk=1), knn_predict(x, y, tx, 3, k=5))
    assert knn_predict(x, y, tx, 3, k=500).shape == (20,)  # k > n_train is clamped


# --------------------------------------------------------------------------- probes
def test_probe_separable_and_random_labels():
    x, y = blobs(1200, 16, 4, sep=4.0, seed=0)            # one draw: shared centres
    x, tx, y, ty = x[:800], x[800:], y[:800], y[800:]
    a, b = standardize(x, tx)
    assert linear_probe(a, y, b, ty, 4, epochs=30, batch_size=100, seed=0) >= 99.0
    g = torch.Generator().manual_seed(5)
    ry, rty = torch.randint(0, 4, (800,), generator=g), torch.randint(0, 4, (400,), generator=g)
    acc = linear_probe(a, ry, b, rty, 4, epochs=30, batch_size=100, seed=0)
    assert 15.0 <= acc <= 35.0                              # chance is 25 %


def test_probe_deterministic():
    x, y = blobs(600, 8, 3, sep=1.0, seed=7)
    a, b = standardize(x[:400], x[400:])
    r1 = linear_probe(a, y[:400], b, y[400:], 3, epochs=5, seed=3)
    r2 = linear_probe(a, y[:400], b, y[400:], 3, epochs=5, seed=3)
    assert r1 == r2
    f1 = few_label_probe(a, y[:400], b, y[400:], 3, per_class=10, epochs=2, seed=1)
    f2 = few_label_probe(a, y[:400], b, y[400:], 3, per_class=10, epochs=2, seed=1)
    assert f1 == f2


def test_select_per_class_exact_and_seeded():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (1000,), generator=g)
    idx = select_per_class(labels, 13, 5, seed=4)
    assert idx.numel() == 65 and idx.unique().numel() == 65
    assert torch.equal(torch.bincount(labels[idx], minlength=5), torch.full((5,), 13))
    assert torch.equal(idx, select_per_class(labels, 13, 5, seed=4))
    assert not torch.equal(idx, select_per_class(labels, 13, 5, seed=5))
    with pytest.raises(ValueError, match="per class"):
        select_per_class(labels, 1000, 5)


def test_few_label_epochs_budget():
    # equal optimizer steps to the full probe, and at least 100 passes
    assert few_label_epochs(60000, 1000, 30) == 30 * 59
    assert few_label_epochs(2000, 1000, 30) == 100


# --------------------------------------------------------------------------- table
def test_evaluate_encoder_and_outputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    # Class = which image half is bright: learnable from GAP of a random conv net.
    def make(n):
        y = torch.randint(0, 2, (n,), generator=g)
        img = torch.randint(0, 60, (n, 1, 8, 8), generator=g)
        img[y == 1, :, :4] += 150
        return img.to(torch.uint8), y
    xtr, ytr = make(300)
    xte, yte = make(100)
    cfg = EvalConfig(probe_epochs=5, knn_k=5, few_labels=20, batch_size=128)
    rows = evaluate_encoder(small_stack(), "random-init", xtr, ytr, xte, yte, ViewRecipe(),
                            cfg, num_classes=2, device="cpu", progress=False)
    assert [(r.stage, r.dim) for r in rows] == [(1, 4), (2, 8)]
    for r in rows:
        assert 0 <= r.probe <= 100 and 0 <= r.knn <= 100 and 0 <= r.few_label <= 100
        assert "GAP" in r.protocol and "5 ep" in r.protocol and "20/class" in r.protocol
    rows2 = evaluate_encoder(small_stack(), "random-init", xtr, ytr, xte, yte, ViewRecipe(),
                             cfg, num_classes=2, device="cpu", progress=False)
    assert rows == rows2                                      # same seed, same numbers

    # Too few labels for the few-label probe: NaN, said in the protocol.
    cfg_small = EvalConfig(probe_epochs=2, knn_k=5, few_labels=20, max_train=30, max_test=40)
    small = evaluate_encoder(small_stack(1), "trained", xtr, ytr, xte, yte, ViewRecipe(),
                             cfg_small, num_classes=2, progress=False)
    assert all(math.isnan(r.few_label) for r in small)
    assert "skipped" in small[0].protocol and "30 labels" in small[0].protocol

    all_rows = rows + small
    path = write_csv(all_rows, tmp_path / "out" / "probe.csv")
    with path.open() as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 4 and read[0]["encoder_label"] == "random-init"
    assert float(read[1]["probe"]) == pytest.approx(rows[1].probe)

    md = format_table(all_rows)
    assert md.splitlines()[0] == "| encoder | stage | dim | linear probe | kNN | 20/class |"
    assert "| trained | 2 | 8 |" in md and "—" in md and "Protocol" in md

    png = plot_rows(all_rows, tmp_path / "probe.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    import matplotlib.image as mpimg
    assert mpimg.imread(png).ndim == 3


def test_format_table_mixed_per_class():
    rows = [ProbeRow("a", 1, 4, 50.0, 40.0, 30.0, "p", 100),
            ProbeRow("b", 1, 4, 50.0, 40.0, float("nan"), "q", 10)]
    md = format_table(rows)
    assert "few-label" in md.splitlines()[0]
    assert "Protocol (a): p" in md and "Protocol (b): q" in md


def test_format_table_names_a_disabled_few_label_probe():
    md = format_table([ProbeRow("a", 1, 4, 50.0, 40.0, float("nan"), "p", 0)])
    assert "few-label (off)" in md.splitlines()[0] and "0/class" not in md
