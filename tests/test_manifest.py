"""The dataset layer: every layout, every list-format error (with file and line), and the real AML counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from herbarium2field.data.manifest import DatasetError, detect_layout, read_dataset
from herbarium2field.errors import H2FError
from tests.conftest import write_jpeg


def kinds(ds) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in ds.problems:
        out.setdefault(p.kind, []).append(p)
    return out


def test_aml_layout_reads_every_column(make_aml):
    ds = read_dataset(make_aml())
    t = ds.table
    assert ds.layout == "aml"
    assert ds.class_ids == ["101", "202"]
    assert ds.species["202"] == "Cus dus (L.) Mill."
    assert len(t) == 7
    photo = t[t.path == "train/photo/101/3.jpg"].iloc[0]
    assert (photo.domain, photo.split, photo.class_id, photo.image_id, photo.species) == (
        "field", "train", "101", "3", "Aus bus L.")
    assert t[t.class_id == "101"].has_pairs.all() and not t[t.class_id == "202"].has_pairs.any()
    assert ds.with_pairs == {"101"}
    assert set(t[t.split == "test"].domain) == {"field"}
    assert ds.errors == []


def test_crlf_bom_and_trailing_whitespace_are_accepted(make_aml):
    root = make_aml(newline="  \r\n")
    (root / "list" / "species_list.txt").write_bytes(b"\xef\xbb\xbf101; Aus bus L. \r\n202; Cus dus\t\r\n")
    ds = read_dataset(root)
    assert ds.errors == [] and len(ds.table) == 7
    assert ds.species == {"101": "Aus bus L.", "202": "Cus dus"}


def test_malformed_lines_are_reported_with_file_and_line(make_aml):
    root = make_aml(train=["train/herbarium/101/1.jpg 101", "train/herbarium/101/2.jpg", "nonsense 101",
                           "train/herbarium/202/4.jpg 101", "train/photo/101/3.jpg 101", "train/herbarium/202/5.jpg 202"])
    with pytest.raises(DatasetError) as err:
        read_dataset(root)
    msg = str(err.value)
    assert "train.txt:2" in msg and "train.txt:3" in msg and "train.txt:4" in msg
    assert "--allow-missing" in msg
    ds = read_dataset(root, allow_missing=True)
    bad = kinds(ds)["malformed"]
    assert [(Path(p.path).name, p.line) for p in bad] == [("train.txt", 2), ("train.txt", 3), ("train.txt", 4)]
    assert ds.skipped == 3 and len(ds.split("train")) == 3


def test_missing_images_stop_by_default_and_are_skipped_on_request(make_aml):
    root = make_aml()
    (root / "train/herbarium/101/2.jpg").unlink()
    (root / "test/7.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2 missing-image"):
        read_dataset(root)
    ds = read_dataset(root, allow_missing=True)
    missing = kinds(ds)["missing-image"]
    assert {(Path(p.path).name, p.line) for p in missing} == {("train.txt", 2), ("test.txt", 2)}
    assert "train/herbarium/101/2.jpg" not in set(ds.table.path)
    assert read_dataset(root, check="none").errors == []  # lists alone: no image check


def test_unknown_class_in_lists_and_pairs_files(make_aml):
    root = make_aml(train=["train/herbarium/101/1.jpg 101", "train/photo/101/3.jpg 101", "train/herbarium/202/4.jpg 202",
                           "train/herbarium/999/9.jpg 999"], with_pairs=["101", "555"])
    ds = read_dataset(root, allow_missing=True)
    unknown = kinds(ds)["unknown-class"]
    assert {(Path(p.path).name, p.line) for p in unknown} == {("train.txt", 4), ("class_with_pairs.txt", 2)}
    assert "999" not in set(ds.table.class_id)


def test_duplicates_point_at_the_first_occurrence(make_aml):
    root = make_aml(train=["train/herbarium/101/1.jpg 101", "train/photo/101/3.jpg 101", "train/herbarium/202/4.jpg 202",
                           "train/herbarium/101/1.jpg 101"])
    ds = read_dataset(root, allow_missing=True)
    (dup,) = kinds(ds)["duplicate"]
    assert dup.line == 4 and "train.txt:1" in dup.message
    assert (ds.table.path == "train/herbarium/101/1.jpg").sum() == 1


def test_duplicate_groundtruth_and_bad_species_list(make_aml):
    root = make_aml(groundtruth=["test/6.jpg 101", "test/6.jpg 202", "test/7.jpg 202"],
                    test=["test/6.jpg", "test/7.jpg"], species=["101; Aus bus", "202 Cus dus", "101; Again"])
    ds = read_dataset(root, allow_missing=True)
    k = kinds(ds)
    assert [p.line for p in k["duplicate"]] == [2]
    assert sorted(p.line for p in k["bad-species-list"]) == [2, 3]


def test_empty_classes_and_pairs_mismatch_are_warnings(make_aml):
    root = make_aml(species=["101; Aus bus", "202; Cus dus", "303; Eus fus"], with_pairs=["101", "202"],
                    without_pairs=["303"])
    ds = read_dataset(root)  # warnings do not stop reading
    k = kinds(ds)
    assert [p.message for p in k["empty-class"]] == ["class 303 (Eus fus) has no training image"]
    (mismatch,) = k["pairs-mismatch"]
    assert Path(mismatch.path).name == "class_with_pairs.txt" and mismatch.line == 2
    assert ds.with_pairs == {"101"}  # the data decide the group


def test_unlabelled_test_set(make_aml):
    root = make_aml()
    (root / "list" / "groundtruth.txt").unlink()
    ds = read_dataset(root)
    test = ds.split("test")
    assert len(test) == 2 and test.class_id.isna().all()
    assert not test.has_pairs.any()


def test_unreadable_image_is_reported(make_aml):
    root = make_aml()
    (root / "train/herbarium/202/5.jpg").write_bytes(b"this is not a jpeg")
    ds = read_dataset(root, check="decode", allow_missing=True, workers=1)
    (bad,) = kinds(ds)["unreadable-image"]
    assert "5.jpg" in bad.message and bad.line == 5


def make_folders(root: Path, field_dir: str = "field") -> Path:
    for sp, n_h, n_f in [("Aus_bus", 3, 2), ("Cus_dus", 2, 0)]:
        for i in range(n_h):
            write_jpeg(root / "train" / "herbarium" / sp / f"h{i}.jpg")
        for i in range(n_f):
            write_jpeg(root / "train" / field_dir / sp / f"f{i}.JPG")
        write_jpeg(root / "test" / sp / "t0.jpg")
    return root


@pytest.mark.parametrize("field_dir", ["field", "photo"])
def test_folder_layout(tmp_path, field_dir):
    ds = read_dataset(make_folders(tmp_path / "mine", field_dir))
    assert ds.layout == "folders"
    assert ds.class_ids == ["Aus_bus", "Cus_dus"] and ds.species["Aus_bus"] == "Aus bus"
    t = ds.table
    assert len(t[(t.split == "train") & (t.domain == "field")]) == 2
    assert len(ds.split("test")) == 2 and ds.with_pairs == {"Aus_bus"}


def test_csv_manifest(tmp_path):
    make_folders(tmp_path)
    csv = tmp_path / "manifest.csv"
    csv.write_text("path,class_id,domain,split,species\r\n"
                   "train/herbarium/Aus_bus/h0.jpg,1,herbarium,train,Aus bus\r\n"
                   "train/field/Aus_bus/f0.JPG,1,photo,train,Aus bus\r\n"
                   "train/herbarium/Cus_dus/h0.jpg,2,herbarium,train,Cus dus\r\n"
                   "test/Cus_dus/t0.jpg,2,field,test,\r\n"
                   "train/herbarium/Cus_dus/h1.jpg,2,leaf,train,Cus dus\r\n")
    ds = read_dataset(csv, allow_missing=True)
    assert ds.layout == "csv" and ds.species == {"1": "Aus bus", "2": "Cus dus"}
    assert len(ds.table) == 4
    (bad,) = ds.errors
    assert bad.kind == "malformed" and bad.line == 6 and "leaf" in bad.message
    assert read_dataset(tmp_path, allow_missing=True).layout == "csv"  # found as <root>/manifest.csv


def test_csv_manifest_missing_columns(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\nx.jpg,1\n")
    with pytest.raises(H2FError, match=r"m\.csv:1: manifest lacks column\(s\) class_id, domain, split"):
        read_dataset(csv)


def test_unknown_layout_and_missing_root(tmp_path):
    with pytest.raises(H2FError, match="cannot tell the dataset layout"):
        detect_layout(tmp_path)
    with pytest.raises(H2FError, match="does not exist"):
        detect_layout(tmp_path / "nope")


def test_real_plantclef_lists(shared_data):
    ds = read_dataset(shared_data / "aml", check="none")
    t = ds.table
    train = t[t.split == "train"]
    assert (train.domain == "herbarium").sum() == 3700
    assert (train.domain == "field").sum() == 1044
    assert (t.split == "test").sum() == 207
    assert len(ds.species) == 100 and len(ds.with_pairs) == 60
    assert ds.problems == []
    # the list folder itself is accepted as the root
    assert len(read_dataset(shared_data / "aml" / "list", check="none").table) == len(t)


def test_real_sample_images_exist(aml_sample):
    ds = read_dataset(aml_sample, check="exists")
    assert ds.errors == []
    assert len(ds.split("train")) == 189 and len(ds.split("test")) == 32
    assert len(ds.with_pairs) == 15


def test_interrupted_synthetic_dataset_is_refused(tmp_path):
    make_folders(tmp_path)
    (tmp_path / ".h2f-synth.json").write_text('{"complete": false}')
    with pytest.raises(H2FError, match="not finished"):
        read_dataset(tmp_path)
