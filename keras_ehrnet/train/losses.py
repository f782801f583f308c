"""Training losses of EfficientHRNet (paper §4.2.2, following HigherHRNet).

* Heatmaps: masked mean squared error at R/4 and R/2, each averaged over
  joints × height × width per sample (masked pixels still count in the
  denominator, as in the released code), weighted 1.0 and 1.0.
* Grouping: the associative-embedding loss on the R/4 tag maps, exponential
  form, weighted 1e-3 (push) and 1e-3 (pull).

Every function returns one value per sample, so the training loop decides
how to reduce over the (global) batch. Everything is vectorised `keras.ops`: it runs
on any Keras backend, inside `tf.function` and under any `tf.distribute` strategy on TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras import ops

Tensor = Any  # a tensor of the active Keras backend (or a NumPy array)

AE_LOSS_TYPES = ("exp", "max")
LOSS_TERMS = ("heatmaps_quarter", "heatmaps_half", "push", "pull")


def heatmap_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Masked squared error per sample: mean over (H, W, J) of (pred - target)² · mask.

    pred, target: [B, H, W, J]; mask: [B, H, W] (1 = counted, 0 = ignored).
    Returns [B].
    """
    pred = ops.cast(pred, "float32")
    target = ops.cast(target, "float32")
    mask = ops.cast(mask, "float32")[..., None]
    return ops.mean(ops.square(pred - target) * mask, axis=[1, 2, 3])


def gather_tags(tags: Tensor, joints: Tensor) -> Tensor:
    """Tag value at every joint of every person: [B, P, J].

    tags: [B, H, W, C] with C = J (one tag map per joint type) or C = 1;
    joints: [B, P, J, 2] int, [..., 0] the flat index y·W + x at the tag
    resolution, [..., 1] the visibility. With C = J, joint slot j reads tag
    channel j.
    """
    tags = ops.cast(tags, "float32")
    shape = ops.shape(tags)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    flat = ops.reshape(tags, [batch, -1])  # [B, H·W·C]
    joints = ops.convert_to_tensor(joints)
    index = ops.clip(ops.cast(joints[..., 0], "int32"), 0, height * width - 1)  # [B, P, J]
    num_people, num_joints = ops.shape(joints)[1], ops.shape(joints)[2]
    # Joint slot j reads channel j when there is one tag map per joint, channel 0 otherwise.
    channel = ops.arange(num_joints, dtype="int32") * ops.cast(ops.equal(channels, num_joints), "int32")
    flat_index = ops.reshape(index * channels + channel, [batch, -1])
    values = ops.take_along_axis(flat, flat_index, axis=1)
    return ops.reshape(values, [batch, num_people, num_joints])


def ae_loss(tags: Tensor, joints: Tensor, loss_type: str = "exp") -> tuple[Tensor, Tensor]:
    """Associative-embedding (push, pull) losses per sample, each [B].

    For the K people of a sample that have at least one visible joint, with
    h_k the mean tag of person k over its visible joints:
      pull = (1/K) Σ_k mean_j (tag_kj − h_k)²
      push = 1/(2K(K−1)) Σ_{a≠b} exp(−(h_a − h_b)²)      ("exp")
             1/(2K(K−1)) Σ_{a≠b} max(0, 1 − |h_a − h_b|)  ("max")
    pull is 0 when K = 0, push is 0 when K < 2: the reference's reductions.
    """
    if loss_type not in AE_LOSS_TYPES:
        raise ValueError(f"unknown AE loss type {loss_type!r}; expected one of {AE_LOSS_TYPES}")
    joints = ops.convert_to_tensor(joints)
    values = gather_tags(tags, joints)  # [B, P, J]
    visible = ops.cast(joints[..., 1] > 0, "float32")  # [B, P, J]
    count = ops.sum(visible, axis=2)  # [B, P]
    person = ops.cast(count > 0, "float32")  # [B, P]
    safe_count = ops.maximum(count, 1.0)
    mean = ops.sum(values * visible, axis=2) / safe_count  # [B, P]
    spread = ops.sum(ops.square(values - mean[..., None]) * visible, axis=2) / safe_count
    people = ops.sum(person, axis=1)  # [B]
    pull = ops.sum(spread * person, axis=1) / ops.maximum(people, 1.0)

    diff = mean[:, :, None] - mean[:, None, :]  # [B, P, P]
    if loss_type == "exp":
        affinity = ops.exp(-ops.square(diff))
    else:
        affinity = ops.relu(1.0 - ops.abs(diff))
    off_diagonal = 1.0 - ops.eye(ops.shape(mean)[1], dtype="float32")
    pairs = person[:, :, None] * person[:, None, :] * off_diagonal
    push_sum = ops.sum(affinity * pairs, axis=[1, 2])
    push = 0.5 * push_sum / ops.maximum(people * (people - 1.0), 1.0)
    return push, pull


class EHRNetLoss:
    """The weighted multi-resolution loss of EfficientHRNet.

    Call with the model outputs `[quarter, half]` and the target dict of the
    data pipeline; returns the weighted per-sample terms
    {"heatmaps_quarter", "heatmaps_half", "push", "pull"} (each [B]). Their sum
    averaged over the batch is the training loss.
    """

    def __init__(
        self,
        num_joints: int,
        *,
        heatmap_factors: Sequence[float] = (1.0, 1.0),
        push_factor: float = 1e-3,
        pull_factor: float = 1e-3,
        ae_type: str = "exp",
    ):
        if len(heatmap_factors) != 2:
            raise ValueError(
                f"heatmap_factors needs one weight per resolution (R/4, R/2), got {list(heatmap_factors)}"
            )
        if ae_type not in AE_LOSS_TYPES:
            raise ValueError(f"unknown AE loss type {ae_type!r}; expected one of {AE_LOSS_TYPES}")
        self.num_joints = int(num_joints)
        self.heatmap_factors = tuple(float(f) for f in heatmap_factors)
        self.push_factor = float(push_factor)
        self.pull_factor = float(pull_factor)
        self.ae_type = ae_type

    def __call__(self, outputs: Sequence[Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        quarter, half = outputs
        j = self.num_joints
        terms = {
            "heatmaps_quarter": self.heatmap_factors[0]
            * heatmap_loss(quarter[..., :j], targets["heatmaps_quarter"], targets["mask_quarter"]),
            "heatmaps_half": self.heatmap_factors[1]
            * heatmap_loss(half[..., :j], targets["heatmaps_half"], targets["mask_half"]),
        }
        push, pull = ae_loss(quarter[..., j:], targets["joints"], self.ae_type)
        terms["push"] = self.push_factor * push
        terms["pull"] = self.pull_factor * pull
        return terms
