"""Video data: ClipSet gathers, the UCF-101 reader on tiny .avi files encoded here with
PyAV (every error case on real files), and the generated Fashion-MNIST action corpus
(the labelled action is measurable in the frames; same seed, same bytes)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biossl.data.base import DatasetError
from biossl.data.video import ACTIONS, UCF101, ClipSet, FashionActions
from biossl.data.video.store import StoreWriter, read_store

try:
    import av
except ImportError:  # the corpus tests still run; the UCF-101 ones need PyAV to write videos
    av = None
needs_av = pytest.mark.skipif(av is None, reason="PyAV not installed (pip install av)")
FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST_SYSTEM / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

pytestmark = pytest.mark.usefixtures("isolated_data")  # tests/conftest.py: no real cache


# --------------------------------------------------------------------------- ClipSet
def ragged(lengths=(5, 3, 7)) -> ClipSet:
    """Clips whose every pixel of frame f of clip i is 10·i + f (so a gather is checkable)."""
    frames = torch.cat([(10 * i + torch.arange(n)).view(n, 1, 1, 1).expand(n, 2, 3, 4)
                        for i, n in enumerate(lengths)]).to(torch.uint8)
    offsets = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int64)
    return ClipSet(frames, offsets, torch.tensor([0, 1, 0]), ("a", "b"), "toy", "train",
                   objects=torch.tensor([2, 0, 1]), object_names=("x", "y", "z"),
                   clip_names=("c0", "c1", "c2"))


def test_blocks_gather_the_right_frames_in_conv3d_layout():
    cs = ragged()
    out = cs.blocks(torch.tensor([2, 0, 2]), torch.tensor([1, 0, 0]), n_blocks=2, block_len=2, stride=3)
    assert out.shape == (3, 2, 2, 2, 3, 4) and out.dtype == torch.uint8  # (n, blocks, C, L, H, W)
    got = out[:, :, 0, :, 0, 0]
    assert got.tolist() == [[[21, 22], [24, 25]], [[0, 1], [3, 4]], [[20, 21], [23, 24]]]
    win = cs.window(torch.tensor([1]), torch.tensor([0]), 3)
    assert win.shape == (1, 2, 3, 3, 4) and win[0, 1, :, 2, 3].tolist() == [10, 11, 12]
    assert cs.span(3, 4, 2) == 8 and cs.span(3, 4) == 12


def test_blocks_past_a_clip_end_name_the_clip():
    cs = ragged()
    with pytest.raises(DatasetError, match=r"c1 has 3 frames; frames 1\.\.4"):
        cs.blocks(torch.tensor([0, 1]), torch.tensor([0, 1]), n_blocks=2, block_len=2)
    with pytest.raises(DatasetError, match=r"c1 has 3 frames, fewer than the 4 needed by views"):
        cs.require_frames(4, "views")
    cs.require_frames(3)  # every clip has 3


def test_random_starts_fit_and_subset_keeps_clips():
    cs = ragged()
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1, 2] * 50)
    starts = cs.random_starts(idx, 3, g)
    assert int(starts.min()) == 0 and bool((starts + 3 <= cs.lengths[idx]).all())
    assert set(starts[idx == 2].tolist()) == {0, 1, 2, 3, 4}  # all room used
    sub = cs.subset(torch.tensor([2, 0]))
    assert sub.lengths.tolist() == [7, 5] and sub.clip_names == ("c2", "c0")
    assert torch.equal(sub.clip(0), cs.clip(2)) and torch.equal(sub.clip(1), cs.clip(0))
    assert sub.objects.tolist() == [1, 2] and sub.labels.tolist() == [0, 0]
    assert repr(cs) == "ClipSet(toy/train: 3 clips, 15 frames 2×3×4, 2 actions, 3 objects)"
    moved = cs.to("cpu")
    assert torch.equal(moved.blocks(idx[:3], starts[:3], 1, 3), cs.blocks(idx[:3], starts[:3], 1, 3))


@pytest.mark.parametrize("change, message", [
    (dict(frames=torch.zeros(15, 2, 3, 4)), "frames must be uint8"),
    (dict(offsets=torch.tensor([0, 5, 8, 14])), "offsets must run from 0 to the frame count 15"),
    (dict(offsets=torch.tensor([0, 5, 5, 15])), "at least one frame"),
    (dict(labels=torch.tensor([0, 2, 0])), "action label 2 is outside 0..1"),
    (dict(objects=torch.tensor([0, 1])), r"objects must be int64 \(3,\)"),
    (dict(clip_names=("a",)), "1 clip names for 3 clips"),
])
def test_clipset_refuses_inconsistent_fields(change, message):
    cs = ragged()
    fields = dict(frames=cs.frames, offsets=cs.offsets, labels=cs.labels, class_names=cs.class_names,
                  name="toy", split="train", objects=cs.objects, object_names=cs.object_names,
                  clip_names=cs.clip_names)
    with pytest.raises(ValueError, match=message):
        ClipSet(**{**fields, **change})


def test_store_round_trip_and_interrupted_write_leaves_nothing(tmp_path):
    clips = torch.randint(0, 256, (3, 4, 1, 5, 5), dtype=torch.uint8)
    with StoreWriter(tmp_path, "s", (1, 5, 5)) as w:
        w.add(clips[:2])
        w.add(clips[2, :3])
        w.commit({"k": 1})
    frames, offsets, meta, _ = read_store(tmp_path, "s")
    assert offsets.tolist() == [0, 4, 8, 11] and meta == {"k": 1}
    assert torch.equal(frames[:8], clips[:2].reshape(8, 1, 5, 5))
    with pytest.raises(RuntimeError), StoreWriter(tmp_path, "t", (1, 5, 5)) as w:
        w.add(clips[0])
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.u8"]
    (tmp_path / "s.u8").write_bytes(b"\0" * 10)  # truncated data: treated as absent
    assert read_store(tmp_path, "s") is None


# --------------------------------------------------------------------------- UCF-101
CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups"] + [f"Filler{i:03d}" for i in range(98)]


def write_avi(path: Path, n_frames: int = 20, colour=(255, 255, 255), width=64, height=48) -> None:
    """An Xvid-like MPEG-4 .avi (UCF-101's codec) of a bright bar moving right 2 px a frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            a = np.full((height, width, 3), 20, np.uint8)
            a[:, 2 * i:2 * i + 12] = colour
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture
def ucf(tmp_path) -> Path:
    """A UCF-101-shaped dataset directory: 4 videos, official list formats with CRLF ends."""
    root = tmp_path / "ucf101"
    vids = root / "UCF-101"
    write_avi(vids / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", colour=(255, 0, 0))
    write_avi(vids / "Archery/v_Archery_g01_c01.avi", n_frames=14)
    write_avi(vids / "Archery/v_Archery_g02_c01.avi")
    # The official release spells this class's files 'HandStand' inside 'HandstandPushups/'.
    write_avi(vids / "HandstandPushups/v_HandStandPushups_g01_c01.avi")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    crlf = lambda lines: "".join(f"{x}\r\n" for x in lines)  # noqa: E731
    (lists / "classInd.txt").write_text(crlf(f"{i + 1} {n}" for i, n in enumerate(CLASSES)), newline="")
    (lists / "trainlist01.txt").write_text(crlf([
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1", "Archery/v_Archery_g01_c01.avi 2",
        "HandstandPushups/v_HandstandPushups_g01_c01.avi 3"]), newline="")
    (lists / "testlist01.txt").write_text(crlf(["Archery/v_Archery_g02_c01.avi"]), newline="")
    return root


@needs_av
def test_ucf101_reads_lists_decodes_subsamples_and_resizes(ucf):
    train = UCF101().load("train", root=ucf, side=16, frame_step=3)
    assert train.labels.tolist() == [0, 1, 2] and train.num_classes == 101
    assert train.lengths.tolist() == [7, 5, 7]  # ceil(20/3), ceil(14/3), ceil(20/3)
    assert train.frame_shape == (3, 16, 16) and train.frames.dtype == torch.uint8
    assert train.clip_names[2] == "HandstandPushups/v_HandstandPushups_g01_c01.avi"
    assert train.source == str(ucf)
    red = train.clip(0).float().amax(dim=(2, 3)).mean(0)  # brightest pixel per channel: the bar
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # channel order is RGB
    # The bar moves 2 px/frame at 64 px wide → 6 source px per kept frame → 1.5 px at 16 wide.
    col = train.clip(1)[:, 1].float().mean(1)  # (T, W) column brightness
    centre = (col * torch.arange(16)).sum(1) / col.sum(1)
    assert bool((centre.diff() > 0.8).all()) and bool((centre.diff() < 2.2).all())
    test = UCF101().load("test", root=ucf, side=16, gray=True)
    assert test.labels.tolist() == [1] and test.frame_shape == (1, 16, 16)


@needs_av
def test_ucf101_cache_is_reused_and_keyed_by_settings(ucf, tmp_path):
    a = UCF101().load("train", root=ucf, side=16)
    stores = sorted((tmp_path / "cache/biossl/ucf101/frames").glob("*.u8"))
    assert len(stores) == 1
    before = stores[0].stat().st_mtime_ns
    b = UCF101().load("train", root=ucf, side=16)
    assert stores[0].stat().st_mtime_ns == before and torch.equal(a.frames, b.frames)
    UCF101().load("train", root=ucf, side=12)
    assert len(list((tmp_path / "cache/biossl/ucf101/frames").glob("*.u8"))) == 2


@needs_av
def test_ucf101_corrupt_video_is_named_and_leaves_no_cache(ucf, tmp_path):
    bad = ucf / "UCF-101/Archery/v_Archery_g01_c01.avi"
    bad.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(DatasetError, match=r"v_Archery_g01_c01\.avi: cannot be decoded"):
        UCF101().load("train", root=ucf, side=16)
    store = tmp_path / "cache/biossl/ucf101/frames"
    assert not list(store.iterdir())  # neither a partial store nor a temporary file


@needs_av
def test_ucf101_split_naming_a_missing_clip(ucf):
    lst = ucf / "ucfTrainTestlist/testlist01.txt"
    lst.write_text(lst.read_text() + "Archery/v_Archery_g09_c01.avi\r\n", newline="")
    with pytest.raises(DatasetError, match=r"testlist01\.txt:2: clip Archery/v_Archery_g09_c01\.avi is missing"):
        UCF101().load("test", root=ucf, side=16)


@needs_av
def test_ucf101_split_naming_an_unknown_class(ucf):
    lst = ucf / "ucfTrainTestlist/trainlist01.txt"
    lst.write_text(lst.read_text() + "\r\nJuggling/v_Juggling_g01_c01.avi 4\r\n", newline="")
    with pytest.raises(DatasetError, match=r"trainlist01\.txt:5: class 'Juggling' .* is not in .*classInd"):
        UCF101().load("train", root=ucf, side=16)


@needs_av
def test_ucf101_train_id_disagreeing_with_class_index(ucf):
    lst = ucf / "ucfTrainTestlist/trainlist01.txt"
    lst.write_text(lst.read_text().replace("v_Archery_g01_c01.avi 2", "v_Archery_g01_c01.avi 7"), newline="")
    with pytest.raises(DatasetError, match=r"trainlist01\.txt:2: .* class id 7 but .* gives Archery id 2"):
        UCF101().load("train", root=ucf, side=16)


@needs_av
def test_ucf101_clip_shorter_than_needed(ucf):
    with pytest.raises(DatasetError, match=r"Archery/v_Archery_g01_c01\.avi has 5 frames, fewer than the 6"):
        UCF101().load("train", root=ucf, side=16, min_frames=6)


@needs_av
def test_ucf101_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        UCF101().load("train", root=tmp_path / "nowhere")
    msg = str(e.value)
    assert "ucfTrainTestlist/trainlist01.txt" in msg and str(tmp_path / "nowhere") in msg
    assert "does not download UCF-101" in msg and "UCF101.rar" in msg


@needs_av
def test_ucf101_found_through_biossl_data(ucf, monkeypatch):
    monkeypatch.setenv("BIOSSL_DATA", str(ucf.parent))  # <entry>/ucf101, as for the image sets
    assert UCF101().load("test", side=8).clip_names == ("Archery/v_Archery_g02_c01.avi",)


@needs_av
def test_ucf101_options_are_checked(ucf):
    with pytest.raises(ValueError, match="no option 'sidee'.*options are: fold, side"):
        UCF101().load("train", root=ucf, sidee=16)
    with pytest.raises(ValueError, match="fold must be 1, 2 or 3"):
        UCF101().load("train", root=ucf, fold=4)
    with pytest.raises(ValueError, match="no split 'val'"):
        UCF101().load("val", root=ucf)


# --------------------------------------------------------------------------- generated corpus
TINY = dict(side=32, frames=8, train_per_class=2, test_per_class=6)


def centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """(T, 1, H, W) → (T, 2) intensity-weighted (x, y) in pixels."""
    w = frames[:, 0].double()
    h, wd = w.shape[1:]
    m = w.sum((1, 2))
    return torch.stack([(w.sum(1) * torch.arange(wd)).sum(1) / m, (w.sum(2) * torch.arange(h)).sum(1) / m], 1)


def orientation(frames: torch.Tensor) -> torch.Tensor:
    """(T, 1, H, W) → (T,) principal-axis angle (x right, y down): grows when turning clockwise."""
    w = frames[:, 0].double()
    h, wd = w.shape[1:]
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(wd, dtype=torch.float64),
                          indexing="ij")
    m = w.sum((1, 2))
    cx, cy = (w * x).sum((1, 2)) / m, (w * y).sum((1, 2)) / m
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    mxx, myy, mxy = (w * dx * dx).sum((1, 2)), (w * dy * dy).sum((1, 2)), (w * dx * dy).sum((1, 2))
    return 0.5 * torch.atan2(2 * mxy, mxx - myy)


@needs_fmnist
def test_corpus_actions_are_visible_in_the_frames():
    cs = FashionActions().load("test", root=FMNIST_SYSTEM, texture_contrast=0.0, **TINY)
    assert len(cs) == 9 * 6 and cs.fixed_length == 8 and cs.frame_shape == (1, 32, 32)
    clips = cs.clips()
    by = {name: clips[cs.labels == i] for i, name in enumerate(ACTIONS)}
    for name, axis, sign in [("translate-right", 0, 1), ("translate-left", 0, -1),
                             ("translate-down", 1, 1), ("translate-up", 1, -1)]:
        com = torch.stack([centre_of_mass(c) for c in by[name]])  # (n, T, 2)
        moved = com[:, -1] - com[:, 0]
        assert bool((sign * moved[:, axis] > 5).all()), (name, moved)  # ≥ 5 px along the action
        assert bool((moved[:, 1 - axis].abs() < 1).all()), (name, moved)  # < 1 px across it
    for name, grow in [("zoom-in", True), ("zoom-out", False)]:
        area = (by[name][:, :, 0] > 60).flatten(2).sum(2).double()  # bright pixels per frame
        ratio = area[:, -1] / area[:, 0]
        assert bool((ratio > 2).all() if grow else (ratio < 0.5).all()), (name, ratio)
    turns = {}
    for name in ("rotate-cw", "rotate-ccw"):
        d = torch.stack([orientation(c).diff() for c in by[name]])
        d = (d + math.pi / 2) % math.pi - math.pi / 2  # an axis is defined up to a half turn
        turns[name] = d.sum(1)
    # 90°–180° over the clip; measured on the principal axis, which round objects blur.
    assert bool((turns["rotate-cw"] > 1.0).all()) and bool((turns["rotate-ccw"] < -1.0).all()), turns


@needs_fmnist
def test_corpus_static_clips_do_not_change_and_others_do():
    cs = FashionActions().load("test", root=FMNIST_SYSTEM, **TINY)  # textured backgrounds
    diff = cs.clips().int().diff(dim=1).abs().flatten(1).amax(1)
    static = cs.labels == ACTIONS.index("static")
    assert bool((diff[static] == 0).all()) and bool((diff[~static] > 30).all())
    # The background is textured: the pixels outside the object vary within a frame.
    assert bool((cs.clips()[static][:, 0].float().flatten(1).std(1) > 5).all())


@needs_fmnist
def test_corpus_labels_balanced_objects_from_the_split(tmp_path, monkeypatch):
    cs = FashionActions().load("test", root=FMNIST_SYSTEM, **TINY)
    assert torch.bincount(cs.labels).tolist() == [6] * 9
    assert cs.objects is not None and cs.num_objects == 10
    assert int(torch.bincount(cs.objects, minlength=10).max()) - int(torch.bincount(cs.objects).min()) <= 1
    assert cs.class_names == ACTIONS and cs.source.endswith(".u8")


@needs_fmnist
def test_corpus_same_seed_same_bytes_other_seed_other_bytes(tmp_path, monkeypatch):
    a = FashionActions().load("test", root=FMNIST_SYSTEM, **TINY)
    first = Path(a.source)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))  # generate afresh
    b = FashionActions().load("test", root=FMNIST_SYSTEM, **TINY)
    assert Path(b.source) != first and Path(b.source).read_bytes() == first.read_bytes()
    assert torch.equal(a.labels, b.labels) and torch.equal(a.objects, b.objects)
    c = FashionActions().load("test", root=FMNIST_SYSTEM, seed=1, **TINY)
    assert not torch.equal(c.frames, a.frames)
    # A cached corpus is reused, not rendered again.
    mtime = Path(b.source).stat().st_mtime_ns
    FashionActions().load("test", root=FMNIST_SYSTEM, **TINY)
    assert Path(b.source).stat().st_mtime_ns == mtime


@needs_fmnist
def test_corpus_train_clips_show_train_images_and_object_labels_are_theirs():
    from biossl.data import load_dataset
    from biossl.data.video.actions import FashionActionsConfig, generate

    cfg = FashionActionsConfig(**TINY)
    tr = FashionActions().load("train", root=FMNIST_SYSTEM, **TINY)
    fm = {s: load_dataset("fashion-mnist", s, root=FMNIST_SYSTEM, download=False) for s in ("train", "test")}
    plan, clips = generate(cfg, "train", fm["train"].images, fm["train"].labels)
    assert torch.equal(clips, tr.clips())  # the cached train corpus is rendered from train images
    assert bool((fm["train"].labels[plan.image_idx] == tr.objects).all())
    assert plan.image_idx.unique().numel() == len(tr)  # distinct instances
    _, other = generate(cfg, "train", fm["test"].images, fm["test"].labels)
    assert not torch.equal(other, clips)


def test_corpus_options_are_checked():
    with pytest.raises(ValueError, match="frames must be ≥ 2"):
        FashionActions().load("train", frames=1)
    with pytest.raises(ValueError, match="no option 'clips'"):
        FashionActions().load("train", clips=3)
