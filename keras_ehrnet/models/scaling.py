"""Compound scaling: every size of an EfficientHRNet level, derived from φ.

This is the one place where the scaling rules live. The numbers follow the
authors' released PyTorch code (TeCSAR-UNCC/EfficientHRNet @ 802cc95), which
is what their published weights fit:

* backbone width multiplier 1.1^φ and depth multiplier 1.2^φ with
  EfficientNet's rounding (filters to multiples of 8, repeats rounded up);
* high-resolution branch widths ceil(w · 1.2455^φ) for w = 32, 64, 128, 256
  (the paper writes 1.25; the code uses 1.2455 and the paper's Table 1
  matches 1.2455);
* high-resolution modules per stage (M_s2, M_s3, M_s4) as in Table 1: stage 3
  loses one module per step of φ until it reaches one, then stage 4;
* native input resolution R = 512 + 32φ.

φ > 0 is an extrapolation beyond the paper (which stops at H0): widths, depth
and resolution keep growing with the same rules, the module counts stay at
H0's (1, 4, 3).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Union

# EfficientNet-B0 stages: (expand ratio, output channels, repeats, stride, kernel).
EFFICIENTNET_B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
)
# Indices (into EFFICIENTNET_B0_STAGES) of the stages whose outputs feed the
# high-resolution network: the 24-, 40-, 112- and 320-channel stages, at
# strides 4, 8, 16 and 32.
ENDPOINT_STAGES: tuple[int, ...] = (1, 2, 4, 6)
STEM_CHANNELS = 32
# ImageNet pixel statistics (RGB in 0..1) that the backbone's input normalisation divides out.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_CHANNELS = 1280  # classifier head of the backbone (ImageNet pretraining)
HR_BASE_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)
HR_WIDTH_FACTOR = 1.2455  # released code; the paper rounds it to 1.25
H0_MODULES: tuple[int, int, int] = (1, 4, 3)
BLOCKS_PER_BRANCH = 2
DECONV_BASE_WIDTH = 32
DECONV_BLOCKS = 2
SE_RATIO = 0.25  # squeeze width = int(block input channels * 0.25)
DROP_CONNECT_RATE = 0.2  # constant over all blocks, as in the released code
MIN_PHI, MAX_PHI = -8.0, 2.0
# How the HR part's conv + BatchNorm pairs are initialised (`blocks.BlockOptions.hr_init`).
HR_INITS = ("released", "he")
# The network's two outputs, in order (heatmaps+tags at 1/4, heatmaps at 1/2 resolution): the
# model's output layers and every exported artefact carry these names.
OUTPUT_NAMES: tuple[str, str] = ("quarter", "half")

# Paper Table 1 / Table 3 / Table 4 facts, for reports (FLOPs are really MACs).
PAPER_FACTS: dict[str, dict[str, float]] = {
    "H0": {"params_m": 23.3, "gflops": 25.6, "ap_val": 64.8, "ap_testdev": 64.0, "fps_nx": 22.95},
    "H-1": {"params_m": 16.0, "gflops": 14.2, "ap_val": 59.2, "ap_testdev": 59.1, "fps_nx": 20.43},
    "H-2": {"params_m": 10.3, "gflops": 7.7, "ap_val": 52.9, "ap_testdev": 52.8, "fps_nx": 24.53},
    "H-3": {"params_m": 6.9, "gflops": 4.2, "ap_val": 44.8, "ap_testdev": 44.5, "fps_nx": 33.78},
    "H-4": {"params_m": 3.7, "gflops": 2.1, "ap_val": 35.7, "ap_testdev": 35.5, "fps_nx": 50.96},
}

LevelLike = Union[str, int, float]
PRESET_NAMES: tuple[str, ...] = ("H0", "H-1", "H-2", "H-3", "H-4")


def make_divisible(value: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple of 8, never below 90 %."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def round_filters(filters: int, width_mult: float) -> int:
    """Backbone channels at a width multiplier (identity at 1.0)."""
    if width_mult == 1.0:
        return filters
    return make_divisible(filters * width_mult)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """Backbone block repeats at a depth multiplier (rounded up)."""
    if depth_mult == 1.0:
        return repeats
    return int(math.ceil(depth_mult * repeats))


def parse_level(level: LevelLike) -> tuple[str, float]:
    """Return (display name, φ) for "H0", "H-2", "h-3", "B-1", -2, -1.5 …

    Raises ValueError naming the value for anything else.
    """
    if isinstance(level, bool):
        raise ValueError(f"Unknown EfficientHRNet level {level!r}.")
    if isinstance(level, (int, float)):
        phi = float(level)
    elif isinstance(level, str):
        match = re.fullmatch(r"\s*[HhBb]\s*([+-]?\d+(?:\.\d+)?)\s*", level)
        if not match:
            try:
                phi = float(level)
            except ValueError:
                raise ValueError(
                    f"Unknown EfficientHRNet level {level!r}: use one of "
                    f"{', '.join(PRESET_NAMES)} or a number φ in [{MIN_PHI:g}, {MAX_PHI:g}]."
                ) from None
        else:
            phi = float(match.group(1))
    else:
        raise ValueError(f"Unknown EfficientHRNet level {level!r} (type {type(level).__name__}).")
    if not math.isfinite(phi) or not MIN_PHI <= phi <= MAX_PHI:
        raise ValueError(
            f"Compound coefficient φ={phi!r} (from level {level!r}) is outside the supported "
            f"range [{MIN_PHI:g}, {MAX_PHI:g}]; the paper defines φ ≤ 0, φ up to +2 is an "
            "extrapolation."
        )
    if phi == int(phi):
        name = "H0" if phi == 0 else f"H{int(phi):+d}"
    else:
        name = f"H({phi:g})"
    return name, phi


@dataclasses.dataclass(frozen=True)
class BackboneStage:
    """One scaled EfficientNet stage."""

    expand_ratio: int
    channels: int
    repeats: int
    stride: int
    kernel: int


@dataclasses.dataclass(frozen=True)
class EHRNetConfig:
    """Every size of one EfficientHRNet level, derived from φ by `from_phi`."""

    name: str
    phi: float
    width_mult: float
    depth_mult: float
    input_size: int
    stem_channels: int
    backbone_stages: tuple[BackboneStage, ...]
    head_channels: int
    hr_widths: tuple[int, int, int, int]
    modules_per_stage: tuple[int, int, int]
    blocks_per_branch: int
    deconv_width: int
    deconv_blocks: int
    num_joints: int = 17
    tag_per_joint: bool = True
    drop_connect_rate: float = DROP_CONNECT_RATE
    se_ratio: float = SE_RATIO
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9  # Keras convention; PyTorch momentum 0.1

    @classmethod
    def from_phi(
        cls,
        level: LevelLike = "H0",
        *,
        num_joints: int = 17,
        tag_per_joint: bool = True,
        drop_connect_rate: float = DROP_CONNECT_RATE,
    ) -> EHRNetConfig:
        name, phi = parse_level(level)
        if isinstance(num_joints, bool) or not isinstance(num_joints, int) or num_joints < 1:
            raise ValueError(f"num_joints must be an integer ≥ 1, got {num_joints!r}.")
        check_drop_connect_rate(drop_connect_rate)
        width_mult = 1.1**phi
        depth_mult = 1.2**phi
        stages = tuple(
            BackboneStage(
                expand_ratio=t,
                channels=round_filters(c, width_mult),
                repeats=round_repeats(n, depth_mult),
                stride=s,
                kernel=k,
            )
            for t, c, n, s, k in EFFICIENTNET_B0_STAGES
        )
        factor = HR_WIDTH_FACTOR**phi
        hr_widths = tuple(int(math.ceil(w * factor)) for w in HR_BASE_WIDTHS)
        return cls(
            name=name,
            phi=phi,
            width_mult=width_mult,
            depth_mult=depth_mult,
            input_size=native_resolution(phi),
            stem_channels=round_filters(STEM_CHANNELS, width_mult),
            backbone_stages=stages,
            head_channels=round_filters(HEAD_CHANNELS, width_mult),
            hr_widths=hr_widths,  # type: ignore[arg-type]
            modules_per_stage=modules_per_stage(phi),
            blocks_per_branch=BLOCKS_PER_BRANCH,
            deconv_width=int(math.ceil(DECONV_BASE_WIDTH * factor)),
            deconv_blocks=DECONV_BLOCKS,
            num_joints=num_joints,
            tag_per_joint=bool(tag_per_joint),
            drop_connect_rate=float(drop_connect_rate),
        )

    @property
    def backbone_name(self) -> str:
        return "B0" if self.phi == 0 else self.name.replace("H", "B", 1)

    @property
    def endpoint_channels(self) -> tuple[int, ...]:
        """Channels of the stride 4/8/16/32 backbone endpoints."""
        return tuple(self.backbone_stages[i].channels for i in ENDPOINT_STAGES)

    @property
    def num_backbone_blocks(self) -> int:
        """MBConv blocks plus the stem (the reference's len(features))."""
        return 1 + sum(s.repeats for s in self.backbone_stages)

    @property
    def tag_channels(self) -> int:
        return self.num_joints if self.tag_per_joint else 1

    def table1_row(self) -> str:
        """The paper's Table 1 row for this level."""
        r = self.input_size
        return (
            f"{self.name} (φ = {self.phi:g}) | {r} | {self.backbone_name} | "
            f"{', '.join(map(str, self.hr_widths))} | "
            f"{', '.join(map(str, self.modules_per_stage))} | {r // 4} | {r // 2}"
        )

    def __str__(self) -> str:
        header = "Model | Input size | Backbone | Width per branch | Blocks per stage | Tags | Heatmaps"
        return f"{header}\n{self.table1_row()}"


def check_drop_connect_rate(rate: float) -> None:
    """Raise ValueError unless `rate` is a probability in [0, 1) (1 would drop every residual branch)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_connect_rate must be a number in [0, 1), got {rate!r}.")


def native_resolution(phi: float) -> int:
    """R = 512 + 32φ, rounded to a multiple of 32 for fractional φ."""
    return int(32 * round(16 + phi))


def modules_per_stage(phi: float) -> tuple[int, int, int]:
    """(M_s2, M_s3, M_s4): Table 1 for φ = 0 … -4, H0's counts for φ > 0."""
    steps = max(0, int(math.floor(-phi + 0.5)))
    m2, m3, m4 = H0_MODULES
    take3 = min(steps, m3 - 1)
    m3 -= take3
    m4 = max(1, m4 - (steps - take3))
    return (m2, m3, m4)


def get_config(level: LevelLike = "H0", **kwargs) -> EHRNetConfig:
    """Shorthand for `EHRNetConfig.from_phi`."""
    return EHRNetConfig.from_phi(level, **kwargs)
