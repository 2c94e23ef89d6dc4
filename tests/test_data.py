"""Dataset layer: parsing of the real layouts (fake trees made of real demo frames), windows, samples, errors."""

from __future__ import annotations


import cv2
import pytest
import torch

from stdvsr import data
from stdvsr.data import ClipDataset, Clip, dihedral, dihedral_inverse, gather_windows, window_indices
from stdvsr.degradations import bd_downsample
from stdvsr.errors import StdvsrError
from stdvsr.io import write_image
from tests.helpers import corrupt_mid_stream, count_decodable, decode_frames, make_vid4, make_vimeo, write_video


@pytest.fixture()
def vimeo(tmp_path, carphone_frames):
    return make_vimeo(tmp_path / "vimeo", carphone_frames)


@pytest.fixture()
def vid4(tmp_path, carphone_frames):
    return make_vid4(tmp_path / "Vid4", carphone_frames[:6])


# --------------------------------------------------------------------------------------------------- windows
def test_window_indices_match_basicsr_examples():
    # The examples BasicSR documents for generate_frame_indices (centre 0, 5 frames).
    assert window_indices(0, 10, 5, "replicate") == [0, 0, 0, 1, 2]
    assert window_indices(0, 10, 5, "reflection") == [2, 1, 0, 1, 2]
    assert window_indices(0, 10, 5, "reflection_circle") == [4, 3, 0, 1, 2]
    assert window_indices(0, 10, 5, "circle") == [3, 4, 0, 1, 2]


def test_window_indices_at_the_end_of_a_clip():
    # Worked by hand from the BasicSR rules for the last frame of a 10-frame clip.
    assert window_indices(9, 10, 5, "replicate") == [7, 8, 9, 9, 9]
    assert window_indices(9, 10, 5, "reflection") == [7, 8, 9, 8, 7]
    assert window_indices(9, 10, 5, "reflection_circle") == [7, 8, 9, 6, 5]
    assert window_indices(9, 10, 5, "circle") == [7, 8, 9, 5, 6]
    assert window_indices(4, 10, 7) == [1, 2, 3, 4, 5, 6, 7]


def test_window_errors():
    with pytest.raises(StdvsrError, match="too short for a 7-frame window"):
        window_indices(0, 2, 7, "reflection")
    assert window_indices(0, 1, 7, "replicate") == [0] * 7
    with pytest.raises(StdvsrError, match="unknown padding mode 'mirror'"):
        window_indices(0, 10, 5, "mirror")


def test_gather_windows_picks_the_padded_frames():
    frames = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1, 1).expand(2, 6, 3, 4, 5)
    windows = gather_windows(frames, 3, "replicate")
    assert windows.shape == (2, 6, 3, 3, 4, 5)
    assert windows[0, :, :, 0, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 5]]


def test_dihedral_inverse_round_trip():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)
    seen = set()
    for t in range(8):
        y = dihedral(x, t)
        seen.add(tuple(y.flatten().tolist()))
        assert torch.equal(dihedral_inverse(y, t), x)
    assert len(seen) == 8  # eight distinct transforms


# ------------------------------------------------------------------------------------------------- layouts
def test_vimeo90k_splits_and_ids(vimeo):
    train = data.load_clips(f"vimeo90k:{vimeo}", "train")
    assert [c.name for c in train] == ["00001/0266", "00001/0267"]
    assert [p.name for p in train[0].frames] == [f"im{i}.png" for i in range(1, 8)]
    assert train[0].frames[0] == vimeo / "sequences" / "00001" / "0266" / "im1.png"
    assert [c.name for c in data.load_clips(f"vimeo90k:{vimeo}", "test")] == ["00002/0001"]
    # BasicSR's meta-info files carry extra columns after the id
    assert [c.name for c in data.load_clips(f"vimeo90k:{vimeo}", "slow")] == ["00002/0001"]


def test_vimeo90k_errors(vimeo, tmp_path):
    with pytest.raises(StdvsrError, match="split 'fast' needs a clip list"):
        data.load_clips(f"vimeo90k:{vimeo}", "fast")
    (vimeo / "sep_testlist.txt").write_text("00002-0001\n")
    with pytest.raises(StdvsrError, match=r"line 1: '00002-0001' is not a Vimeo90K clip id"):
        data.load_clips(f"vimeo90k:{vimeo}", "test")
    with pytest.raises(StdvsrError, match="is not a folder"):
        data.load_clips(f"vimeo90k:{tmp_path / 'nowhere'}")
    # a listed clip with a missing frame fails when read, naming the file
    (vimeo / "sequences" / "00001" / "0266" / "im4.png").unlink()
    clip = data.load_clips(f"vimeo90k:{vimeo}", "train")[0]
    with pytest.raises(StdvsrError, match=r"frame .*00001/0266/im4.png does not exist"):
        data.read_frames(clip, range(7))


def test_vid4_layout_with_lr_twins(vid4, carphone_frames):
    clips = data.load_clips(f"vid4:{vid4}")
    assert [c.name for c in clips] == ["calendar", "city"]
    assert len(clips[0]) == 6 and clips[0].frames[2].name == "00000002.png"
    assert set(clips[0].lq_frames) == {"bd"}
    lq, gt = data.read_frames(clips[0], [1, 2], lq_from_disk=True)
    expected = cv2.resize(carphone_frames[2], (44, 36), interpolation=cv2.INTER_AREA)
    assert torch.equal(lq[1], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    assert torch.equal(gt[0], torch.from_numpy(carphone_frames[1]).permute(2, 0, 1).float() / 255)
    with pytest.raises(StdvsrError, match="has no BI LR frames on disk"):
        data.read_frames(clips[0], [0], degradation="bi", lq_from_disk=True)


def test_vid4_lr_names_must_match(vid4):
    (vid4 / "BDx4" / "city" / "00000005.png").unlink()
    with pytest.raises(StdvsrError, match="does not hold the same frame names"):
        data.load_clips(f"vid4:{vid4}")


def test_vid4_without_gt(tmp_path):
    (tmp_path / "Vid4").mkdir()
    with pytest.raises(StdvsrError, match="is not a Vid4 folder"):
        data.load_clips(f"vid4:{tmp_path / 'Vid4'}")


def test_folder_of_folders_and_single_folder(tmp_path, carphone_frames):
    root = tmp_path / "frames"
    for i, frame in enumerate(carphone_frames[:3]):
        write_image(root / "walk" / f"frame_{i + 8}.png", frame)  # 8, 9, 10: natural order matters
        write_image(root / "alley" / f"{i:04d}.jpg", frame)
    clips = data.load_clips(f"folder:{root}")
    assert [c.name for c in clips] == ["alley", "walk"]
    assert [p.name for p in clips[1].frames] == ["frame_8.png", "frame_9.png", "frame_10.png"]
    single = data.load_clips(f"folder:{root / 'walk'}")
    assert len(single) == 1 and single[0].name == "walk" and len(single[0]) == 3


def test_missing_frame_and_empty_folder(tmp_path, carphone_frames):
    root = tmp_path / "frames"
    for i in (0, 1, 3):
        write_image(root / "clip" / f"{i:08d}.png", carphone_frames[i])
    with pytest.raises(StdvsrError, match=r"missing frame number 2 \(frames jump from 00000001.png to 00000003.png\)"):
        data.load_clips(f"folder:{root}")
    (root / "empty").mkdir()
    (root / "clip" / "00000003.png").unlink()
    with pytest.raises(StdvsrError, match=r"clip folder .*empty has no frames"):
        data.load_clips(f"folder:{root}")


def test_frame_size_errors(tmp_path, carphone_frames):
    root = tmp_path / "frames" / "clip"
    write_image(root / "00000000.png", carphone_frames[0])
    write_image(root / "00000001.png", carphone_frames[1][:, :172])
    clip = data.load_clips(f"folder:{root}")[0]
    with pytest.raises(StdvsrError, match=r"00000001.png is 172×144 but 00000000.png of clip clip is 176×144"):
        data.read_frames(clip, [0, 1])
    with pytest.raises(StdvsrError, match="is 172×144 but"):
        data.check_clip(clip)


def test_size_not_divisible_and_mod_crop(tmp_path, carphone_frames):
    root = tmp_path / "odd"
    for i in range(2):
        write_image(root / f"{i}.png", carphone_frames[i][:143, :174])
    clip = data.load_clips(f"folder:{root}")[0]
    with pytest.raises(StdvsrError, match=r"are 174×143, not divisible by scale 4; .*--mod-crop"):
        data.read_frames(clip, [0, 1])
    lq, gt = data.read_frames(clip, [0, 1], mod_crop=True)
    assert gt.shape == (2, 3, 140, 172) and lq.shape == (2, 3, 35, 43)
    assert torch.equal(gt[0], torch.from_numpy(carphone_frames[0][:140, :172]).permute(2, 0, 1).float() / 255)


def test_corrupt_png(tmp_path, carphone_frames):
    root = tmp_path / "clip"
    write_image(root / "00000000.png", carphone_frames[0])
    write_image(root / "00000001.png", carphone_frames[1])
    blob = (root / "00000001.png").read_bytes()
    (root / "00000001.png").write_bytes(blob[: len(blob) // 2])  # header intact, data truncated
    clip = data.load_clips(f"folder:{root}")[0]
    data.check_clip(clip)  # the header check alone cannot see the damage...
    with pytest.raises(StdvsrError, match=r"cannot decode frame .*00000001.png: .*truncated"):
        data.check_clip(clip, decode=True)  # ...a full decode does
    with pytest.raises(StdvsrError, match=r"cannot decode frame .*00000001.png"):
        data.read_frames(clip, [0, 1])


def test_unknown_specs(tmp_path):
    with pytest.raises(StdvsrError, match=r"unknown dataset spec 'reds:/x'; use demo, vimeo90k:ROOT"):
        data.parse_spec("reds:/x")
    with pytest.raises(StdvsrError, match=f"for a folder of frames use folder:{tmp_path}"):
        data.parse_spec(str(tmp_path))
    with pytest.raises(StdvsrError, match="needs a path"):
        data.parse_spec("vid4")
    assert data.parse_spec("demo:bigbuckbunny") == ("demo", "bigbuckbunny")


def test_demo_clips_by_name(demo_home):
    clips = data.load_clips("demo:bigbuckbunny,carphone", "train")  # names win over the split
    assert [c.name for c in clips] == ["bigbuckbunny", "carphone"]
    assert [len(c) for c in clips] == [132, 120]
    with pytest.raises(StdvsrError, match=r"no demo clip named /x; the demo clips are bikes_01, .*carphone"):
        data.load_clips("demo:/x")


def test_video_file_is_decoded_once(tmp_path, stdvsr_home, carphone_frames):
    video = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (176, 144))
    for frame in carphone_frames[:5]:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    clips = data.load_clips(f"video:{video}")
    assert len(clips) == 1 and clips[0].name == "walk" and len(clips[0]) == 5
    assert str(clips[0].frames[0]).startswith(str(stdvsr_home / "videos"))
    mtime = clips[0].frames[0].stat().st_mtime_ns
    again = data.load_clips(f"video:{video}")
    assert again[0].frames == clips[0].frames and again[0].frames[0].stat().st_mtime_ns == mtime
    from click.testing import CliRunner

    from stdvsr.cli import cli

    forced = CliRunner().invoke(cli, ["data", "prepare", f"video:{video}", "--force"])  # --force decodes again
    assert forced.exit_code == 0, forced.output
    assert clips[0].frames[0].stat().st_mtime_ns != mtime and len(data.list_frames(clips[0].frames[0].parent)) == 5
    lq, gt = data.read_frames(clips[0], range(5))
    assert gt.shape == (5, 3, 144, 176) and lq.shape == (5, 3, 36, 44)
    with pytest.raises(StdvsrError, match="video .*missing.mp4 does not exist"):
        data.load_clips(f"video:{tmp_path / 'missing.mp4'}")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(StdvsrError, match="bad.mp4"):
        data.load_clips(f"video:{tmp_path / 'bad.mp4'}")


def test_not_a_video_leaves_nothing_behind(tmp_path, stdvsr_home):
    from click.testing import CliRunner

    from stdvsr.cli import cli
    from tests.test_cli import assert_user_error

    (tmp_path / "notes.mp4").write_text("not a video")
    assert_user_error(CliRunner().invoke(cli, ["data", "info", f"video:{tmp_path / 'notes.mp4'}"]), "notes.mp4")
    assert not stdvsr_home.exists()  # before: an empty $STDVSR_HOME/videos/notes-<hash>/ was left
    (stdvsr_home / "videos").mkdir(parents=True)  # folders that were there before stay
    assert_user_error(CliRunner().invoke(cli, ["data", "info", f"video:{tmp_path / 'notes.mp4'}"]), "notes.mp4")
    assert list(stdvsr_home.rglob("*")) == [stdvsr_home / "videos"]


def test_corrupt_video_is_refused_unless_allow_short(tmp_path, stdvsr_home, demo_videos):
    from click.testing import CliRunner

    from stdvsr.cli import cli
    from tests.test_cli import assert_user_error

    video = corrupt_mid_stream(write_video(tmp_path / "cut.mp4", decode_frames(demo_videos["carphone"], 10)))
    decoded = count_decodable(video)
    assert 0 < decoded < 10
    # before: "1 clip, 2 frames", exit 0; now refused, naming the file, both counts and the way to accept it
    refused = CliRunner().invoke(cli, ["data", "prepare", f"video:{video}"])
    assert_user_error(refused, f"video {video}: only {decoded} of the 10 frames", "--allow-short")
    with pytest.raises(StdvsrError, match="--allow-short"):  # every command that reads video:FILE
        data.load_clips(f"video:{video}")
    assert not list(stdvsr_home.rglob("*.png"))
    accepted = CliRunner().invoke(cli, ["data", "prepare", f"video:{video}", "--allow-short"])
    assert accepted.exit_code == 0, accepted.output
    assert f"Warning: video {video}: only {decoded} of the 10 frames" in accepted.stderr
    assert f"1 clip, {decoded} frames" in accepted.stdout
    (clip,) = data.load_clips(f"video:{video}")  # accepted once: the decoded frames are what every command reads
    assert len(clip) == decoded
    whole = write_video(tmp_path / "whole.mp4", decode_frames(demo_videos["carphone"], 10))
    assert len(data.load_clips(f"video:{whole}")[0]) == 10


# --------------------------------------------------------------------------------------------------- samples
def test_samples_are_aligned_crops_of_full_frame_degradation(vid4):
    clips = data.load_clips(f"vid4:{vid4}")
    ds = ClipDataset(clips, num_frames=3, scale=4, patch_size=64, seed=7)
    assert len(ds) == 2 * (6 - 3 + 1)
    for index in range(len(ds)):
        item = ds[index]
        top, left = item["crop"]
        assert top % 4 == 0 and left % 4 == 0 and item["transform"] == 0
        assert item["gt"].shape == (3, 3, 64, 64) and item["lq"].shape == (3, 3, 16, 16)
        assert item["lq"].dtype == torch.float32
        full_lq, full_gt = data.read_frames(clips[0 if index < 4 else 1], range(item["start"], item["start"] + 3))
        # the LR crop is the crop of the degradation of the *full* frame: the pixels a cached target describes
        assert torch.equal(item["gt"], full_gt[..., top:top + 64, left:left + 64])
        assert torch.equal(item["lq"], full_lq[..., top // 4:top // 4 + 16, left // 4:left // 4 + 16])
    assert torch.allclose(full_lq, bd_downsample(full_gt, 4))


def test_samples_are_deterministic_per_seed_epoch_index(vid4):
    clips = data.load_clips(f"vid4:{vid4}")
    a, b = ClipDataset(clips, 3, seed=1), ClipDataset(clips, 3, seed=1)
    assert [a[i]["crop"] for i in range(len(a))] == [b[i]["crop"] for i in range(len(b))]
    first = [a[i]["crop"] for i in range(len(a))]
    a.set_epoch(1)
    assert [a[i]["crop"] for i in range(len(a))] != first
    # workers see the same items: a DataLoader with 2 workers returns what direct indexing returns
    loader = torch.utils.data.DataLoader(b, batch_size=2, num_workers=2)
    batches = list(loader)
    assert torch.equal(torch.cat([x["gt"] for x in batches]), torch.stack([b[i]["gt"] for i in range(len(b))]))


def test_augmentation_transforms_hr_then_degrades(vid4):
    clips = data.load_clips(f"vid4:{vid4}")
    aug = ClipDataset(clips, 3, patch_size=32, seed=3, augment=True)
    transforms = set()
    for i in range(len(aug)):
        x = aug[i]
        c, start = aug.items[i]
        t, (top, left) = x["transform"], x["crop"]
        transforms.add(t)
        full = dihedral(data.read_hr(clips[c], range(start, start + 3)), t)
        assert torch.equal(x["gt"], full[..., top:top + 32, left:left + 32])
        # the LR crop is the degradation of the transformed HR frames: BD's phase-0 alignment holds for every t
        assert torch.equal(x["lq"], bd_downsample(full, 4)[..., top // 4:top // 4 + 8, left // 4:left // 4 + 8])
    assert len(transforms) > 1


def test_flipping_a_bd_pair_afterwards_would_misalign_it(carphone_frames):
    # Why augmentation transforms HR first: BD takes HR pixel 4j for LR pixel j, so the flipped LR of a frame is
    # the flipped frame sampled at 4j + 3 — three HR pixels off.
    hr = data.to_tensor(carphone_frames[:1]).double()
    flipped_after = bd_downsample(hr, 4).flip(-1)
    degraded_flip = bd_downsample(hr.flip(-1), 4)
    assert (flipped_after - degraded_flip).abs().mean() > 2 / 255


def test_full_frame_samples_and_sample_errors(vid4):
    clips = data.load_clips(f"vid4:{vid4}")
    item = ClipDataset(clips, 6, patch_size=None)[0]
    assert item["gt"].shape == (6, 3, 144, 176) and item["crop"] == (0, 0)
    with pytest.raises(StdvsrError, match="no clip has the 7 frames a sample needs"):
        ClipDataset(clips, 7)
    with pytest.raises(StdvsrError, match="--patch-size 30 must be a positive multiple of the scale 4"):
        ClipDataset(clips, 3, patch_size=30)
    with pytest.raises(StdvsrError, match="--patch-size 160 is larger than the 176×144 frames"):
        ClipDataset(clips, 3, patch_size=160)[0]
    with pytest.raises(StdvsrError, match="unknown degradation 'bx'"):
        ClipDataset(clips, 3, degradation="bx")


def test_bi_degradation_is_selectable(vid4):
    clip = data.load_clips(f"vid4:{vid4}")[0]
    lq_bd, gt = data.read_frames(clip, [0], degradation="bd")
    lq_bi, _ = data.read_frames(clip, [0], degradation="bi")
    assert lq_bi.shape == lq_bd.shape == (1, 3, 36, 44)
    assert not torch.allclose(lq_bi, lq_bd)


def test_clip_is_a_plain_record(tmp_path):
    clip = Clip("x", (tmp_path / "a.png",))
    assert len(clip) == 1 and clip.lq_frames == {}


def test_atomic_writes_leave_normal_permissions_and_no_temporaries(tmp_path):
    import os
    import stat

    from stdvsr.io import write_text

    write_text(tmp_path / "a.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
