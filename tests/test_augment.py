"""Batched augmentation on the device: each op's exact effect, determinism, val/test untouched, resume."""
from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specc.weights.checkpoint import load_checkpoint
from specc.lang.errors import SpecError
from specc.lang.spec import load
from specc.train import augment as aug
from specc.train.data import Normalizer, TensorData
from specc.train.training import train

torch.set_num_threads(1)  # two pytest workers share two cores

ROOT = Path(__file__).resolve().parents[1]


def batch(count: int = 4, channels: int = 3, size: int = 8) -> torch.Tensor:
    """Distinct values everywhere, so any moved pixel shows."""
    return torch.arange(count * channels * size * size, dtype=torch.float32).reshape(count, channels, size, size)


def test_hflip_and_vflip_equal_torch_flip_where_the_mask_is_set():
    images, mask = batch(), torch.tensor([True, False, True, False])
    for dim in (-1, -2):
        flipped = aug.flip(images, mask, dim)
        assert torch.equal(flipped[mask], torch.flip(images[mask], [dim]))
        assert torch.equal(flipped[~mask], images[~mask])


def test_crop_takes_each_examples_window_of_the_zero_padded_image():
    images = batch()
    top, left = torch.tensor([0, 1, 4, 2]), torch.tensor([4, 0, 3, 1])
    out = aug.crop(images, top, left, (8, 8), padding=2)
    assert out.shape == (4, 3, 8, 8)
    padded = F.pad(images, (2, 2, 2, 2))
    for index in range(4):
        t, l = int(top[index]), int(left[index])
        assert torch.equal(out[index], padded[index, :, t:t + 8, l:l + 8])
    assert torch.equal(out[0, :, :2], torch.zeros(3, 2, 8))  # the top padding rows of window (0, 4)
    smaller = aug.crop(images, top * 0, left * 0 + 1, (5, 3))
    assert smaller.shape == (4, 3, 5, 3) and torch.equal(smaller, images[:, :, :5, 1:4])


def test_resized_crop_of_a_same_size_box_is_that_box_and_of_a_small_one_is_bilinear_upsampling():
    images = batch()
    boxes = torch.tensor([[0, 0, 8, 8], [2, 4, 4, 4], [4, 0, 4, 4], [1, 1, 6, 6]])
    whole = aug.resized_crop(images, boxes[:1].expand(4, 4), (8, 8))
    assert torch.allclose(whole, images, atol=1e-3)
    quadrants = aug.resized_crop(images[1:3], boxes[1:3], (4, 4))
    assert torch.allclose(quadrants[0], images[1, :, 2:6, 4:8], atol=1e-3)
    assert torch.allclose(quadrants[1], images[2, :, 4:8, 0:4], atol=1e-3)
    upsampled = aug.resized_crop(images[1:2], boxes[1:2], (8, 8))
    expected = F.interpolate(images[1:2, :, 2:6, 4:8], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(upsampled, expected, atol=1e-3)


def test_random_resized_crop_boxes_lie_inside_the_image_within_scale_and_ratio():
    draw = aug.Draw((0, 1, 1, 0), torch.device("cpu"))
    boxes = aug.resized_crop_boxes(draw, 2000, 32, 24, (0.3, 0.9), (0.5, 2.0))
    top, left, height, width = boxes.T
    assert bool((top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 24).all())
    area = (height * width).float() / (32 * 24)
    assert area.min() >= 0.25 and area.max() <= 0.95  # the scale range, give or take the rounding
    assert len(set(map(tuple, boxes.tolist()))) > 1000  # per-example boxes


def test_random_resized_crop_falls_back_to_the_centre_crop_when_no_box_fits():
    draw = aug.Draw((0, 1, 1, 0), torch.device("cpu"))
    boxes = aug.resized_crop_boxes(draw, 8, 10, 40, (1.0, 1.0), (1.0, 1.0))  # a square of the whole area never fits
    assert boxes.tolist() == [[0, 15, 10, 10]] * 8


def test_color_jitter_factors_follow_torchvisions_formulas():
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    half = torch.full((3,), 0.5)
    assert torch.equal(aug.jitter(images, brightness=half), images * 0.5)
    gray = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    desaturated = aug.jitter(images, saturation=torch.zeros(3))
    assert torch.allclose(desaturated, gray[:, None].expand(3, 3, 4, 4), atol=1e-6)
    flat = aug.jitter(images, contrast=torch.zeros(3))
    assert torch.allclose(flat, gray.mean(dim=(1, 2)).view(3, 1, 1, 1).expand(3, 3, 4, 4), atol=1e-6)
    assert float(aug.jitter(images, brightness=torch.full((3,), 9.0)).max()) == 1.0  # clamped


def test_cutout_zeroes_a_size_square_clipped_at_the_borders():
    images = batch(3) + 1  # no zeros before
    out = aug.cutout(images, torch.tensor([4, 0, 5]), torch.tensor([4, 0, 2]), (4, 4), torch.tensor([True, True, False]))
    assert torch.equal(out[0, :, 2:6, 2:6], torch.zeros(3, 4, 4)) and int((out[0] == 0).sum()) == 3 * 16
    assert torch.equal(out[1, :, :2, :2], torch.zeros(3, 2, 2)) and int((out[1] == 0).sum()) == 3 * 4  # the corner
    assert torch.equal(out[2], images[2])  # not applied
    kept = out[0] != 0
    assert torch.equal(out[0][kept], images[0][kept])


def test_mixup_is_the_convex_combination_with_its_lambda():
    x, y = batch(6, 1, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    augmenter = augmenter_for(["mixup: {alpha: 0.4}"], shape=[1, 4, 4])
    (mixed,), soft = augmenter((x,), y, (1, 1, 0))
    draw = aug.Draw((3, 1, 1, 0), torch.device("cpu"))  # the seed of the run, then (epoch, step, rank)
    lam = float(draw.host.beta(0.4, 0.4))
    permutation = torch.randperm(6, generator=draw.generator)
    assert 0 < lam < 1 and not torch.equal(permutation, torch.arange(6))
    assert torch.equal(mixed, lam * x + (1 - lam) * x[permutation])
    one_hot = F.one_hot(y, 3).float()
    assert torch.equal(soft, lam * one_hot + (1 - lam) * one_hot[permutation])
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_cutmix_pastes_one_box_and_weights_the_targets_by_the_area_kept():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 8, 8).clone()  # image i is all i
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    augmenter = augmenter_for(["cutmix: {alpha: 1.0}"], shape=[1, 8, 8])
    for step in range(1, 6):
        (mixed,), soft = augmenter((x,), y, (1, step, 0))
        own = (mixed == x).float().mean(dim=(1, 2, 3))  # the fraction of each image that is its own
        partner = mixed.amax(dim=(1, 2, 3)) * (own < 1) + mixed.amin(dim=(1, 2, 3)) * (own < 1)
        assert len(set(own.tolist())) <= 2  # one box for the whole batch (1.0 where an image meets itself)
        for index in range(6):
            expected = torch.zeros(3)
            expected[y[index]] += own[index]
            other = int(partner[index] - x[index, 0, 0, 0]) if own[index] < 1 else index
            expected[y[other]] += 1 - own[index]
            assert torch.allclose(soft[index], expected, atol=1e-6), (step, index)


def augmenter_for(items: list[str], shape: list[int], loss: str = "CrossEntropyLoss", classes: int = 3,
                  normalize: str = "none") -> aug.Augmenter:
    spec = load(spec_text(items, shape, loss, classes, normalize))
    from specc.train.prepare import build_model, prepare_data

    compiled = build_model(spec, torch.device("cpu"), seed=0)
    prepared = prepare_data(spec, compiled)
    return aug.build_augmenter(spec.train.data.augment, prepared.layout, prepared.task, loss,
                               Normalizer.fit("none", prepared.splits[0].train), spec.train.seed,
                               lambda index: spec.source.locate(("train", "data", "augment", index)))


def spec_text(items: list[str], shape: list[int], loss: str = "CrossEntropyLoss", classes: int = 3,
              normalize: str = "none") -> str:
    listed = "\n".join(f"      - {item}" for item in items)
    return (f"name: aug\ninputs: {{image: {{shape: {shape}}}}}\n"
            f"layers: [Flatten, {{Linear: {{out_features: {classes}}}}}]\n"
            f"train:\n  seed: 3\n  data:\n    source: synthetic:classification\n"
            f"    args: {{samples: 60, classes: {classes}}}\n    normalize: {normalize}\n    augment:\n{listed}\n"
            f"  loss: {loss}\n  epochs: 1\n")


ALL = ["random_crop: {size: 8, padding: 2}", "hflip", "vflip: {p: 0.3}", "random_resized_crop: {size: 8}",
       "color_jitter: {brightness: 0.3, contrast: 0.3, saturation: 0.3}", "cutout: {size: 3}", "mixup: {alpha: 0.2}",
       "cutmix: {alpha: 1.0}"]


def test_augmentation_is_deterministic_under_the_seed_and_differs_per_step():
    augmenter = augmenter_for(ALL, shape=[3, 8, 8])
    x, y = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (16,))
    (first,), soft = augmenter((x,), y, (2, 5, 0))
    (again,), soft_again = augmenter_for(ALL, shape=[3, 8, 8])((x,), y, (2, 5, 0))
    assert torch.equal(first, again) and torch.equal(soft, soft_again)
    (other,), _ = augmenter((x,), y, (2, 6, 0))
    assert not torch.equal(first, other)
    assert first.shape == x.shape and soft.shape == (16, 3)


def test_normalized_images_are_augmented_as_pixels_then_normalized_again():
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    images = TensorData((x,), torch.zeros(5, dtype=torch.long))
    config = load(spec_text(["hflip: {p: 1}"], [3, 8, 8], normalize="{mean: [0.5, 0.4, 0.3], std: [0.2, 0.3, 0.4]}"))
    normalizer = Normalizer.fit(config.train.data.normalize, images)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(3, 1, 1)
    (normalized,) = normalizer(images).inputs
    assert torch.allclose(normalized, (x - mean) / std)  # normalize: {mean, std} per channel
    augmenter = aug.Augmenter(config.train.data.augment, [0], [0], normalizer, 3, 0)
    (flipped,), _ = augmenter((normalized,), images.target, (1, 1, 0))
    assert torch.allclose(flipped, (torch.flip(x, [-1]) - mean) / std, atol=1e-6)


def test_augment_keys_are_checked_with_located_did_you_mean_errors():
    cases = {"hflp": "unknown key 'hflp' (did you mean 'hflip'?)",
             "random_crop: {size: 8, paddng: 2}": "unknown key 'paddng' (did you mean 'padding'?)",
             "random_crop: {padding: 2}": "missing required key 'size'",
             "cutout: {size: -1}": "size must be a positive number of pixels or [height, width]",
             "mixup: {alpha: 0}": "alpha: Input should be greater than 0",
             "random_resized_crop: {size: 8, scale: [0.9, 0.1]}": "scale must be [low, high] with 0 < low <= high <= 1"}
    for item, message in cases.items():
        with pytest.raises(SpecError) as error:
            load(spec_text(["hflip", item], [3, 8, 8]))
        assert message in str(error.value.first), str(error.value.first)
        assert error.value.first.location.line == 12  # the item's own line


def test_augment_that_does_not_fit_the_model_is_a_located_error():
    cases = [(["random_crop: {size: 6, padding: 2}"], [3, 8, 8], "CrossEntropyLoss",
              "augment random_crop: size [6, 6] must be the input's [8, 8]"),
             (["hflip"], [12], "CrossEntropyLoss", "augment hflip: needs an image input"),
             (["color_jitter: {brightness: 0.1}"], [2, 8, 8], "CrossEntropyLoss", "needs 1 or 3 channels, the input has 2"),
             (["mixup: {alpha: 1}"], [3, 8, 8], "NLLLoss", "which NLLLoss cannot take; use CrossEntropyLoss")]
    for items, shape, loss, message in cases:
        with pytest.raises(SpecError) as error:
            augmenter_for(["vflip"] + items if len(shape) == 3 else items, shape, loss)
        assert message in error.value.first.message, error.value.first.message
        assert error.value.first.location.line == (12 if len(shape) == 3 else 11)  # the item's own line


def shapes_module():
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "specs" / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return shapes_module().write_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=60, size=16)


FOLDER_SPEC = """
    name: shapes
    inputs: {{image: {{shape: [3, 16, 16]}}}}
    layers:
      - Conv2d: {{out_channels: 8, kernel_size: 3, padding: 1}}
      - ReLU
      - MaxPool2d: {{kernel_size: 2}}
      - Flatten
      - Linear: {{out_features: 3}}
    train:
      data:
        source: folder:{folder}
        split: {{val: 0.2, test: 0.2, seed: 0}}
        streaming: {streaming}
        num_workers: 0
        normalize: {{mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
        augment: [{{random_crop: {{size: 16, padding: 2}}}}, hflip, {{color_jitter: {{brightness: 0.2}}}},
                  {{cutout: {{size: 4}}}}, {{mixup: {{alpha: 0.2}}}}]
      batch_size: 24
      epochs: {epochs}
      loss: CrossEntropyLoss
      metrics: [accuracy]
      optimizer: {{AdamW: {{lr: 0.01}}}}
      threads: 1
"""


def folder_spec(tmp_path: Path, folder: Path, epochs: int, streaming: bool = False) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(FOLDER_SPEC.format(folder=folder, epochs=epochs, streaming=streaming)))
    return path


def test_training_with_augment_on_an_image_folder_is_well_above_chance_and_augments_training_batches_only(
        shapes_folder, tmp_path, monkeypatch):
    seen = []
    original = aug.Augmenter.__call__

    def counted(self, inputs, target, key):
        seen.append((key, len(target)))
        return original(self, inputs, target, key)

    monkeypatch.setattr(aug.Augmenter, "__call__", counted)
    result = train(folder_spec(tmp_path, shapes_folder, epochs=6), out=tmp_path / "runs", verbose=False)
    assert result.ok and result.metrics["test"]["accuracy"] >= 0.8  # chance is 1/3
    # 108 training examples: 5 batches per epoch (24 * 4 + 12), each augmented once; val/test never
    assert [key for key, _ in seen] == [(epoch, step, 0) for epoch in range(1, 7) for step in range(1, 6)]
    assert sum(size for _, size in seen) == 6 * 108


def test_resuming_an_augmented_streamed_run_gives_the_uninterrupted_weights(shapes_folder, tmp_path):
    path = folder_spec(tmp_path, shapes_folder, epochs=2, streaming=True)  # batches from a DataLoader
    straight = train(path, out=tmp_path / "straight", verbose=False)
    first = train(path, out=tmp_path / "split", epochs=1, verbose=False)
    resumed = train(path, resume=first.last_checkpoint, verbose=False)
    assert resumed.ok
    expected, got = load_checkpoint(straight.last_checkpoint)["model"], load_checkpoint(resumed.last_checkpoint)["model"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_the_folder_example_spec_trains_with_its_augmentation_well_above_chance(shapes_folder, tmp_path):
    spec = ROOT / "specs" / "folder_cnn.yaml"
    assert [step.name for step in load(spec).train.data.augment] == ["random_crop", "hflip", "color_jitter"]
    result = train(spec, out=tmp_path / "runs", overrides={"train.data.source": f"folder:{shapes_folder}"},
                   verbose=False)
    assert result.ok and result.metrics["test"]["accuracy"] >= 0.8  # chance is 1/3
