"""Batched augmentation on the training device: `train.data.augment` (schema: specc.lang.augment_config).

Every op transforms a whole batch with tensor ops: per-example random parameters are tensors
(flip masks, crop offsets, jitter factors) drawn on the device, and the images are gathered by
index arithmetic (crops, cutout) or resampled with `affine_grid`/`grid_sample` (resized crops);
nothing loops over examples in Python. Only training batches are augmented (the loop calls the
hook on them alone); validation and test data are never touched.

Randomness: each batch draws from a generator seeded by (run seed, epoch, step, rank), so the
same run augments the same way, and `--resume` (even from the middle of an epoch) continues with
exactly the augmentations the uninterrupted run would have used.

Images are augmented as the source gives them (pixels in [0, 1] for image files): a normalized
split is mapped back with the normalizer's statistics first and normalized again after, so
`normalize:` and `augment:` work together as torchvision's transforms then Normalize do.
mixup / cutmix turn class targets into probabilities (one-hot, mixed), which CrossEntropyLoss takes.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from specc.lang.augment_config import MIXING, SPATIAL, Augmentation
from specc.lang.errors import Location, Problem, SpecError

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_ATTEMPTS = 10  # random_resized_crop tries this many boxes per image before the centre crop


class Draw:
    """The random numbers of one batch: tensors on the device from a generator seeded by `key`,
    and host scalars (one per batch, e.g. mixup's lambda) from a numpy generator of the same key."""

    def __init__(self, key: tuple[int, ...], device: torch.device):
        sequence = np.random.SeedSequence([int(part) for part in key])
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(sequence.generate_state(1, np.uint64)[0]) >> 1)
        self.host = np.random.default_rng(sequence.spawn(1)[0])

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        values = torch.rand(*shape, generator=self.generator, device=self.device)
        return low + (high - low) * values

    def below(self, count: int, high: torch.Tensor | int) -> torch.Tensor:
        """Integers in [0, high) per example (`high` a tensor of per-example bounds, or one int)."""
        values = (self.uniform(count) * high).long()  # float rounding can reach `high` itself
        return values.clamp(max=high - 1) if isinstance(high, int) else torch.minimum(values, high - 1)

    def chance(self, count: int, p: float) -> torch.Tensor:
        return self.uniform(count) < p


# --- the ops, on (N, C, H, W) batches with their parameters given: exact and testable alone ---


def flip(images: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mirror the images where `mask` (N,) is true along `dim` (-1: horizontal, -2: vertical)."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(dim), images)


def crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int],
         padding: int = 0) -> torch.Tensor:
    """Per-example windows `size` at (top, left) of the images padded by `padding` zeros."""
    padded = F.pad(images, (padding,) * 4) if padding else images
    count, channels, height, width = padded.shape
    device = images.device
    rows = top[:, None] + torch.arange(size[0], device=device)
    cols = left[:, None] + torch.arange(size[1], device=device)
    # one gather over flattened pixels: several times faster than indexing with four index tensors
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(count, 1, -1).expand(count, channels, -1)
    return padded.reshape(count, channels, height * width).gather(2, index).reshape(count, channels, *size)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes (N, 4) = (top, left, height, width) in pixels, each resampled to `size` (bilinear)."""
    height, width = images.shape[-2:]
    top, left, box_h, box_w = boxes.to(images.dtype).unbind(1)
    theta = torch.zeros(len(images), 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [len(images), images.shape[1], *size], align_corners=False)
    # sample inside the box only (its pixel centres), as resizing the cropped image does
    low = torch.stack([2 * (left + 0.5) / width - 1, 2 * (top + 0.5) / height - 1], 1)[:, None, None]
    high = torch.stack([2 * (left + box_w - 0.5) / width - 1, 2 * (top + box_h - 0.5) / height - 1], 1)[:, None, None]
    grid = torch.maximum(torch.minimum(grid, high), low)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of RGB images (a one-channel image is its own)."""
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def jitter(images: torch.Tensor, brightness: torch.Tensor | None = None, contrast: torch.Tensor | None = None,
           saturation: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example factors (N,) applied in this order, clamped to [0, 1] (torchvision's formulas)."""
    view = (-1, 1, 1, 1)
    if brightness is not None:
        images = (images * brightness.view(view)).clamp(0, 1)
    if contrast is not None:
        mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
        images = (contrast.view(view) * images + (1 - contrast.view(view)) * mean).clamp(0, 1)
    if saturation is not None:
        images = (saturation.view(view) * images + (1 - saturation.view(view)) * grayscale(images)).clamp(0, 1)
    return images


def cutout(images: torch.Tensor, centre_y: torch.Tensor, centre_x: torch.Tensor, size: tuple[int, int],
           apply: torch.Tensor | None = None) -> torch.Tensor:
    """Zero a `size` box per example around (centre_y, centre_x), clipped at the borders."""
    height, width = images.shape[-2:]
    device = images.device
    top, left = centre_y - size[0] // 2, centre_x - size[1] // 2
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size[0])
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size[1])
    box = in_rows[:, :, None] & in_cols[:, None, :]
    if apply is not None:
        box = box & apply.view(-1, 1, 1)
    return images.masked_fill(box[:, None], 0)


def mix(values: torch.Tensor, lam: float, permutation: torch.Tensor) -> torch.Tensor:
    """mixup: `lam * values + (1 - lam) * values[permutation]` (inputs or soft targets)."""
    return lam * values + (1 - lam) * values[permutation]


def cutmix_box(height: int, width: int, lam: float, centre_y: int, centre_x: int) -> tuple[int, int, int, int]:
    """The pasted box (top, bottom, left, right) of area about (1 - lam), clipped at the borders."""
    cut = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    return top, bottom, left, right


def paste(images: torch.Tensor, box: tuple[int, int, int, int], permutation: torch.Tensor) -> torch.Tensor:
    """cutmix: the box of every image replaced by the same box of its partner."""
    top, bottom, left, right = box
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[permutation][:, :, top:bottom, left:right]
    return mixed


# --- the pipeline: parameters drawn per batch, ops in the order of `augment:` ---


def resized_crop_boxes(draw: Draw, count: int, height: int, width: int, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes, for every example at once: the first of `_ATTEMPTS`
    random boxes that fits, else the centre crop of the closest allowed aspect ratio."""
    area = height * width
    target = area * draw.uniform(count, _ATTEMPTS, low=scale[0], high=scale[1])
    aspect = torch.exp(draw.uniform(count, _ATTEMPTS, low=math.log(ratio[0]), high=math.log(ratio[1])))
    box_w = torch.sqrt(target * aspect).round().long()
    box_h = torch.sqrt(target / aspect).round().long()
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = fits.long().argmax(1, keepdim=True)
    box_w, box_h = box_w.gather(1, first)[:, 0], box_h.gather(1, first)[:, 0]
    fallback_w, fallback_h = _centre_box(height, width, ratio)
    found = fits.any(1)
    box_w = torch.where(found, box_w, torch.full_like(box_w, fallback_w))
    box_h = torch.where(found, box_h, torch.full_like(box_h, fallback_h))
    top = torch.where(found, draw.below(count, height - box_h + 1), (height - box_h) // 2)
    left = torch.where(found, draw.below(count, width - box_w + 1), (width - box_w) // 2)
    return torch.stack([top, left, box_h, box_w], 1)


def _centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return width, int(round(width / ratio[0]))
    if in_ratio > ratio[1]:
        return int(round(height * ratio[1])), height
    return width, height


class Augmenter:
    """`session.augment`: (inputs, target, key) -> (augmented inputs, the loss's target)."""

    def __init__(self, steps: list[Augmentation], images: list[int], floats: list[int], normalizer: Any,
                 num_classes: int | None, seed: int):
        self.steps, self.images, self.floats = steps, images, floats
        self.normalizer, self.num_classes, self.seed = normalizer, num_classes, seed
        self._on_device: dict[torch.device, list] = {}

    def __call__(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor,
                 key: tuple[int, ...]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """`key` = (epoch, step, rank): the batch's random numbers depend on it and the run seed only."""
        values = list(inputs)
        draw = Draw((self.seed, *key), target.device)
        stats = self._stats(target.device, len(values))
        for index in self.images:
            values[index] = _denormalized(values[index], stats[index])
        soft = target
        for step in self.steps:
            if step.name in MIXING:
                if soft is target:
                    soft = self._soft(target)
                values, soft = self._mix(step, values, soft, draw)
            else:
                images = [values[index] for index in self.images]
                for index, image in zip(self.images, _transform(step, images, draw)):
                    values[index] = image
        for index in self.images:
            values[index] = _normalized(values[index], stats[index])
        return tuple(values), soft

    def _stats(self, device: torch.device, count: int) -> list:
        """The normalizer's (shift, scale) per input, copied to the device once."""
        if self.normalizer is None:
            return [None] * count
        if device not in self._on_device:
            self._on_device[device] = [None if stat is None else (stat[0].to(device), stat[1].to(device))
                                       for stat in self.normalizer.stats]
        return self._on_device[device]

    def _soft(self, target: torch.Tensor) -> torch.Tensor:
        if self.num_classes is None:  # regression, binary, multilabel: float targets mix as they are
            return target.float()
        return F.one_hot(target, self.num_classes).float()

    def _mix(self, step: Augmentation, values: list[torch.Tensor], soft: torch.Tensor, draw: Draw):
        lam = float(draw.host.beta(step.args.alpha, step.args.alpha))
        permutation = torch.randperm(len(soft), generator=draw.generator, device=draw.device)
        if step.name == "mixup":
            for index in self.floats:
                values[index] = mix(values[index], lam, permutation)
            return values, mix(soft, lam, permutation)
        height, width = values[self.images[0]].shape[-2:]
        centre_y, centre_x = int(draw.host.integers(height)), int(draw.host.integers(width))
        box = cutmix_box(height, width, lam, centre_y, centre_x)
        for index in self.images:
            values[index] = paste(values[index], box, permutation)
        kept = 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)  # the area actually kept
        return values, mix(soft, kept, permutation)


def _transform(step: Augmentation, images: list[torch.Tensor], draw: Draw) -> list[torch.Tensor]:
    """One spatial or colour op on every image input, with the same parameters for each."""
    args, (count, _, height, width) = step.args, images[0].shape
    if step.name in ("hflip", "vflip"):
        mask = draw.chance(count, args.p)
        return [flip(image, mask, -1 if step.name == "hflip" else -2) for image in images]
    if step.name == "random_crop":
        top = draw.below(count, height + 2 * args.padding - args.size[0] + 1)
        left = draw.below(count, width + 2 * args.padding - args.size[1] + 1)
        return [crop(image, top, left, args.size, args.padding) for image in images]
    if step.name == "random_resized_crop":
        boxes = resized_crop_boxes(draw, count, height, width, args.scale, args.ratio)
        return [resized_crop(image, boxes, args.size) for image in images]
    if step.name == "cutout":
        centre_y, centre_x, apply = draw.below(count, height), draw.below(count, width), draw.chance(count, args.p)
        return [cutout(image, centre_y, centre_x, args.size, apply) for image in images]
    factors = {name: draw.uniform(count, low=max(0.0, 1 - amount), high=1 + amount)
               for name, amount in (("brightness", args.brightness), ("contrast", args.contrast),
                                    ("saturation", args.saturation)) if amount > 0}
    return [jitter(image, **factors) for image in images]


def _denormalized(x: torch.Tensor, stat: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return x if stat is None else x * stat[1] + stat[0]


def _normalized(x: torch.Tensor, stat: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return x if stat is None else (x - stat[0]) / stat[1]


def build_augmenter(steps: list[Augmentation], layout: Any, task: Any, loss_name: str, normalizer: Any,
                    seed: int, locate: Callable[[int], Location]) -> Augmenter | None:
    """The hook for `session.augment`, after checking the ops against the model's inputs and loss.

    Raises:
        SpecError: DATA_ERROR at the item: a spatial op without a [C, H, W] float input, a crop
            `size` other than the input's, colour jitter on images without 1 or 3 channels, mixing
            with a loss that takes no class probabilities or with per-position classes.
    """
    if not steps:
        return None
    shapes = [(tuple(shape), dtype) for shape, dtype in layout.inputs.values()]
    images = [index for index, (shape, dtype) in enumerate(shapes) if dtype.is_floating_point and len(shape) == 3]
    floats = [index for index, (_, dtype) in enumerate(shapes) if dtype.is_floating_point]
    problems = [problem for index, step in enumerate(steps)
                for problem in _step_problems(step, [shapes[i][0] for i in images], floats, task, layout,
                                              loss_name, locate(index))]
    if problems:
        raise SpecError(problems)
    return Augmenter(steps, images, floats, normalizer, task.num_classes if task.kind == "multiclass" else None, seed)


def _step_problems(step: Augmentation, image_shapes: list[tuple[int, ...]], floats: list[int], task: Any,
                   layout: Any, loss_name: str, where: Location) -> list[Problem]:
    name, args = step.name, step.args

    def problem(message: str) -> list[Problem]:
        return [Problem(f"augment {name}: {message}", where, "DATA_ERROR")]

    if name in SPATIAL or name == "color_jitter":
        if not image_shapes:
            return problem("needs an image input, a float input shaped [channels, height, width]")
        if len({shape[1:] for shape in image_shapes}) > 1:
            return problem(f"the image inputs differ in size {[list(s) for s in image_shapes]}; they are "
                           f"augmented together, with the same parameters")
        channels, height, width = image_shapes[0]
        if name in ("random_crop", "random_resized_crop") and tuple(args.size) != (height, width):
            return problem(f"size {list(args.size)} must be the input's [{height}, {width}]: the model sees the same "
                           f"shape in training and evaluation (pad and crop with `padding`)")
        if name == "color_jitter" and channels not in (1, 3):
            return problem(f"needs 1 or 3 channels, the input has {channels}")
    if name in MIXING:
        if not floats:
            return problem("needs a float input to mix")
        if task.kind == "multiclass" and loss_name != "CrossEntropyLoss":
            return problem(f"mixes class targets into probabilities, which {loss_name} cannot take; "
                           f"use CrossEntropyLoss")
        if task.kind == "multiclass" and len(layout.output_shape) > 1:
            return problem("mixes one class per example; this model predicts a class per position")
    return []
