"""Device names (RedisAI's grammar: CPU, GPU, CPU:n, GPU:n), discovery and framework placement."""

from aiworker.devices.discovery import available_devices, gpu_count, host_gpu_count
from aiworker.devices.names import Device, parse_device

__all__ = ["Device", "available_devices", "gpu_count", "host_gpu_count", "parse_device"]
