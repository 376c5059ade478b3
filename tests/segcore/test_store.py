"""segcore.store: the record format (encode, decode, version refusal) and the store around it."""

import struct

import numpy as np
import pytest

from segcore.store import (
    ALIGNMENT,
    COARSE_IMAGE,
    COARSE_LABEL,
    RECORD_FORMAT_VERSION,
    CaseMeta,
    CaseStore,
    StoreWriter,
    decode_arrays,
    decode_header,
    encode_record,
)


def meta(case_id: str = "case_1") -> CaseMeta:
    return CaseMeta(
        id=case_id, split="labeled", config_hash="abc", image_path="train_images/x_0000.nii.gz",
        label_path="train_mask/x.nii.gz", geometry={"size": [4, 5, 6]}, reorientation={"axes_zyx": [0, 1, 2]},
        canonical_shape=[6, 5, 4], canonical_spacing=[2.0, 1.0, 1.0], crop_box_canonical=[[0, 6], [0, 5], [0, 4]],
        crop_box_original=[[0, 4], [0, 5], [0, 6]], crop_source="labels", crop_note=None,
        coarse_weights_sha256=None, labels_present=[1, 3],
    )  # fmt: skip


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        COARSE_IMAGE: rng.integers(-1024, 3000, (6, 5, 4)).astype(np.int16),
        COARSE_LABEL: rng.integers(0, 14, (6, 5, 4)).astype(np.uint8),
    }


def test_a_record_reads_back_its_metadata_and_arrays_aligned():
    record = encode_record(meta().as_record(), arrays())
    assert record[:4] == b"SEGR" and struct.unpack_from("<I", record, 4)[0] == RECORD_FORMAT_VERSION
    header = decode_header(record)
    assert header["id"] == "case_1" and header["format_version"] == RECORD_FORMAT_VERSION
    assert header["labels_present"] == [1, 3] and header["crop_note"] is None
    decoded = decode_arrays(record, header)
    for name, array in arrays().items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)
        assert header["arrays"][name]["offset"] % ALIGNMENT == 0
        assert not decoded[name].flags.writeable  # views of the record, no copy


def test_records_of_another_format_or_no_record_are_refused():
    record = bytearray(encode_record(meta().as_record(), arrays()))
    struct.pack_into("<I", record, 4, RECORD_FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match=f"record format {RECORD_FORMAT_VERSION + 1}, this code reads .* re-run"):
        decode_header(record)
    with pytest.raises(ValueError, match="not a case record"):
        decode_header(b"JUNK" + bytes(record[4:]))


def test_the_store_serves_what_the_writer_put(tmp_path):
    path = tmp_path / "store.lmdb"
    with StoreWriter(path) as writer:
        writer.put_case(meta("a"), arrays())
        writer.put_case(meta("b"), arrays())
        writer.put_splits({"folds": [["a"], ["b"]], "unlabeled": [], "test": []})
    store = CaseStore(path)
    assert store.ids() == ["a", "b"] and store.meta("b")["id"] == "b" and "a" in store
    np.testing.assert_array_equal(store.arrays("a")[COARSE_IMAGE], arrays()[COARSE_IMAGE])
    assert store.fold(0) == (["b"], ["a"])
    with pytest.raises(KeyError, match="no case 'c'"):
        store.arrays("c")
    with pytest.raises(ValueError, match="fold 2 does not exist"):
        store.fold(2)
    store.close()


def test_a_folder_that_holds_no_store_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no case store here"):
        CaseStore(tmp_path)
