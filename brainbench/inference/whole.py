"""Whole-volume inference: one forward pass over the whole image, as Brosch et al. 2016 segment
whole images with their fully convolutional CEN (spec §4.1, §4.3). With ``inference.brain_box`` the
pipeline passes only the brain's bounding box (:func:`~brainbench.inference.region.predict_in_brain_box`).
The net must accept any input size and return it (:class:`~brainbench.models.brosch.BroschCEN` does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from brainbench.inference.device import inference_state

__all__ = ["predict_whole_volume"]


def predict_whole_volume(net: nn.Module, image: np.ndarray | Tensor, device=None) -> np.ndarray:
    """Class probabilities of a whole volume; float32 (K, X, Y, Z), softmax over K.

    image: (C, X, Y, Z) float32, z-scored with background 0. The pass runs on ``device`` (default:
    where the net is) in eval and inference mode; the net's training flag is restored afterwards.
    """
    volume = torch.as_tensor(image, dtype=torch.float32)
    if volume.ndim != 4:
        raise ValueError(f"image: expected (C, X, Y, Z), got {tuple(volume.shape)}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    with inference_state(net):
        logits = net(volume.unsqueeze(0).to(device))
        if logits.shape[2:] != volume.shape[1:]:
            raise ValueError(f"net: returned size {tuple(logits.shape[2:])} for an input of "
                             f"{tuple(volume.shape[1:])}; whole-volume inference needs the input's size")
        return torch.softmax(logits[0].float(), dim=0).cpu().numpy()
