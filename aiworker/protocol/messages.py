"""RedisAI's client-facing error messages, in one place (as redis-py showed them: no ``ERR``)."""

from __future__ import annotations

# Tensors
INVALID_DTYPE = "invalid data type"
INVALID_SHAPE = "invalid or negative value found in tensor shape"
WRONG_VALUE_COUNT = "wrong number of values was given in 'AI.TENSORSET' command"
BLOB_LENGTH = "data length does not match tensor shape and type"
INVALID_VALUE = "invalid value"
BOOL_BLOB = "BOOL tensor elements must be 0 or 1"
TENSOR_EMPTY = "tensor key is empty or in a different shard"
STRING_BLOB = "Number of string elements in data blob does not match tensor length"
STRING_NUL = "C-string value contains null character"
UNSUPPORTED_FORMAT = "unsupported data format"
BLOB_AND_VALUES = "both BLOB and VALUES specified"
# aiworker's own: a model or script returned a type RedisAI's tensors lack (bfloat16, complex64)
OUTPUT_TYPE = "output {n} has type {dtype}, which no RedisAI tensor type holds"

# Models
MODEL_EMPTY = "model key is empty"
MODEL_UNSUPPORTED_BACKEND = "unsupported backend"
MODEL_NO_BLOB = "Insufficient arguments, missing model BLOB"
MODEL_BAD_BATCHSIZE = "Invalid argument for BATCHSIZE"
MODEL_BAD_MINBATCHSIZE = "Invalid argument for MINBATCHSIZE"
MODEL_BAD_MINBATCHTIMEOUT = "Invalid argument for MINBATCHTIMEOUT"
MODEL_BAD_INPUT_COUNT = "Invalid argument for input_count"
MODEL_BAD_OUTPUT_COUNT = "Invalid argument for output_count"
MODEL_TF_INPUTS_REQUIRED = "INPUTS not specified for TF"
MODEL_TF_OUTPUTS_REQUIRED = "OUTPUTS not specified for TF"
MODEL_IO_NOT_TF = "INPUTS argument should not be specified for this backend"
MODEL_MINBATCH_NEEDS_BATCH = "MINBATCHSIZE specified without BATCHSIZE"
MODEL_MINBATCHTIMEOUT_NEEDS_MINBATCH = "MINBATCHTIMEOUT specified without MINBATCHSIZE"
MODEL_BATCH_SIZE_MISMATCH = "Model did not generate the expected batch size"
MODEL_INPUT_COUNT = "Number of keys given as INPUTS here does not match model definition"
MODEL_OUTPUT_COUNT = "Number of keys given as OUTPUTS here does not match model definition"
MODEL_TFLITE_NO_BATCHING = "Auto-batching not supported by the TFLITE backend"

# Scripts
SCRIPT_EMPTY = "script key is empty"
SCRIPT_NO_ENTRY_POINTS = "Insufficient arguments, missing script entry points"
SCRIPT_NO_SOURCE = "Insufficient arguments, missing script SOURCE"
SCRIPT_BAD_DEVICE = "unsupported device"
# Entry-point checks at store time ({name}: the function; RedisAI sent these without "ERR").
SCRIPT_NO_FUNCTION = "Function {name} does not exist in the given script."
SCRIPT_ARITY = "Wrong number of inputs in function {name}. Expected 3 but was {count}"
SCRIPT_SIGNATURE = (
    "Wrong inputs type in function {name}. Expected signature similar to: "
    "def {name}(tensors: List[Tensor], keys: List[str], args: List[str])"
)
# Run time
SCRIPT_FUNCTION_MISSING = "Function does not exist: {name}"
SCRIPT_OUTPUT_COUNT = "Function returned unexpected number of outputs - {name}"
# RedisAI glued the name on without a separator ("...valuesbar"); the separator is added here.
SCRIPT_NON_TENSOR = "Function returned non-tensor values - {name}"

# Stats
INFO_EMPTY = "cannot find run info for key"

# Devices
INVALID_DEVICE = "Invalid DEVICE"

# Redis Cluster (RedisAI's words when a request's keys live on different shards)
CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot"
# aiworker's own: a model or script stored again between two ops of one job (a DAG); RedisAI's
# DAG held the versions it parsed, and no result mixes two of them
REPLACED_DURING_JOB = "'{key}' was stored again while the job ran; run the job again"
# A name that is not valid UTF-8 ({name}: shown with its bytes escaped); aiworker's names are text.
NAME_NOT_UTF8 = "key name '{name}' is not valid UTF-8"
# aiworker's own: a result no check before the completion foresaw could not be encoded
RESULTS_UNWRITABLE = "internal error: the job's results could not be written"
