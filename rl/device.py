"""`pick_device` lives in training/device.py; this name stays for rl/sampling.py and the sampling benchmark."""

from training.device import DeviceChoice, pick_device

__all__ = ["DeviceChoice", "pick_device"]
