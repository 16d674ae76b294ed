"""ResNet backbone with DETR parameter names, frozen BatchNorm and the padding mask.

State-dict names follow DETR (``backbone.0.body.layer1.0.conv1.weight`` ...) so DETR / QPIC
checkpoints load by name: the detector stores ``Joiner(Backbone, PositionEmbeddingSine)`` as
``self.backbone`` (an ``nn.Sequential``, hence the ``.0`` / ``.1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

from hqm.models.position_encoding import PositionEmbeddingSine

_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def resnet(name: str, width: int, norm_layer, dilation: bool) -> ResNet:
    """torchvision's ResNet ``name`` whose stem and layer1 have ``width`` channels, doubled per stage
    (64: the standard network, built by ``torchvision.models``; layer names and blocks unchanged).
    A width multiplier as in slimmable / width-scaled ResNets (Yu et al., ICLR 2019: "ResNet-18 0.5x"
    = width 32): the convolutions cost about (width / 64)^2 of the standard network's. Other widths
    rebuild the stages with torchvision's ``ResNet._make_layer`` and its initialisation (He normal,
    fan-out; BN weight 1, bias 0)."""
    net = getattr(torchvision.models, name)(
        weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=norm_layer
    )
    if width == 64:
        return net
    # block type and depths as torchvision built them
    block = type(net.layer1[0])
    depths = [len(getattr(net, f"layer{i + 1}")) for i in range(4)]
    net.inplanes, net.dilation = width, 1
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = norm_layer(width)
    for i, depth in enumerate(depths):
        stride, dilate = (1, False) if i == 0 else (2, dilation and i == 3)
        setattr(
            net, f"layer{i + 1}", net._make_layer(block, width * 2**i, depth, stride=stride, dilate=dilate)
        )
    net.fc = nn.Linear(width * 8 * block.expansion, net.fc.out_features)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers (DETR, eps 1e-5)."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision / DETR checkpoints carry num_batches_tracked, which a frozen BN has no use for
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def affine(self) -> tuple[Tensor, Tensor]:
        """(scale, shift) with ``bn(x) == x * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.affine()
        # one fused pass over the activation (x * scale + bias in two ops costs an extra pass)
        return torch.addcmul(shift.view(1, -1, 1, 1).to(x.dtype), x, scale.view(1, -1, 1, 1).to(x.dtype))


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``. A frozen BN is folded into the convolution (weight * scale, bias = shift):
    the same function with no separate pass over the activation in the forward or the backward
    (R50 / 512 px / batch 2 on a 2-core CPU: backbone forward + backward 1.90 s instead of 2.04 s,
    channels_last both). Gradients reach ``conv.weight`` through the product as usual."""
    if not isinstance(bn, FrozenBatchNorm2d):
        return bn(conv(x))
    scale, shift = bn.affine()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def residual_block(m: nn.Module, x: Tensor) -> Tensor:
    """torchvision's BasicBlock / Bottleneck forward through :func:`conv_bn` (same modules, same
    parameter names, same function)."""
    out = F.relu(conv_bn(m.conv1, m.bn1, x), inplace=True)
    if isinstance(m, Bottleneck):
        out = F.relu(conv_bn(m.conv2, m.bn2, out), inplace=True)
        out = conv_bn(m.conv3, m.bn3, out)
    else:
        out = conv_bn(m.conv2, m.bn2, out)
    identity = x if m.downsample is None else conv_bn(m.downsample[0], m.downsample[1], x)
    return F.relu(out.add_(identity), inplace=True)


def max_pool(pool: nn.MaxPool2d, x: Tensor) -> Tensor:
    """``pool(x)``, the same values. On the CPU without a gradient to x (evaluation, inference, a
    frozen stem), an NCHW input is pooled in channels_last and given back in NCHW: PyTorch's CPU
    NCHW max-pool kernel is slower than its NHWC one even with both layout copies (2 threads, idle
    2-core AVX-512 machine: a 64 x 400 x 608 stem output 52 -> 38 ms in fp32, 55 -> 30 ms in bf16;
    the demo's 8 x 64 x 64 x 64 batch 7 -> 2 ms; ``hqm eval`` of a demo checkpoint 8.79 -> 8.42 s
    wall, whole process), and a maximum is exact in any layout, so nothing downstream changes (the
    NCHW convolutions that follow still see an NCHW input; the metrics are bit-identical)."""
    if x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
        return pool(x)
    if not x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return pool(x)  # already channels_last (training's layout), or an unusual stride
    return pool(x.contiguous(memory_format=torch.channels_last)).contiguous()


class Backbone(nn.Module):
    """torchvision ResNet trunk returning C5 (stride 32, or 16 with ``dilation``; ResNet-50/101 only)
    or C4 (``out_layer="layer3"``, stride 16) and the downsampled padding mask.

    forward(images (B, 3, H, W), masks (B, H, W) bool, True on padding)
        -> features (B, C5, H', W'), masks (B, H', W') bool
    """

    def __init__(
        self,
        name: str = "resnet50",
        norm: str = "frozen",
        train_from: str = "layer2",
        dilation: bool = False,
        out_layer: str = "layer4",
        width: int = 64,
    ):
        super().__init__()
        if name not in ("resnet18", "resnet34", "resnet50", "resnet101"):
            raise ValueError(f"unsupported backbone {name!r}")
        norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
        net = resnet(name, width, norm_layer, dilation)
        trainable = set() if train_from == "none" else set(_STAGES[_STAGES.index(train_from) :])
        for pname, p in net.named_parameters():
            stage = pname.split(".")[0]
            stage = "conv1" if stage in ("conv1", "bn1") else stage
            p.requires_grad_(stage in trainable)
        # C5 (DETR) by default; C4 (stride 16, layer4 dropped) for small images trained from scratch
        self.body = IntermediateLayerGetter(net, return_layers={out_layer: "0"})
        channels = width * {"layer2": 2, "layer3": 4, "layer4": 8}[out_layer]
        self.num_channels = channels if name in ("resnet18", "resnet34") else channels * 4
        self.stride = {"layer2": 8, "layer3": 16, "layer4": 16 if dilation else 32}[out_layer]

    def trunk(self, x: Tensor) -> Tensor:
        """The ResNet stages up to the output layer (``self.body``'s own forward, BN folded)."""
        body = self.body
        x = max_pool(body.maxpool, F.relu(conv_bn(body.conv1, body.bn1, x), inplace=True))
        for stage in _STAGES[1:]:
            if stage not in body:
                break
            for block in body[stage]:
                x = residual_block(block, x)
        return x

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.trunk(images)
        m = F.interpolate(masks[None].float(), size=feat.shape[-2:]).to(torch.bool)[0]
        return feat, m


class Joiner(nn.Sequential):
    """``[Backbone, PositionEmbeddingSine]`` -> (features, masks, pos (B, D, H', W'))."""

    def __init__(self, backbone: Backbone, position_embedding: PositionEmbeddingSine):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat, m = self[0](images, masks)
        pos = self[1](m).to(feat.dtype)
        return feat, m, pos


def build_backbone(cfg_model) -> Joiner:
    backbone = Backbone(
        cfg_model.backbone,
        cfg_model.backbone_norm,
        cfg_model.train_backbone_from,
        cfg_model.dilation,
        cfg_model.backbone_out,
        cfg_model.backbone_width,
    )
    return Joiner(backbone, PositionEmbeddingSine(cfg_model.hidden_dim // 2))
