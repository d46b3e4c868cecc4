"""Device names (RedisAI's grammar: CPU, GPU, CPU:n, GPU:n), discovery and framework placement."""

from aiworker.devices.names import Device, parse_device

__all__ = ["Device", "parse_device"]
