"""The values a choice setting allows, each written once (settings, stage configs, codecs)."""

DATASETS = ("digits", "mnist1d", "fmnist")  # plus "npz:PATH"
PARTITIONS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
# Student family, from fewest bytes (and cheapest) to most: `fedge compress` tries them in order.
STUDENTS = (
    "deep-tiny",
    "ds-tiny",
    "tiny",
    "deep-small",
    "ds-small",
    "small-fast",
    "small",
    "deep-medium",
    "ds-medium",
    "medium-fast",
    "medium",
)
# The federated model (fedge.core.models): a student architecture federates that small model
# directly (the baseline distillation has to beat).
TEACHERS = ("cnn", "linear", *STUDENTS)
QUANT_FORMATS = ("qdq", "qoperator")
QUANT_MODES = ("static", "weights", "dynamic", "none")
DEVICE_TARGETS = ("onnx", "onnx,ort", "onnx,tflite", "onnx,ort,tflite")  # a bundle's artifacts
QUANT_CALIBRATIONS = ("minmax", "entropy", "percentile")
QAT_MODES = ("off", "fallback", "always")
TEACHER_MODES = ("global", "ensemble")
KD_LABELS = ("hard", "soft")
STUDENT_NORMS = ("none", "batch")  # student-norm: BatchNorm while distilling, folded after
KD_QUERIES = ("pool", "augmented")
KD_SOURCES = ("auto", "public", "federated", "both")
DP_MODES = ("none", "central", "local")
DP_CLIPPING = ("server", "client")
DP_CLIP_MODES = ("fixed", "adaptive")
DP_ACCOUNTANTS = ("rdp", "prv")
UPDATE_CODECS = ("none", "int8", "topk", "topk+int8")  # training updates, fedge.core.codec
ROUNDINGS = ("stochastic", "deterministic")
DOWNLINKS = ("none", "int8", "delta")
SECURE_AGGREGATIONS = ("off", "secagg+")  # Flower's SecAgg+ protocol (fedge.server.secagg)
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum", "bulyan")
BYZANTINE_MODES = ("sign-flip", "gaussian", "label-flip")
AUGMENTS = ("none", "shift", "flip-shift")  # the teacher's local training (core.augment)
CENTERINGS = ("none", "public")  # the inputs' shift (fedge.core.data.centered)
INSTALL_TIMINGS = ("auto", "settled", "once", "off")
