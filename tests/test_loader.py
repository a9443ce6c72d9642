"""The training loader: the same images, labels, order and augmented pixels as the reference pipeline (per-item
``torch.manual_seed`` and torchvision's ToTensor + Normalize), the prepared cache read by default, the
torchvision/nvJPEG decode path agreeing with PIL, and the DataLoader settings. Real JPEGs throughout: a
generated synthetic dataset and the real PlantCLEF sample."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from herbarium2field.config import AugmentConfig, load_config
from herbarium2field.data.cache import ImageSource, prepare_cache
from herbarium2field.data.datamodule import H2FDataModule
from herbarium2field.data.datasets import EncodedTableDataset, collate_encoded
from herbarium2field.data.decode import TensorAugment, decode_batch, read_bytes
from herbarium2field.data.images import load_rgb
from herbarium2field.data.loaders import loader_options
from herbarium2field.data.manifest import read_dataset
from herbarium2field.data.synth import generate_dataset
from herbarium2field.data.transforms import Preprocessing, ToNormalizedTensor, train_transform

PRE = Preprocessing(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader") / "data"
    generate_dataset(root, species=4, min_images=6, max_images=6, size=96, seed=0, test_per_species=1)
    return root


def datamodule(root: Path, *overrides: str, decode: str = "pil") -> H2FDataModule:
    cfg = load_config(None, [f"data.root={root}", "data.batch_size=4", "data.val_field_fraction=0", *overrides])
    return H2FDataModule(cfg, read_dataset(root, check="none"), PRE, decode=decode)


def reference_item(dm: H2FDataModule, i: int, seed: int) -> torch.Tensor:
    """The pipeline as it was before the loader work: every generator seeded with ``torch.manual_seed`` and
    the image turned into a tensor by torchvision's ToTensor + Normalize."""
    d = dm.cfg.data
    aug = d.herbarium_aug if dm.train_table.domain.iat[i] == "herbarium" else d.field_aug
    tf = train_transform(aug, dm.pre, domain=str(dm.train_table.domain.iat[i]))
    steps = [s for s in tf.transforms if not isinstance(s, ToNormalizedTensor)] + [T.ToTensor(), T.Normalize(PRE.mean, PRE.std)]
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return T.Compose(steps)(dm.source.load(dm.train_table.path.iat[i]))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_those_of_the_reference_pipeline(synth: Path, workers: int) -> None:
    dm = datamodule(synth, f"data.num_workers={workers}")
    loader = dm.train_dataloader()
    draws = list(loader.sampler)  # epoch 0: (index, seed) pairs in order
    seen = 0
    for b, (x, y, domain, rows) in enumerate(loader):
        for k in range(len(rows)):
            i, seed = draws[b * 4 + k]
            assert int(rows[k]) == i
            assert int(y[k]) == dm.class_index[str(dm.train_table.class_id.iat[i])]
            assert int(domain[k]) == (0 if dm.train_table.domain.iat[i] == "herbarium" else 1)
            assert torch.equal(x[k], reference_item(dm, i, seed)), f"item {i} differs from the reference"
            seen += 1
        if b == 2:
            break
    assert seen == 12


def test_main_process_loading_leaves_the_training_random_streams_alone(synth: Path) -> None:
    dataset = datamodule(synth, "data.num_workers=0").train_dataset()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    dataset[(0, 99)]
    dataset[(1, 5)]
    assert torch.equal(torch.rand(3), expected[0]) and (random.random(), np.random.rand()) == expected[1:]


def test_fused_tensor_conversion_is_bit_identical(aml_sample: Path) -> None:
    fused = ToNormalizedTensor(PRE.mean, PRE.std)
    pair = T.Compose([T.ToTensor(), T.Normalize(PRE.mean, PRE.std)])
    ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2))
    photo = load_rgb(next((aml_sample / "train" / "photo").rglob("*.jpg")), min_side=96)
    for img in (ramp, photo, photo.convert("YCbCr")):  # not RGB: goes through the pair itself
        assert torch.equal(fused(img), pair(img))


def test_prepared_cache_is_the_default_input(synth: Path, tmp_path: Path) -> None:
    synth = Path(shutil.copytree(synth, tmp_path / "data"))
    dm = datamodule(synth)
    assert len(dm.source) == 0  # nothing prepared yet: the originals
    rels = read_dataset(synth, check="none").table.path.tolist()
    assert prepare_cache(synth, rels, workers=1, progress=False).ok
    dm = datamodule(synth)
    assert len(dm.source) == len(rels)
    rel = dm.train_table.path.iat[0]
    assert ".h2f-cache" in dm.source.file_for(rel).parts
    assert np.array_equal(np.asarray(dm.source.load(rel)), np.asarray(load_rgb(dm.source.file_for(rel))))
    off = datamodule(synth, "data.cache=false")
    assert len(off.source) == 0 and off.source.file_for(rel) == synth / rel


def test_loader_settings_follow_the_machine(synth: Path) -> None:
    assert loader_options(0, cuda=False) == {"num_workers": 0, "pin_memory": False}
    cpu = loader_options(3, cuda=False)
    assert cpu == {"num_workers": 3, "pin_memory": False, "persistent_workers": True, "prefetch_factor": 2}
    gpu = loader_options(8, cuda=True)
    assert gpu["pin_memory"] and gpu["persistent_workers"] and gpu["prefetch_factor"] == 4
    loader = datamodule(synth, "data.num_workers=2").train_dataloader()
    assert loader.persistent_workers and loader.prefetch_factor == (4 if torch.cuda.is_available() else 2)
    assert loader.pin_memory == torch.cuda.is_available()


def test_torchvision_decode_agrees_with_pil(aml_sample: Path, tmp_path: Path) -> None:
    files = sorted((aml_sample / "train" / "photo").rglob("*.jpg"))[:4] + sorted(
        (aml_sample / "train" / "herbarium").rglob("*.jpg"))[:4]
    base = Image.open(files[0]).convert("RGB")
    rotated = tmp_path / "rotated.jpg"  # EXIF orientation 6: libjpeg-turbo would not turn it; PIL does
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(rotated, "JPEG", exif=exif.tobytes(), quality=90)
    cmyk = tmp_path / "cmyk.jpg"
    base.convert("CMYK").save(cmyk, "JPEG", quality=90)
    png = tmp_path / "sheet.png"
    base.save(png)
    files += [rotated, cmyk, png]
    decoded = decode_batch([read_bytes(f) for f in files])
    for f, x in zip(files, decoded, strict=True):
        ref = np.asarray(load_rgb(f)).astype(np.int16)
        got = x.permute(1, 2, 0).numpy().astype(np.int16)
        assert got.shape == ref.shape, f
        assert np.abs(got - ref).mean() < 1.0, f  # libjpeg-turbo either way: equal or within rounding


def test_undecodable_bytes_raise_or_come_back_empty(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    with pytest.raises(Exception, match="bad.jpg"):
        decode_batch([read_bytes(bad)], names=["bad.jpg"])
    assert decode_batch([read_bytes(bad)], errors="none") == [None]


def test_gpu_path_runs_on_the_cpu_in_sampler_order_and_is_seeded(synth: Path) -> None:
    dm = datamodule(synth, "data.num_workers=0", decode="gpu")
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, EncodedTableDataset) and loader.collate_fn is collate_encoded
    draws = list(loader.sampler)
    batch = next(iter(loader))
    x, y, domain, rows = dm.on_before_batch_transfer(batch, 0)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert rows.tolist() == [i for i, _ in draws[:4]]
    again, *_ = dm.decode_encoded(batch, "cpu")
    assert torch.equal(x, again)  # seeded per item: the same batch gives the same pixels
    other = dict(batch, seeds=[s + 1 for s in batch["seeds"]])
    assert not torch.equal(x, dm.decode_encoded(other, "cpu")[0])


def test_tensor_augmentation_matches_pil_without_randomness(synth: Path) -> None:
    """With every random step off and the crop the whole (square) image, both paths only resize and
    normalise: they agree up to interpolation differences."""
    none = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    rel = read_dataset(synth, check="none").split("train").path.iat[0]
    square = load_rgb(synth / rel).crop((0, 0, 90, 90))
    pil = train_transform(none, PRE, domain="field")(square)
    x = torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1)
    tensor = TensorAugment(none, PRE)([x], [7])[0]
    assert tensor.shape == pil.shape
    assert (tensor - pil).abs().mean() < 0.03


def test_gpu_decode_falls_back_to_pil_for_a_recipe_it_cannot_do(synth: Path) -> None:
    dm = datamodule(synth, "data.num_workers=0", "data.herbarium_aug.background_swap=0.5", decode="gpu")
    with pytest.warns(UserWarning, match="using PIL"):
        loader = dm.train_dataloader()
    assert dm.decode == "pil" and not isinstance(loader.dataset, EncodedTableDataset)


def test_image_source_file_for_an_uncached_image(synth: Path) -> None:
    source = ImageSource(synth, use_cache=False)
    rel = read_dataset(synth, check="none").table.path.iat[0]
    assert source.file_for(rel) == synth / rel


def test_training_source_decodes_big_originals_in_draft_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An original much larger than the source's size is decoded DCT-scaled (JPEG draft mode), never below that
    size, and resized to it: the short side is the size asked for, the pixels those of a full decode resized
    alike (within JPEG rounding)."""
    from PIL import JpegImagePlugin

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (45, 66, 3), dtype=np.uint8)  # smooth detail once upsampled, like a photo
    rel = "train/photo/1/1.jpg"
    (tmp_path / rel).parent.mkdir(parents=True)
    Image.fromarray(small).resize((1320, 900), Image.Resampling.BICUBIC).save(tmp_path / rel, quality=92)
    scales: list[int] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        out = draft(self, mode, size)
        scales.append(self.decoderconfig[0])
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    got = ImageSource(tmp_path, size=224, use_cache=False).load(rel)
    assert scales == [4]  # 900 // 224 = 4: a quarter-size decode (330 x 225), >= 224 on the short side
    assert got.size == (329, 224)
    full = Image.open(tmp_path / rel).convert("RGB").resize(got.size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    diff = np.abs(np.asarray(got, np.int16) - np.asarray(full, np.int16))
    assert diff.mean() < 1.2 and np.percentile(diff, 99) < 5  # a nearest-neighbour resize: 1.9 and 7


def _photo(aml_sample: Path) -> Image.Image:
    return load_rgb(next((aml_sample / "train" / "photo").rglob("*.jpg")), min_side=96).resize((96, 96))


def test_color_twist_is_the_jitter_of_pil_up_to_rounding(aml_sample: Path) -> None:
    """Brightness, contrast and saturation alone give PIL's ImageEnhance results (torchvision's PIL ops) to
    within one level; no change is no change."""
    from torchvision.transforms import functional as F

    from herbarium2field.data.transforms import color_twist

    img = _photo(aml_sample)
    px = lambda im: np.asarray(im).astype(int)  # noqa: E731
    assert np.array_equal(px(color_twist(img, 1, 1, 1, 0)), px(img))
    for twisted, reference in [(color_twist(img, 0.8, 1, 1, 0), F.adjust_brightness(img, 0.8)),
                               (color_twist(img, 1.2, 1, 1, 0), F.adjust_brightness(img, 1.2)),
                               (color_twist(img, 1, 0.7, 1, 0), F.adjust_contrast(img, 0.7)),
                               (color_twist(img, 1, 1, 1.3, 0), F.adjust_saturation(img, 1.3)),
                               (color_twist(img, 1, 1, 0.6, 0), F.adjust_saturation(img, 0.6))]:
        assert np.abs(px(twisted) - px(reference)).max() <= 1


def test_color_twist_hue_turns_like_torchvision_and_keeps_grey(aml_sample: Path) -> None:
    """Hue is rotated in YIQ, not HSV (not the same pixels as ``adjust_hue``), but in the same direction:
    red towards yellow, green towards cyan, blue towards magenta for a positive shift. Brightness (luma)
    stays, a grey image stays grey, and turning back returns the photo up to rounding."""
    from torchvision.transforms import functional as F

    from herbarium2field.data.transforms import color_twist

    px = lambda im: np.asarray(im).astype(float)  # noqa: E731
    for colour, up, down in [((200, 30, 30), 1, 2), ((30, 200, 30), 2, 0), ((30, 30, 200), 0, 1)]:
        pure = Image.new("RGB", (2, 2), colour)
        for h, rises in ((0.05, up), (-0.05, down)):  # the channel that rises: the neighbour hue's
            ours, theirs = px(color_twist(pure, 1, 1, 1, h))[0, 0], px(F.adjust_hue(pure, h))[0, 0]
            assert ours[rises] > colour[rises] + 10 and theirs[rises] > colour[rises] + 10, (colour, h)
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    assert np.unique(px(color_twist(grey, 1.0, 0.9, 1.3, 0.3))).tolist() == [100.0]
    img = _photo(aml_sample)
    # grey=True: RandomGrayscale's result (PIL's "L" weights) of the twisted image, to within one level where
    # the colour result does not clip (the fused map takes the luma before clipping)
    greyed = px(color_twist(img, 0.9, 1.1, 1.2, 0.05, grey=True))
    assert (greyed[..., 0] == greyed[..., 1]).all() and (greyed[..., 1] == greyed[..., 2]).all()
    colour = color_twist(img, 0.9, 1.1, 1.2, 0.05)
    inside = ((px(colour) > 0) & (px(colour) < 255)).all(axis=2)
    assert inside.mean() > 0.2  # a dark photo: many pixels have a channel at 0
    assert np.abs(greyed - px(colour.convert("L").convert("RGB")))[inside].max() <= 1
    luma = np.array([0.299, 0.587, 0.114])
    turned = color_twist(img, 1, 1, 1, 0.05)
    assert np.abs(px(turned) @ luma - px(img) @ luma).mean() < 1.0
    assert np.abs(px(color_twist(turned, 1, 1, 1, -0.05)) - px(img)).mean() < 1.0
    assert np.abs(px(turned) - px(img)).mean() > 1.0


def test_color_twist_draws_the_jitter_ranges_from_the_item_seed(aml_sample: Path) -> None:
    from herbarium2field.data.transforms import ColorTwist

    twist = ColorTwist(0.2, 0.3, 0.4, 0.05, grayscale=0.1)
    torch.manual_seed(0)
    draws = np.array([twist.draw() for _ in range(2000)], dtype=float)
    for k, (lo, hi) in enumerate([(0.8, 1.2), (0.7, 1.3), (0.6, 1.4), (-0.05, 0.05)]):
        assert lo <= draws[:, k].min() < lo + 0.01 and hi - 0.01 < draws[:, k].max() <= hi
    assert 0.08 < draws[:, 4].mean() < 0.12  # grey one time in ten
    img = _photo(aml_sample)
    torch.manual_seed(5)
    a = np.asarray(twist(img))
    torch.manual_seed(5)
    assert np.array_equal(a, np.asarray(twist(img)))
    assert not np.array_equal(a, np.asarray(twist(img)))
    with pytest.raises(ValueError, match="hue"):
        ColorTwist(0.2, 0.2, 0.2, 0.6)


def test_jitter_op_chooses_the_fused_twist_or_torchvision() -> None:
    from herbarium2field.data.transforms import ColorTwist

    def ops(**aug: object) -> list[type]:
        return [type(s) for s in train_transform(AugmentConfig(**aug), PRE, domain="field").transforms]

    twist = ops(color_jitter=0.2, grayscale=0.1)
    assert ColorTwist in twist and T.ColorJitter not in twist and T.RandomGrayscale not in twist
    torchvision = ops(color_jitter=0.2, grayscale=0.1, jitter_op="torchvision")
    assert {T.ColorJitter, T.RandomGrayscale} <= set(torchvision) and ColorTwist not in torchvision
    assert T.RandomGrayscale in ops(grayscale=0.1) and ColorTwist not in ops(grayscale=0.1)  # no jitter
