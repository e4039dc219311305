"""Schema of `train.data.augment`: a list of batched, on-device augmentations (specc.train.augment).

Each item is one augmentation by name, bare (`hflip`) or with its arguments
(`random_crop: {size: 32, padding: 4}`). An item is a model with one optional field per name, so a
misspelt name or argument is an `unknown key` error at its own line with a did-you-mean, and
values are checked by pydantic (located at the item).
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator


def _pixels(value: Any) -> tuple[int, int]:
    """`32` or `[32, 24]` -> (height, width)."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise ValueError("size must be a positive number of pixels or [height, width]")
    return int(pair[0]), int(pair[1])


_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 1},
                          {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}]}
Size = Annotated[tuple[int, int], BeforeValidator(_pixels), WithJsonSchema(_SIZE_SCHEMA)]  # (height, width)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomCrop(_Strict):
    """Pad every side by `padding` zeros, then crop a random `size` window (torchvision RandomCrop)."""

    size: Size
    padding: int = Field(0, ge=0)


class Flip(_Strict):
    """Mirror each image with probability `p`."""

    p: float = Field(0.5, ge=0, le=1)


class RandomResizedCrop(_Strict):
    """Crop a random area fraction (`scale`) and aspect ratio (`ratio`), resized to `size` (bilinear)."""

    size: Size
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ranges(self) -> "RandomResizedCrop":
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"random_resized_crop scale must be [low, high] with 0 < low <= high <= 1 "
                             f"(got {list(self.scale)})")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"random_resized_crop ratio must be [low, high] with 0 < low <= high "
                             f"(got {list(self.ratio)})")
        return self


class ColorJitter(_Strict):
    """Scale brightness, contrast and saturation by a random factor in [1 - v, 1 + v] each."""

    brightness: float = Field(0.0, ge=0)
    contrast: float = Field(0.0, ge=0)
    saturation: float = Field(0.0, ge=0)


class Cutout(_Strict):
    """Zero a `size` square at a random centre (clipped at the borders), with probability `p`."""

    size: Size
    p: float = Field(1.0, ge=0, le=1)


class Mix(_Strict):
    """mixup / cutmix: mix each example with another of the batch, lambda ~ Beta(alpha, alpha)."""

    alpha: float = Field(gt=0)


class Augmentation(_Strict):
    """One item of `augment:`: exactly one of these keys."""

    random_crop: Optional[RandomCrop] = None
    hflip: Optional[Flip] = None
    vflip: Optional[Flip] = None
    random_resized_crop: Optional[RandomResizedCrop] = None
    color_jitter: Optional[ColorJitter] = None
    cutout: Optional[Cutout] = None
    mixup: Optional[Mix] = None
    cutmix: Optional[Mix] = None

    @model_validator(mode="before")
    @classmethod
    def _one_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):  # `- hflip`
            value = {value: {}}
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"each augmentation is a name or a one-key mapping like {{random_crop: {{size: 32}}}}; "
                             f"choose from {', '.join(AUGMENTATIONS)}")
        (name, args), = value.items()
        return {name: {} if args is None else args}  # `- hflip:` (no arguments)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict:
        # editors see both YAML forms: a bare name, or {name: {args}}
        return {"anyOf": [{"type": "string", "enum": list(AUGMENTATIONS)}, handler(core_schema)]}

    @property
    def name(self) -> str:
        return next(name for name in AUGMENTATIONS if getattr(self, name) is not None)

    @property
    def args(self) -> BaseModel:
        return getattr(self, self.name)


AUGMENTATIONS = tuple(Augmentation.model_fields)
SPATIAL = ("random_crop", "hflip", "vflip", "random_resized_crop", "cutout", "cutmix")  # need [C, H, W] inputs
MIXING = ("mixup", "cutmix")  # soft targets for the loss
