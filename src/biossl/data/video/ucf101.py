"""UCF-101 (101 human actions, 13 320 YouTube clips) from the official release.

Files, as unpacked from ``UCF101.rar`` and ``UCF101TrainTestSplits-RecognitionTask.zip``
into one dataset directory:

- ``UCF-101/<ClassName>/v_<ClassName>_gXX_cYY.avi``: the videos (320×240, 25 fps, Xvid);
- ``ucfTrainTestlist/classInd.txt``: ``<id> <ClassName>`` per line, ids 1..101;
- ``ucfTrainTestlist/trainlist0{1,2,3}.txt``: ``<ClassName>/<file>.avi <id>`` per line;
- ``ucfTrainTestlist/testlist0{1,2,3}.txt``: ``<ClassName>/<file>.avi`` per line (the
  label is the class directory).

The lists use CRLF line ends. One class is spelled ``HandstandPushups`` in its directory
and ``v_HandStandPushups_…`` in its file names; a path missing under its exact name is
looked up case-insensitively inside its class directory, which covers that and
repackagings that renamed the files.

Decoding (PyAV) keeps every ``frame_step``-th frame (CLAPP: 3) and resizes it to
``side``×``side`` (CLAPP: 128; the 4:3 frame is squashed). The result is cached as a
memory-mapped uint8 store in the user cache (``…/biossl/ucf101/frames``), keyed by
the settings, the list files and the video files' sizes, so epochs and later runs read
it instead of decoding. biossl does not download UCF-101 (a 6.5 GB RAR archive).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from biossl.data.base import DatasetError
from biossl.data.locate import Source, cache_dir, find_members, missing_message, search_dirs
from biossl.data.video.clipset import ClipSet
from biossl.data.video.decode import decode_video
from biossl.data.video.spec import VideoSpec
from biossl.data.video.store import StoreWriter, cache_key, read_store

SOURCE = Source(name="ucf101", homepage="https://www.crcv.ucf.edu/data/UCF101.php")
LIST_DIR = "ucfTrainTestlist"
VIDEO_DIRS = ("UCF-101", "UCF101", "videos", ".")
"""Where the class directories are looked for, relative to the dataset directory."""
NOT_DOWNLOADED = ("biossl does not download UCF-101 (a 6.5 GB RAR archive). Get UCF101.rar and "
                  "UCF101TrainTestSplits-RecognitionTask.zip from the home page below and unpack "
                  "both into one of the directories above (giving UCF-101/ and ucfTrainTestlist/).")


@dataclass
class UCF101Config:
    fold: int = 1
    """Official train/test split 1, 2 or 3 (trainlist0F.txt / testlist0F.txt)."""
    side: int = 128
    """Frames are resized to side×side (CLAPP: 128)."""
    frame_step: int = 3
    """Keep every frame_step-th frame (CLAPP: 3; 25 fps → 8.3 fps)."""
    gray: bool = False
    """One luminance channel instead of RGB (a third of the cache and of the first conv)."""
    clips_per_class: int = 0
    """Use only the first N clips of each class in the list (0: all), for runs on a budget."""
    min_frames: int = 1
    """DatasetError at load when a clip has fewer frames (after frame_step) than this;
    set it to what the views need (blocks × block length)."""

    def validate(self) -> None:
        if self.fold not in (1, 2, 3):
            raise ValueError(f"ucf101 fold must be 1, 2 or 3, got {self.fold}")
        for key in ("side", "frame_step", "min_frames"):
            if getattr(self, key) < 1:
                raise ValueError(f"ucf101 {key} must be ≥ 1, got {getattr(self, key)}")
        if self.clips_per_class < 0:
            raise ValueError(f"ucf101 clips_per_class must be ≥ 0, got {self.clips_per_class}")


def read_class_index(path: str | Path) -> list[str]:
    """``classInd.txt`` → class names in id order; ids must be 1, 2, … line after line."""
    path = Path(path)
    names: list[str] = []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{lineno}: expected '<id> <ClassName>', got {line!r}; "
                               f"the file is corrupt or not UCF-101's classInd.txt")
        if int(parts[0]) != len(names) + 1:
            raise DatasetError(f"{path}:{lineno}: class id {parts[0]} where {len(names) + 1} was "
                               f"expected (ids must run 1, 2, … in order); the file is corrupt")
        names.append(parts[1])
    if not names:
        raise DatasetError(f"{path}: no classes; the file is empty or corrupt")
    return names


def read_split_list(path: str | Path, class_names: list[str],
                    class_index: str | Path = "classInd.txt") -> tuple[list[str], list[int], list[int]]:
    """A train/test list → (clip paths relative to the video directory, 0-based labels,
    line numbers). The label is the clip's class directory; a train list's id must agree."""
    path = Path(path)
    ids = {n: i for i, n in enumerate(class_names)}
    folded = {n.lower(): i for i, n in enumerate(class_names)}
    clips, labels, linenos = [], [], []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0] or (len(parts) == 2 and not parts[1].isdigit()):
            raise DatasetError(f"{path}:{lineno}: expected '<ClassName>/<file>.avi [<id>]', got "
                               f"{line!r}; the file is corrupt or not a UCF-101 split list")
        rel = parts[0]
        cls = rel.split("/")[0]
        label = ids.get(cls, folded.get(cls.lower()))
        if label is None:
            raise DatasetError(f"{path}:{lineno}: class {cls!r} of {rel} is not in {class_index} "
                               f"({len(class_names)} classes). The split lists and classInd.txt come "
                               f"from different releases; unpack all of ucfTrainTestlist/ from one "
                               f"UCF101TrainTestSplits-RecognitionTask.zip.")
        if len(parts) == 2 and int(parts[1]) != label + 1:
            raise DatasetError(f"{path}:{lineno}: {rel} has class id {parts[1]} but {class_index} "
                               f"gives {cls} id {label + 1}; the lists come from different releases.")
        clips.append(rel)
        labels.append(label)
        linenos.append(lineno)
    if not clips:
        raise DatasetError(f"{path}: no clips; the file is empty or corrupt")
    return clips, labels, linenos


def _lines(path: Path):
    """(1-based line number, stripped line) of the non-blank lines (CRLF or LF)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text file ({e}); the file is corrupt") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield lineno, line.strip()


def find_video_dir(dataset_dir: Path, first_clip: str) -> Path:
    """The directory holding the class directories (checked by the first clip's class)."""
    cls = first_clip.split("/")[0]
    tried = [(dataset_dir / d).resolve() for d in VIDEO_DIRS]
    for d in tried:
        if (d / cls).is_dir() or any(c.name.lower() == cls.lower() for c in _subdirs(d)):
            return d
    raise DatasetError(f"UCF-101 videos not found: no class directory {cls}/ in "
                       f"{', '.join(map(str, tried))}. Unpack UCF101.rar into {dataset_dir} "
                       f"(it gives UCF-101/{cls}/…).")


def _subdirs(d: Path) -> list[Path]:
    return [c for c in d.iterdir() if c.is_dir()] if d.is_dir() else []


def find_clips(video_dir: Path, clips: list[str], linenos: list[int], list_path: Path) -> list[Path]:
    """Paths of ``clips`` under ``video_dir``; DatasetError naming the list file, line and clip
    of the first one missing. Falls back to a case-insensitive match inside the class dir."""
    listing: dict[str, dict[str, Path]] = {}  # lower-case class dir → lower-case name → path

    def folded(rel: str) -> Path | None:
        cls, _, name = rel.partition("/")
        key = cls.lower()
        if key not in listing:
            listing[key] = {}
            for d in _subdirs(video_dir):
                if d.name.lower() == key:
                    listing[key].update({f.name.lower(): f for f in d.iterdir()})
        return listing[key].get(name.lower())

    found = []
    for rel, lineno in zip(clips, linenos):
        p = video_dir / rel
        if not p.is_file():
            p = folded(rel)  # type: ignore[assignment]
            if p is None:
                raise DatasetError(
                    f"{list_path}:{lineno}: clip {rel} is missing (no {video_dir / rel}). The videos "
                    f"are incomplete or from another release than the list: unpack UCF101.rar again "
                    f"into {video_dir.parent}, or use the lists that came with these videos.")
        found.append(p)
    return found


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class UCF101(VideoSpec):
    """UCF-101: 101 actions; train/test lists of official fold 1, 2 or 3."""

    name = "ucf101"
    num_classes = 101
    Config = UCF101Config

    def _load(self, split: str, root: Path | None, download: bool, cfg: UCF101Config) -> ClipSet:
        list_name = f"{split}list0{cfg.fold}.txt"
        members = [(f"{LIST_DIR}/classInd.txt", "classInd.txt"), (f"{LIST_DIR}/{list_name}", list_name)]
        dirs = search_dirs(SOURCE.name, root)
        paths = next((p for d, _ in dirs if (p := find_members(d, members)) is not None), None)
        if paths is None:
            raise DatasetError(missing_message(SOURCE, members, dirs, NOT_DOWNLOADED))
        class_path, list_path = paths
        dataset_dir = class_path.parent.parent if class_path.parent.name == LIST_DIR else class_path.parent

        class_names = read_class_index(class_path)
        if len(class_names) != self.num_classes:
            raise DatasetError(f"{class_path}: {len(class_names)} classes, UCF-101 has "
                               f"{self.num_classes}; the file is not UCF-101's classInd.txt")
        clips, labels, linenos = read_split_list(list_path, class_names, class_path)
        if cfg.clips_per_class:
            clips, labels, linenos = _first_per_class(clips, labels, linenos, cfg.clips_per_class)
        video_dir = find_video_dir(dataset_dir, clips[0])
        files = find_clips(video_dir, clips, linenos, list_path)

        stem = "{}0{}-{}px-step{}-{}-{}".format(
            split, cfg.fold, cfg.side, cfg.frame_step, "gray" if cfg.gray else "rgb",
            cache_key(video_dir=str(video_dir), classes=_sha(class_path), list=_sha(list_path),
                      clips=clips, sizes=[f.stat().st_size for f in files], side=cfg.side,
                      step=cfg.frame_step, gray=cfg.gray))
        store_dir = cache_dir(SOURCE.name) / "frames"
        stored = read_store(store_dir, stem)
        if stored is None:
            _decode_all(files, store_dir, stem, cfg, desc=f"ucf101 {split}0{cfg.fold}")
            stored = read_store(store_dir, stem)
            assert stored is not None, "a store just written must read back"
        frames, offsets, _, _ = stored
        out = ClipSet(frames, offsets, torch.tensor(labels, dtype=torch.int64), tuple(class_names),
                      self.name, split, clip_names=tuple(clips), source=str(dataset_dir))
        out.require_frames(cfg.min_frames, f"min_frames={cfg.min_frames} (frame_step={cfg.frame_step})")
        return out


def _first_per_class(clips, labels, linenos, k):
    seen: dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels):
        seen[y] = seen.get(y, 0) + 1
        if seen[y] <= k:
            keep.append(i)
    return [clips[i] for i in keep], [labels[i] for i in keep], [linenos[i] for i in keep]


def _decode_all(files: list[Path], store_dir: Path, stem: str, cfg: UCF101Config, desc: str) -> None:
    shape = (1 if cfg.gray else 3, cfg.side, cfg.side)
    with StoreWriter(store_dir, stem, shape) as writer:
        for f in tqdm(files, desc=desc, unit="clip", disable=None):
            writer.add(decode_video(f, size=(cfg.side, cfg.side), frame_step=cfg.frame_step, gray=cfg.gray))
        writer.commit({"clips": len(files)})
