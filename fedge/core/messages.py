"""Message types and record keys shared by the ServerApp and the ClientApp (one place, no literals)."""

from __future__ import annotations

from fedge.core.bundle_format import ARTIFACTS, MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE

# Message types (Flower: train | evaluate | query, or "<type>.<identifier>").
TRAIN = "train"
EVALUATE = "evaluate"
DEPLOY_ACTION = "deploy"  # registered with @app.query("deploy")
DEPLOY = f"query.{DEPLOY_ACTION}"
STUDENT_ACTION = "student"  # federated distillation: a round of student training on clients
TRAIN_STUDENT = f"{TRAIN}.{STUDENT_ACTION}"
INFO_ACTION = "info"  # the node's partition id (client sampling is by partition)
INFO = f"query.{INFO_ACTION}"
LOGITS_ACTION = "logits"  # ensemble distillation: the client's logits on public inputs
LOGITS = f"query.{LOGITS_ACTION}"
PROFILE_ACTION = "profile"  # device tiers: the node's device profile (fedge profile's JSON)
PROFILE = f"query.{PROFILE_ACTION}"
SECAGG_ACTION = "secagg"  # secure aggregation's key stages (setup, share keys, unmask)
SECAGG_QUERY = f"query.{SECAGG_ACTION}"

# RecordDict keys.
ARRAYS = "arrays"
DOWNLINK = "downlink"  # downlink-compression delta: ConfigRecord of kind, view and base ids
DOWNLINK_FULL, DOWNLINK_DELTA = "full", "delta"  # its kinds: an int8 model, a coded change
CONFIG = "config"
FEDERATE = "federate"  # train.student: the student rounds' own settings (core.federate)
METRICS = "metrics"
BUNDLE = "bundle"
STATUS = "status"
INPUTS = "inputs"  # query.logits: the public transfer inputs (ArrayRecord, one array "x")
SECAGG = "secagg"  # ConfigRecord of a SecAgg+ stage (Flower's keys, plus "round" and "kind")
SECAGG_WEIGHT = "weight"  # ... and in the collect stage, the metric that weighs the update
SECAGG_MASKED = "secagg-masked"  # collect stage reply: the masked vector, arrays "0".."n"
SECAGG_DELTA = "delta"  # ... 1: mask the update (trained - received) on the int8 grid
SECAGG_AHEAD = "ahead"  # unmask stage: 1 = also make key pairs for the node's next round
SECAGG_AHEAD_KEYS = ("ahead-pk1", "ahead-pk2")  # ... the unmask reply: their public keys
SECAGG_SETUP = "setup."  # share keys stage: the setup values, for a node that keyed ahead
LOGITS_RECORD = "logits"  # query.logits reply: one array "logits" of shape (N, classes)

# context.state keys: the model the server's downlink deltas apply to (+ message type), and
# the client's own model from its last training round (ensemble mode).
STATE_VIEW = "fedge.view."
STATE_MODEL = "fedge.local-model"
STATE_ROUND = "fedge.local-round"
# The final teacher's logits on the client's own training split (federated distillation), and
# the sha256 of the teacher they came from (student rounds name the teacher they expect).
STATE_TEACHER_LOGITS = "fedge.teacher-logits"
STATE_TEACHER = "fedge.teacher"
STATE_SECAGG = "fedge.secagg"  # the node's SecAgg+ state (keys, shares) of the current round
STATE_SECAGG_ROUND = "fedge.secagg.round"  # which round and train type it was set up for
STATE_SECAGG_AHEAD = "fedge.secagg.ahead"  # key pairs made at the last unmask, for one round
TEACHER_SHA256 = "teacher-sha256"
STUDENT_ROUNDS_BEFORE = "student-rounds-before"  # train.student: earlier students' rounds (DP)

# MetricRecord keys.
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train-loss"
ACCURACY = "accuracy"
LOSS = "loss"
INSTALLED = "installed"
LATENCY_US_P50 = "latency-us-p50"  # Predictor.predict on one sample, p50 µs
ONNX_US_P50 = "onnx-us-p50"  # the installed model's onnxruntime call on one sample, p50 µs
UNIT_WEIGHT = "unit-weight"  # 1 from every client: the weight of central DP's uniform mean
CONTRIBUTORS = "contributors"  # SecAgg+'s one aggregate reply: how many updates it sums
SECAGG_WEIGHTS = (NUM_EXAMPLES, UNIT_WEIGHT)  # what may weigh a masked update (collect stage)
DP_EPSILON = "dp-epsilon"  # local DP: the client's epsilon after this round (upper bound)
DP_NOISE = "dp-noise"  # local DP: the client's noise multiplier

# ConfigRecord keys of a deploy message. The bundle's files travel under keys of their own,
# mapped to and from file names by BUNDLE_FILE_KEYS only: a message key is never a file name.
BUNDLE_MODEL = "bundle-model"
BUNDLE_MANIFEST = "bundle-manifest"
BUNDLE_SIGNATURE = "bundle-signature"
BUNDLE_TFLITE = "bundle-tflite"
BUNDLE_ORT = "bundle-ort"
BUNDLE_FILE_KEYS = {
    MODEL_FILE: BUNDLE_MODEL,
    MANIFEST_FILE: BUNDLE_MANIFEST,
    SIGNATURE_FILE: BUNDLE_SIGNATURE,
    ARTIFACTS["tflite"][0]: BUNDLE_TFLITE,
    ARTIFACTS["ort"][0]: BUNDLE_ORT,
}
# Simulation only: a node uses these only when it knows it is simulated (fedge.client.node);
# where the node keeps its store under the root is the node's business, not the server's.
SIMULATION_STORE_ROOT = "simulation-store-root"
SIMULATION_TRUSTED_KEY = "simulation-trusted-key"  # the run's public key
# The tier the server assigned a node (device tiers): the tier it holds the bundle to when its
# own node config names no device-class.
DEPLOY_TIER = "deploy-tier"
REASON = "reason"
PROFILE_JSON = "profile-json"  # query.profile reply: the profile file's text ("" if none)

# ConfigRecord keys describing the federation's model (so devices need not hold the dataset).
INPUT_SHAPE = "input-shape"
NUM_CLASSES = "num-classes"
PREPROCESS_SHIFT = "preprocess-shift"
PREPROCESS_SCALE = "preprocess-scale"

SIMULATION_ENV = "FEDGE_SIMULATION"  # "1" in the processes of a local simulation, nowhere else
MAX_PROFILE_BYTES = 1 << 20  # a device profile is ~10 KB; a node sends at most this much

# node_config keys (Flower sets partition-id and num-partitions in simulation).
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_MODEL_STORE = "model-store"
NODE_TRUSTED_KEY = "trusted-key"
NODE_ALLOW_MODEL_SWITCH = "allow-model-switch"  # true: accept bundles of another model_id
NODE_DEVICE_CLASS = "device-class"  # a device tier's name (tiers setting)
NODE_RUNTIME = "runtime"  # node config: what the node runs (onnx | ort | tflite)
NODE_DEVICE_PROFILE = "device-profile"  # path of the node's fedge profile JSON (device tiers)
NODE_DATA_FILE = "data-file"  # a real device's own npz; replaces the simulated partition
