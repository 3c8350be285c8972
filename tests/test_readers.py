"""Recording readers on real files written by numpy, scipy.io and wfdb."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import wfdb

from heartgpt.data.readers import (
    dx_codes,
    find_records,
    read_recording,
    read_sidecar_beats,
    sidecar_path,
)
from heartgpt.data.recording import RecordError, RecordFile
from heartgpt.data.text_tables import _parse_lines, _parse_plain_numbers, parse_text

FS = 250.0


def _sig(n: int = 1000, channels: int = 3) -> np.ndarray:
    t = np.arange(n) / FS
    return np.stack([np.sin(2 * np.pi * (1 + c) * t) + c for c in range(channels)], axis=1)


def _read(path, fmt, channel, sample_rate=None, **kw):
    return read_recording(RecordFile(path.stem, path, fmt), channel, sample_rate, **kw)


def test_csv_with_and_without_header(tmp_path):
    x = _sig()
    p = tmp_path / "h.csv"
    lines = ["Time [s], RESP, PLETH"] + [f"{i / FS},{a},{b}" for i, (a, b) in enumerate(x[:, :2])]
    lines[5] = "0.016,,1.0"  # empty cell -> NaN
    p.write_text("\n".join(lines) + "\n")
    rec = _read(p, "csv", "pleth", 125)  # names match without spaces, any case
    assert rec.sample_rate == 125 and rec.signal.shape == (1000,)
    np.testing.assert_allclose(rec.signal[5:], x[5:, 1])
    resp = _read(p, "csv", "RESP", 125).signal
    assert np.isnan(resp[4]) and np.isfinite(resp[5:]).all()
    q = tmp_path / "n.csv"
    np.savetxt(q, x, delimiter=",")
    np.testing.assert_allclose(_read(q, "csv", 2, FS).signal, x[:, 2])
    with pytest.raises(RecordError, match="no channel named 'II'"):
        _read(p, "csv", "II", 125)


def test_csv_needs_a_rate(tmp_path):
    p = tmp_path / "a.csv"
    np.savetxt(p, _sig()[:, 0])
    with pytest.raises(RecordError, match="sample_rate"):
        _read(p, "csv", 0)


def test_npy_and_npz(tmp_path):
    x = _sig()
    np.save(tmp_path / "one.npy", x[:, 0])
    np.save(tmp_path / "many.npy", x)
    np.testing.assert_allclose(_read(tmp_path / "one.npy", "npy", 0, FS).signal, x[:, 0])
    np.testing.assert_allclose(_read(tmp_path / "many.npy", "npy", -1, FS).signal, x[:, 2])
    np.savez(tmp_path / "z.npz", signal=x, fs=500.0, channel_names=np.array(["I", "II", "III"]),
             subject="p7", label=1, beats=np.array([3, 40]))
    rec = _read(tmp_path / "z.npz", "npy", "II", sample_rate=100.0)
    assert rec.sample_rate == 500.0  # the file's own rate wins
    assert (rec.subject, rec.label) == ("p7", 1.0)
    np.testing.assert_array_equal(rec.beats, [3, 40])
    np.testing.assert_allclose(rec.signal, x[:, 1])


def test_mat(tmp_path):
    x = _sig()
    scipy.io.savemat(tmp_path / "a.mat", {"signal": x, "fs": 360.0, "subject": "s1"})
    rec = _read(tmp_path / "a.mat", "mat", 1)
    assert rec.sample_rate == 360.0 and rec.subject == "s1"
    np.testing.assert_allclose(rec.signal, x[:, 1])
    scipy.io.savemat(tmp_path / "v.mat", {"val": x.T})  # PhysioNet layout (channels, samples)
    np.testing.assert_allclose(_read(tmp_path / "v.mat", "mat", 2, FS).signal, x[:, 2])


def test_wfdb_channel_by_name_dx_label_and_annotations(tmp_path):
    x = _sig(channels=2)
    wfdb.wrsamp("r1", fs=500, units=["mV", "mV"], sig_name=["I", "II"], p_signal=x,
                fmt=["16", "16"], comments=["Age: 50", "Dx: 426783006,164889003"],
                write_dir=str(tmp_path))
    wfdb.wrann("r1", "atr", np.array([10, 300, 600]), symbol=["N", "+", "N"], write_dir=str(tmp_path))
    path = tmp_path / "r1.hea"
    rec = _read(path, "wfdb", "II", dx_positive=["164889003"])
    assert rec.sample_rate == 500.0 and rec.label == 1.0
    np.testing.assert_allclose(rec.signal, x[:, 1], atol=1e-3)
    assert _read(path, "wfdb", "I", dx_positive=[111]).label == 0.0
    assert dx_codes(["Sex: F", "Dx: 1, 2"]) == ["1", "2"]
    from heartgpt.data.readers import read_wfdb_beats

    np.testing.assert_array_equal(read_wfdb_beats(path, "atr", None), [10, 300, 600])
    np.testing.assert_array_equal(read_wfdb_beats(path, "atr", ["N"]), [10, 600])


def test_cinc2020_style_mat_record_is_read_through_its_header(tmp_path):
    x = _sig(channels=2)
    d = np.round(x * 1000).astype(np.int16).T
    scipy.io.savemat(tmp_path / "A0001.mat", {"val": d}, format="4")
    (tmp_path / "A0001.hea").write_text(
        "A0001 2 500 1000\n"
        "A0001.mat 16+24 1000/mV 16 0 0 0 0 I\n"
        "A0001.mat 16+24 1000/mV 16 0 0 0 0 II\n"
        "#Dx: 164889003\n"
    )
    found = find_records(tmp_path)
    assert [(r.name, r.format) for r in found] == [("A0001", "wfdb")]
    rec = read_recording(found[0], "I")
    np.testing.assert_allclose(rec.signal, d[0] / 1000)


def test_find_records(tmp_path):
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "b.npy", np.zeros(3))
    np.savetxt(tmp_path / "a.csv", np.zeros(3))
    (tmp_path / "a_beats.csv").write_text("1\n")
    (tmp_path / "labels.csv").write_text("record,label\n")
    (tmp_path / "readme.md").write_text("not a record")
    names = [r.name for r in find_records(tmp_path, exclude=[tmp_path / "labels.csv"],
                                          exclude_suffixes=["_beats.csv"])]
    assert names == ["a", "sub/b"]
    assert [r.name for r in find_records(tmp_path, "npy")] == ["sub/b"]
    assert [r.name for r in find_records(str(tmp_path / "**" / "*.npy"))] == ["sub/b"]
    with pytest.raises(FileNotFoundError):
        find_records(tmp_path / "missing")


def test_sidecar_beats(tmp_path):
    rec = tmp_path / "0009_8min_signal.csv"
    side = sidecar_path(rec, "_labels.csv", "_signal.csv")
    assert side.name == "0009_8min_labels.csv"
    side.write_text('pleth_peak_x,units_x\n" 59 242 500",samples\n')
    np.testing.assert_array_equal(read_sidecar_beats(side, "pleth_peak_x", 1), [58, 241, 499])
    plain = tmp_path / "r_beats.csv"
    plain.write_text("12\n40\n")
    np.testing.assert_array_equal(read_sidecar_beats(plain, None, 0), [12, 40])


@pytest.mark.parametrize(("text", "evidence", "channel_0"), [
    ("1,2796;2,5592\n3,8387;4,0001\n", "'1,2796;2,5592'", [1.2796, 3.8387]),
    ("a\tb\n1,5\t2,25\n", r"'1,5\t2,25'", [1.5]),
    ("3,8387\n3,0521\n-1,25\n", "'3,0521'", [3.8387, 3.0521, -1.25]),  # a leading-zero fraction
    ("x\n-0,5\n2,75\n", "'-0,5'", [-0.5, 2.75]),
])
def test_decimal_commas_are_refused_or_read(tmp_path, text, evidence, channel_0):
    path = tmp_path / "rec.csv"
    path.write_text(text)
    with pytest.raises(RecordError, match="decimal comma") as e:
        _read(path, "csv", 0, sample_rate=100)
    assert evidence in str(e.value) and "csv_decimal" in str(e.value)
    assert _read(path, "csv", 0, sample_rate=100, csv_decimal=",").signal.tolist() == channel_0


def test_integer_columns_are_not_mistaken_for_decimal_commas(tmp_path):
    path = tmp_path / "adc.csv"
    path.write_text("time,value\n0,512\n1,498\n2,1000\n")
    rec = _read(path, "csv", "value", sample_rate=100)
    assert rec.signal.tolist() == [512.0, 498.0, 1000.0]
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("1.5;2.5\n3.5;4.5\n")
    assert _read(semicolons, "csv", 1, sample_rate=100).signal.tolist() == [2.5, 4.5]
    assert _read(semicolons, "csv", 1, sample_rate=100, csv_decimal=",").signal.tolist() == [
        2.5, 4.5]


def test_a_rate_that_is_not_positive_is_refused(tmp_path):
    path = tmp_path / "zero.npz"
    np.savez(path, signal=np.arange(10.0), fs=0.0)
    with pytest.raises(RecordError, match=r"zero.npz: sampling rate 0.0 Hz \(its fs\) is not a "
                                          r"positive number"):
        _read(path, "npy", 0)


def _slow(path):
    """parse_text's line-by-line path, which the numpy fast path must match to the bit."""
    return _parse_lines(path.read_text(encoding="utf-8-sig").splitlines(), path, ".")


def _same(a, b) -> bool:
    return a[0] == b[0] and a[1].dtype == b[1].dtype and np.array_equal(a[1], b[1], equal_nan=True) \
        and a[1].tobytes() == b[1].tobytes()  # bit for bit: -0.0, rounding


_X = np.random.default_rng(7).standard_normal((40, 3)) * 10.0 ** np.arange(-4, 8, 4)


@pytest.mark.parametrize(("text", "names", "shape"), [
    ("ecg\n" + "".join(f"{v!r}\n" for v in _X[:, 0].tolist()), ["ecg"], (40, 1)),
    ("time, ecg ,resp\n" + "".join(",".join(map(repr, r)) + "\n" for r in _X.tolist()),
     ["time", "ecg", "resp"], (40, 3)),
    ("".join(",".join(f"{v:.6g}" for v in r) + "\n" for r in _X.tolist()), None, (40, 3)),
    ("a\tb\n" + "".join(f"{r[0]:.17e}\t{r[1]!r}\n" for r in _X.tolist()), ["a", "b"], (40, 2)),
    ("x;y\n1.5;2.5\n3.5;4.5", ["x", "y"], (2, 2)),  # no final line end
    ("  1.0   2.0 \n-3  4e2\n", None, (2, 2)),  # whitespace-separated
    ("p,q\r\n1e-3,-2.5E+02\r\n-0,.5\r\n5.,+3\r\n1e400,-1e-400\r\n", ["p", "q"], (4, 2)),
    ("n,m,k\n10,20,30\n-1,0,7\n123456789012345678901,2,3\n", ["n", "m", "k"], (3, 3)),
], ids=["one column", "commas", "no header", "tabs", "semicolons", "spaces", "exponents", "integers"])
def test_csv_fast_path_matches_the_line_by_line_parser(tmp_path, text, names, shape):
    path = tmp_path / "rec.csv"
    path.write_bytes(text.encode())
    assert _parse_plain_numbers(path.read_text()) is not None  # the fast path is taken
    got = parse_text(path)
    assert got[0] == names and got[1].shape == shape and got[1].dtype == np.float64
    assert _same(got, _slow(path))


@pytest.mark.parametrize(("text", "names", "rows", "error"), [
    ("a,b\n1,\n2,3\n", ["a", "b"], [[1, np.nan], [2, 3]], None),  # empty cell
    ("1\n2\n\n4\n", None, [[1], [2], [np.nan], [4]], None),  # blank line in the middle
    ("# made by hand\n1;2\n3;4\n", None, [[1, 2], [3, 4]], None),  # a comment line
    ("v\nnan\n1_0\n", ["v"], [[np.nan], [10]], None),  # numbers that are not plain
    ("v\n1\n2\n3\n4\n5\nx\n8\n", None, None, "line 7: not a number: 'x'"),
    ("1,2\n3,4\n5,6,7\n", None, None, "line 3: 3 values, expected 2"),  # ragged
    ("1,2\n3\n", None, None, "line 2: 1 values, expected 2"),
    ("1.5;2\n3.5,4;5\n", None, None, "line 2: 3 values, expected 2"),  # mixed delimiters
], ids=["empty cell", "blank line", "comment", "nan", "not a number", "ragged", "short", "mixed"])
def test_csv_files_the_fast_path_leaves_alone_read_as_before(tmp_path, text, names, rows, error):
    path = tmp_path / "rec.csv"
    path.write_text(text)
    assert _parse_plain_numbers(text) is None
    if error:
        for parse in (parse_text, _slow):
            with pytest.raises(RecordError, match=error):
                parse(path)
        return
    got = parse_text(path)
    assert got[0] == names
    np.testing.assert_array_equal(got[1], np.array(rows, dtype=np.float64))
    assert _same(got, _slow(path))


def test_csv_fast_path_rounds_like_float(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(3000) * 10.0 ** rng.integers(-300, 300, 3000)
    cells = [repr(v) for v in x.tolist()] + [f"{v:.25e}" for v in x[:500].tolist()] + [
        "5e-324", "2.4703282292062327e-324", "1.7976931348623157e308", "0.1", "-0.0"]
    path = tmp_path / "big.csv"
    path.write_text("value\n" + "\n".join(cells) + "\n")
    names, data = parse_text(path)
    assert names == ["value"]
    assert data[:, 0].tobytes() == np.array([float(c) for c in cells]).tobytes()


def test_wfdb_whole_record_read_matches_the_one_channel_read(tmp_path, monkeypatch):
    from heartgpt.data import readers

    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    x = np.random.default_rng(1).standard_normal((5000, 12)) * np.arange(1, 13)
    wfdb.wrsamp("r12", fs=500, units=["mV"] * 12, sig_name=names, p_signal=x, fmt=["16"] * 12,
                comments=["Dx: 426783006"], write_dir=str(tmp_path))
    path = tmp_path / "r12.hea"
    assert readers._wfdb_samples(path) == 60000
    channels = [*range(12), -1, "v6", " aVR ", "3"]
    whole = [readers.read_wfdb(path, c) for c in channels]  # one rdrecord of every lead
    monkeypatch.setattr(readers, "_WFDB_WHOLE_READ_SAMPLES", 0)  # header, then the one lead
    for c, (signal, meta) in zip(channels, whole, strict=True):
        one, one_meta = readers.read_wfdb(path, c)
        assert signal.tobytes() == one.tobytes() and meta == one_meta
    with pytest.raises(RecordError, match="no channel named 'X'"):
        readers.read_wfdb(path, "X")
