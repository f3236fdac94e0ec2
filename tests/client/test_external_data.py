"""External data: the scanner finds it in every place a tensor can sit, and onnxruntime is locked out."""

import numpy as np
import onnxruntime
import pytest

from fedge.client.runtime.session import device_session
from fedge.client.runtime.verify import BundleError, load_public_key, verify_bundle
from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
from fedge.core.onnx_scan import MAX_DEPTH, MalformedModelError, external_data_refs
from tests.client import hostile
from tests.client.conftest import bundle_config

# The models that a plain onnxruntime session, loaded from bytes, runs on the secret file.
READS_THE_FILE = ["sparse_initializer", "constant_sparse_value", "local_function"]


@pytest.fixture()
def secret_in_cwd(tmp_path, monkeypatch):
    """The file a hostile model reaches for, in the working directory and one level up."""
    work = tmp_path / "work"
    work.mkdir()
    hostile.SECRET_VALUES.tofile(work / hostile.SECRET)
    hostile.SECRET_VALUES.tofile(tmp_path / hostile.SECRET)
    monkeypatch.chdir(work)
    return work


def _plain_session(model: bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("location", sorted(hostile.LOCATIONS))
def test_the_scanner_finds_external_data_everywhere(location):
    refs = external_data_refs(hostile.LOCATIONS[location]().SerializeToString())
    assert len(refs) == 1, refs


def test_the_scanner_names_the_place():
    (ref,) = external_data_refs(hostile.constant_sparse_value().SerializeToString())
    assert ref == 'graph "g" > node > attribute "sparse_value" > sparse_tensor > values "v"'


def test_a_self_contained_model_has_no_references(student_models):
    assert external_data_refs(student_models[1]) == []


@pytest.mark.parametrize("location", READS_THE_FILE)
def test_plain_onnxruntime_reads_the_file_and_the_device_session_does_not(location, secret_in_cwd):
    model = hostile.LOCATIONS[location]().SerializeToString()
    out = _plain_session(model).run(None, {"x": np.zeros(4, np.float32)})[0]
    np.testing.assert_array_equal(out, hostile.SECRET_VALUES)  # the attack is real
    with pytest.raises(Exception, match="External data path"):
        device_session(model)


@pytest.mark.parametrize("location", ["../" + hostile.SECRET, "/etc/hostname", hostile.SECRET])
def test_the_device_session_refuses_every_path(location, secret_in_cwd):
    model = hostile.constant_sparse_value()
    model.graph.node[0].attribute[0].sparse_tensor.values.external_data[0].value = location
    with pytest.raises(Exception, match="External data path|not allowed"):
        device_session(model.SerializeToString())


@pytest.mark.parametrize("location", sorted(hostile.LOCATIONS))
def test_a_signed_bundle_with_external_data_is_refused_before_onnxruntime(
    location, tmp_path, monkeypatch
):
    private_path, public_path = generate_keypair(tmp_path / "keys")
    model = hostile.LOCATIONS[location]().SerializeToString()
    files = make_bundle(model, bundle_config(), load_private_key(private_path))
    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda *a, **k: pytest.fail("onnxruntime saw it")
    )
    with pytest.raises(BundleError) as err:
        verify_bundle(files, load_public_key(public_path))
    assert err.value.check == "external-data"


def test_a_truncating_enum_value_counts_as_external():
    """data_location 2**32 + 1 is EXTERNAL to a parser that keeps 32 bits of the enum."""
    tensor = hostile._field(8, b"w") + hostile._varint_field(14, 2**32 + 1)
    graph = hostile._field(5, tensor)
    model = hostile._varint_field(1, 8) + hostile._field(7, graph)
    assert external_data_refs(model) == ['graph > initializer "w"']


def test_nesting_is_bounded():
    assert external_data_refs(hostile.deep_graph(MAX_DEPTH // 3)) == []
    with pytest.raises(MalformedModelError, match="deeper than"):
        external_data_refs(hostile.deep_graph(1_000))


@pytest.mark.parametrize("data", [b"\x0a\xff\xff", b"\x0b", b"\x00\x01", b"\x08"])
def test_malformed_bytes_are_refused(data):
    with pytest.raises(MalformedModelError):
        external_data_refs(data)
