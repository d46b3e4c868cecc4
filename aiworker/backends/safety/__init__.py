"""Models and scripts are code: refuse, at load time, those that touch files or run other code.

Whoever may store a model or script may otherwise act as the worker's OS user: TorchScript has
``torch.from_file`` and ``torch.save``, TensorFlow graphs have ``ReadFile``/``WriteFile`` and
checkpoint ops, ONNX models may name custom-op libraries (native code), TFLite models may carry
Flex (TensorFlow) ops. Unless the operator sets ``allow_file_ops``, each backend calls the check
for its framework here before the framework runs anything, and a refusal names the operation.

Nothing here imports a framework at module level: each check receives the framework's own
objects, or imports what it needs, so the module can be imported by any backend.
"""

from aiworker.backends.safety.onnx_ops import check_onnx
from aiworker.backends.safety.tf_ops import TF_FILE_OPS, check_tf_graph_def, check_tf_saved_model
from aiworker.backends.safety.tflite_ops import check_tflite
from aiworker.backends.safety.torch_ops import (
    TORCH_FILE_OPS,
    check_torch_archive,
    check_torch_module,
    check_torch_script,
)

__all__ = [
    "TF_FILE_OPS",
    "TORCH_FILE_OPS",
    "check_onnx",
    "check_tf_graph_def",
    "check_tf_saved_model",
    "check_tflite",
    "check_torch_archive",
    "check_torch_module",
    "check_torch_script",
]
