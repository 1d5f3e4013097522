"""The synthetic scenes by name (``data.synthetic.scene``): sizes, shapes per image, shape sides.

    spec = scene_named("one_shape")                  # a Scene
    folder = data_dir_name(seed=0, scene="one_shape")  # "synthetic-s0-one_shape"

Plain dataclasses and no image library, so the configuration loader can check scene names
without importing PIL; ``data.synthetic`` draws the scenes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

SIZES = (112, 120, 128)  # the processor resizes 120 to 112 and 128 to 140: exercises rescaling


@dataclass(frozen=True)
class Scene:
    """The testbed's levers (``python -m bench.testbed`` measures each): image sizes, shapes per
    image in and out of domain, the shapes' side in pixels, shape opacity, and ``position_code``:
    a background whose tint encodes the pixel's position (brightness across, blue-yellow down), a
    stand-in for the absolute position sense a pretrained vision tower has and a random tiny one
    lacks. With ``alpha`` < 1 the code shows through the shapes too. ``palette`` and ``backgrounds``
    name the shape colours and background tints (``data.synthetic.PALETTES`` / ``BACKGROUND_SETS``), and
    ``placement`` where shapes go (``uniform``, or ``corners``: each box touching a corner of the
    image); the out-of-domain shifts (``SHIFTS``) change them."""
    sizes: tuple = SIZES
    shapes: tuple = (1, 3)
    ood_shapes: tuple = (4, 6)
    side: tuple = (16, 44)
    alpha: float = 1.0
    position_code: bool = False
    palette: str = "base"
    backgrounds: str = "light"
    placement: str = "uniform"

    def __post_init__(self):
        for name in ("shapes", "ood_shapes", "side"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"Scene.{name}={(lo, hi)}: give (low, high) with 1 <= low <= high")
        if self.side[0] > min(self.sizes) - 2:
            raise ValueError(f"Scene.side={self.side}: the smallest shape must fit the smallest image {min(self.sizes)}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"Scene.alpha={self.alpha}: the shapes' opacity is in (0, 1]")
        if self.placement not in ("uniform", "corners"):
            raise ValueError(f"Scene.placement={self.placement!r}: use uniform or corners")


DEFAULT_SCENE = Scene()
# Named scenes (``data.synthetic.scene``): ``default`` for every task; ``one_shape``, the
# localisation testbed (one shape per 84 px image, out of domain two or three): REC with nothing
# to tell apart, so the box is all there is to learn (docs/learning.md)
SCENES = {"default": DEFAULT_SCENE,
          "one_shape": Scene(sizes=(84,), shapes=(1, 1), ood_shapes=(2, 3), side=(24, 48))}


# Out-of-domain shifts of appearance and geometry (``data.synthetic.generate(shifts=...)`` writes
# ``{task}_val_{name}.jsonl``): each changes one thing the training scene never shows and keeps the
# rest (shapes per image, phrasings), so a model that has learnt the task in domain can still do it.
SHIFTS = {
    "small": lambda s: replace(s, side=(max(4, s.side[0] // 2), max(4, s.side[0] - 6))),  # smaller than any trained
    "large": lambda s: replace(s, side=(s.side[1] + 6, max(s.side[1] + 6, min(s.sizes) * 7 // 8))),  # larger
    "image_size": lambda s: replace(s, sizes=(max(s.sizes) * 3 // 2,)),  # another token grid
    "dark_background": lambda s: replace(s, backgrounds="dark"),
    "new_colours": lambda s: replace(s, palette="new"),
    "corners": lambda s: replace(s, placement="corners"),
}


def shifted(spec: Scene, name: str) -> Scene:
    """``spec`` under the out-of-domain shift ``name`` (one of ``SHIFTS``)."""
    if name not in SHIFTS:
        raise ValueError(f"unknown out-of-domain shift {name!r}: use one of {', '.join(SHIFTS)}")
    return SHIFTS[name](spec)


def data_dir_name(seed: int, scene: str = "default") -> str:
    """The cache folder of a synthetic set: ``synthetic-s<seed>``, with ``-<scene>`` for a named
    scene other than the default, so scenes never share files."""
    return f"synthetic-s{seed}" + ("" if scene == "default" else f"-{scene}")


def scene_named(name: str) -> Scene:
    if name not in SCENES:
        raise ValueError(f"data.synthetic.scene={name!r} is not a named scene: use one of {', '.join(SCENES)}")
    return SCENES[name]
