"""The second hostile battery: numbers at the edges of floating point, outputs that are inputs, JSON and text
that break parsers, interruptions. Rows of the same suite as tests/test_hostile.py, checked the same way
(`check_case`); the numeric cases against numpy's float64 SVD of the same matrices.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import synth
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from test_hostile import Case, base, check_case, copy, edit_json, llama_dir, write  # noqa: F401 - base: a fixture

from alphaspec.cli import app

ROOT = Path(__file__).resolve().parent.parent

# --- numerics: entries near the ends of float32 and float64, against numpy's float64 SVD ------------------------------


def hill_median_from_singular_values(s: np.ndarray) -> float:
    """The median-xmin Hill alpha from singular values: λ = s², so log(λ_i/λ_x) = 2 log(s_i/s_x), which stays
    finite where s² overflows (1e160) or underflows (1e-170) in float64."""
    s = np.sort(s)
    s = s[s > 1e-6 * s[-1]]  # zeros: s² <= 1e-12 λ_max
    i = len(s) // 2
    return 1 + (len(s) - i) / (2 * np.log(s[i:] / s[i])).sum()


def heavy(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A heavy-tailed float64 matrix with entries of magnitude ~1 (largest exactly 1)."""
    w = torch.distributions.StudentT(3.0).sample((rows, cols)).double() if seed == 0 else torch.randn(
        rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w / w.abs().max()


EDGES = [  # (id, entries' scale, stored dtype, --precision)
    ("fp32-entries-1e30-fp32", 1e30, torch.float32, "fp32"),
    ("fp32-entries-3e38-fp32", 3e38, torch.float32, "fp32"),
    ("bf16-entries-3e38-fp32", 3e38, torch.bfloat16, "fp32"),
    ("fp32-entries-1e-30-fp32", 1e-30, torch.float32, "fp32"),
    ("fp32-entries-3e38-fp64", 3e38, torch.float32, "fp64"),
    ("fp64-entries-1e160", 1e160, torch.float64, "fp64"),
    ("fp64-entries-1e300", 1e300, torch.float64, "fp64"),
    ("fp64-entries-1e-170", 1e-170, torch.float64, "fp64"),
    ("fp64-entries-1e160-fp32", 1e160, torch.float64, "fp32"),
]


@pytest.mark.parametrize(("case", "scale", "dtype", "precision"), EDGES, ids=[e[0] for e in EDGES])
def test_entries_near_the_ends_of_floating_point_give_numpys_alpha(tmp_path, case, scale, dtype, precision):
    """The Gram product overflowed (an eigh LinAlgError traceback) or underflowed ("all-zero matrix"):
    the matrix is now scaled by a power of two first, exactly, and the fits use the scaled spectrum."""
    torch.manual_seed(1)
    w = (heavy(96, 64) * scale).to(dtype)
    save_file({"model.layers.0.mlp.up_proj.weight": w}, str(tmp_path / "model.safetensors"))
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "model.safetensors"), "--precision", precision,
                                   "--device", "cpu", "-q", "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "r.json").read_text())["matrices"][0]
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    assert row["status"] == "ok", row
    assert row["alpha"] == pytest.approx(hill_median_from_singular_values(s), abs=1e-4 if precision == "fp32" else 1e-9)
    assert row["spectral_norm"] == pytest.approx(s.max(), rel=1e-5 if precision == "fp32" else 1e-12)
    assert row["log_spectral_norm"] == pytest.approx(2 * np.log10(s.max()), rel=1e-6)


@pytest.mark.parametrize("precision", ["fp64", "fp32"])
@pytest.mark.parametrize("rank", [1, 3])
def test_low_rank_matrices_have_too_few_eigenvalues_in_either_precision(tmp_path, precision, rank):
    """Under fp32 the zero eigenvalues of a rank-1 matrix come out near ε·λ_max: they were counted, and a fit
    reported on round-off. The zero threshold now follows the precision (n·ε in float32)."""
    g = torch.Generator().manual_seed(rank)
    w = torch.randn(96, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, 64, generator=g, dtype=torch.float64)
    save_file({"model.layers.0.mlp.up_proj.weight": w}, str(tmp_path / "model.safetensors"))
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "model.safetensors"), "--precision", precision, "-q",
                                   "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "r.json").read_text())["matrices"][0]
    assert np.linalg.matrix_rank(w.numpy()) == rank
    assert row["n_zero"] == 64 - rank and row["status"] == f"too few non-zero eigenvalues ({rank} < 10)", row


# --- hostile command lines ----------------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def run_with(b: Path, d: Path, name: str, text: str) -> Path:
    """A copy of the base run with `name` replaced by `text`."""
    run = copy(b, d, "run")
    write(run / name, text)
    return run


def jsonl(path: Path, lines: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def parquet_list_column(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [["hello", "world"], ["more", "words"]]}), d / "t.parquet")
    return d / "t.parquet"


def truncated_gz(d: Path) -> Path:
    jsonl(d / "t.jsonl.gz", [json.dumps({"text": "some words " * 50})] * 200, gzip.open)
    data = (d / "t.jsonl.gz").read_bytes()
    (d / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    return d / "t.jsonl.gz"


def corrupt_zst(d: Path) -> Path:
    import zstandard

    raw = zstandard.ZstdCompressor().compress(("\n".join([json.dumps({"text": "words " * 40})] * 300)).encode())
    (d / "t.jsonl.zst").write_bytes(raw[:20] + bytes(64) + raw[84:])
    return d / "t.jsonl.zst"


TOKENIZE = ["--vocab-size", "300", "-q"]
TRAIN = ["--seq-len", "16", "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--eval-every", "2",
         "--eval-windows", "2", "-q"]


def cache_copy(b: Path, d: Path, change=None) -> Path:
    """A copy of a token cache of the base text (made once per base), its manifest edited by `change`."""
    if not (b / "cache" / "manifest.json").exists():
        res = CliRunner().invoke(app, ["tokenize", str(b / "text.txt"), "-o", str(b / "cache"), *TOKENIZE])
        assert res.exit_code == 0, res.output
    cache = copy(b, d, "cache")
    if change is not None:
        edit_json(cache / "manifest.json", change)
    return cache


def shard(i: int = 0, **fields):
    """A manifest edit: fields of shard i replaced."""
    return lambda m: m["shards"][i].update(fields)


def negative_ids(d: Path) -> Path:
    np.save(d / "ids.npy", np.array([5, 7, -1, 9] * 50, dtype=np.int32))
    return d / "ids.npy"


def swapped_tokenizer(b: Path, d: Path) -> Path:
    """The cache's tokenizer.json replaced by a smaller vocabulary's (its ids would wrap past it)."""
    cache = cache_copy(b, d)
    small = d / "small"
    res = CliRunner().invoke(app, ["tokenize", str(b / "text.txt"), "-o", str(small), "--vocab-size", "260", "-q"])
    assert res.exit_code == 0, res.output
    (cache / "tokenizer.json").write_bytes((small / "tokenizer.json").read_bytes())
    import shutil

    shutil.rmtree(small)
    return cache


def truncated_table(b: Path, d: Path) -> Path:
    cache = cache_copy(b, d)
    table = cache / "docs-00000.npy"
    table.write_bytes(table.read_bytes()[:60])
    return cache


def word_level_without_unk(d: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1}))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "wl.json"))
    return d / "wl.json"


def huge_name_map(b: Path, d: Path) -> Path:
    return edit_json(copy(b, d, "wd.json"), lambda m: m["modules"][0].update(name="x" * 50_000_000))


def many_module_map(b: Path, d: Path) -> Path:
    """100,000 entries: their names were checked for repeats one by one against all (quadratic)."""
    def grow(m):
        m["modules"] = [{**m["modules"][0], "name": f"model.layers.{i}.mlp.up_proj.weight"} for i in range(100_000)]
    return edit_json(copy(b, d, "wd.json"), grow)


def safetensors_disk_full(monkeypatch) -> None:
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')
    monkeypatch.setattr("safetensors.torch.save_file", full)


def gguf_bytes(path: Path, kvs: list[bytes], n_tensors: int = 0) -> Path:
    """A GGUF v3 file written by hand: the header, the metadata entries given, no tensors."""
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs))
    return path


def gstr(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def gkv(key: str, kind: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", kind) + payload


ARCH = gkv("general.architecture", 8, gstr("llama"))


def gguf_parts_of_two_models(d: Path) -> Path:
    from gguf import GGMLQuantizationType as T
    from test_gguf import LLAMA_META, LLAMA_NAMES, llama_tensors, write_gguf

    tensors = {LLAMA_NAMES[k]: v for k, v in llama_tensors().items()}
    keys = sorted(tensors)
    for no, arch in enumerate(("llama", "qwen2")):
        meta = (LLAMA_META if no == 0 else {}) | {"split.count": 2, "split.no": no}
        write_gguf(d / f"m-{no + 1:05d}-of-00002.gguf", arch, {k: tensors[k] for k in keys[no::2]}, T.F32, meta)
    return d / "m-00001-of-00002.gguf"


def gguf_more_kv_heads(d: Path) -> Path:
    """phi3 (fused q/k/v, split by the heads its metadata gives) claiming 8 key/value heads for 4 query heads."""
    from gguf import GGMLQuantizationType as T
    from test_gguf import FF, D, write_gguf

    rng = np.random.default_rng(1)
    tensors = {"blk.0.attn_qkv.weight": rng.normal(size=(3 * D, D)), "blk.0.ffn_up.weight": rng.normal(size=(2 * FF, D)),
               "blk.0.ffn_down.weight": rng.normal(size=(D, FF))}
    meta = {"phi3.block_count": 1, "phi3.embedding_length": D, "phi3.attention.head_count": 4,
            "phi3.attention.head_count_kv": 8, "phi3.feed_forward_length": FF}
    write_gguf(d / "m.gguf", "phi3", {k: v.astype(np.float32) for k, v in tensors.items()}, T.F32, meta)
    return d / "m.gguf"


CASES = [
    # outputs that are inputs: the command would overwrite what it reads
    Case("decay-map-o-is-its-input", lambda b, d: ["decay-map", (r := copy(b, d, "results.json")), "-o", r], 2,
         ("results.json", "input")),
    Case("analyze-o-into-the-model", lambda b, d: ["analyze", (m := copy(b, d, "model")), "-o", m / "config.json"], 2,
         ("config.json", "inside")),
    Case("analyze-file-o-its-config", lambda b, d: ["analyze", (m := copy(b, d, "model") / "model.safetensors"),
                                                    "-o", m.parent / "config.json"], 2, ("config.json", "input")),
    Case("analyze-spectra-into-the-model", lambda b, d: ["analyze", (m := copy(b, d, "model")), "--save-spectra",
                                                         m / "s.npz"], 2, ("s.npz", "inside")),
    Case("compare-o-into-a-run", lambda b, d: ["compare", (r := copy(b, d, "run")), "-o", r / "metrics.csv"], 2,
         ("metrics.csv", "inside")),
    Case("compare-plot-into-a-run", lambda b, d: ["compare", (r := copy(b, d, "run")), "--plot", r / "c.png"], 2,
         ("c.png", "inside")),
    # JSON nested past the parser's recursion limit: every JSON file alphaspec reads
    Case("config-nested-deep", lambda b, d: [
        "analyze", write(llama_dir(d) / "config.json", '{"a": ' + nested(100_000) + "}").parent], 1,
         ("config.json", "nested too deeply")),
    Case("index-nested-deep", lambda b, d: [
        "analyze", write(llama_dir(d) / "model.safetensors.index.json", nested(100_000)).parent], 1,
         ("index", "nested too deeply")),
    Case("decay-map-input-nested-deep", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                                      write(d / "wd.json", nested(100_000))], 1, ("wd.json",)),
    Case("results-nested-deep", lambda b, d: ["decay-map", write(d / "r.json", nested(100_000)), "-o", d / "wd.json"],
         1, ("r.json", "nested too deeply")),
    Case("run-json-nested-deep", lambda b, d: ["compare", run_with(b, d, "run.json", nested(100_000)), "-o",
                                               d / "c.csv"], 1, ("run.json", "nested too deeply")),
    # text that is not text, compressed data that is damaged
    Case("jsonl-lone-surrogate", lambda b, d: ["tokenize", jsonl(d / "t.jsonl", ['{"text": "ok words"}',
                                                                                   '{"text": "bad \\ud800 half"}']),
                                               "-o", d / "c", *TOKENIZE], 1, ("t.jsonl:2", "lone surrogate")),
    Case("jsonl-gz-truncated", lambda b, d: ["tokenize", truncated_gz(d), "-o", d / "c", *TOKENIZE], 1,
         ("t.jsonl.gz", "damaged or cut short")),
    Case("jsonl-zst-corrupt", lambda b, d: ["tokenize", corrupt_zst(d), "-o", d / "c", *TOKENIZE], 1,
         ("t.jsonl.zst", "damaged or cut short")),
    Case("jsonl-record-over-64-mi", lambda b, d: ["tokenize", jsonl(d / "t.jsonl", [
        '{"text": "' + "a" * (65 << 20) + '"}']), "-o", d / "c", *TOKENIZE], 1, ("t.jsonl:1", "over 64 Mi characters")),
    Case("parquet-list-column", lambda b, d: ["tokenize", parquet_list_column(d), "-o", d / "c", *TOKENIZE], 1,
         ("t.parquet", "list", "not text")),
    # token caches that name, hold or promise the wrong things: refused before training starts
    Case("cache-shard-outside", lambda b, d: ["train", "--out", d / "r", "--data",
                                              cache_copy(b, d, shard(file="../secret.bin")), *TRAIN], 1,
         ("manifest.json", "../secret.bin", "not a shard file")),
    Case("cache-shard-absolute", lambda b, d: ["train", "--out", d / "r", "--data",
                                               cache_copy(b, d, shard(docs="/etc/passwd")), *TRAIN], 1,
         ("manifest.json", "not a shard file")),
    Case("cache-dtype-float16", lambda b, d: ["train", "--out", d / "r", "--data",
                                              cache_copy(b, d, lambda m: m.update(dtype="float16")), *TRAIN], 1,
         ("manifest.json", "float16")),
    Case("cache-no-token-count", lambda b, d: ["train", "--out", d / "r", "--data",
                                               cache_copy(b, d, lambda m: m.pop("tokens") and None), *TRAIN], 1,
         ("manifest.json", "no tokens")),
    Case("cache-table-truncated", lambda b, d: ["train", "--out", d / "r", "--data", truncated_table(b, d), *TRAIN], 1,
         ("docs-00000.npy", "damaged document table")),
    Case("cache-ends-past-the-shard", lambda b, d: ["train", "--out", d / "r", "--data",
                                                    cache_copy(b, d, shard(tokens=10)), *TRAIN], 1,
         ("tokens-00000.bin", "missing or damaged")),
    Case("cache-ids-past-the-vocabulary", lambda b, d: ["train", "--out", d / "r", "--data",
                                                        cache_copy(b, d, shard(max_id=10**6)), *TRAIN], 1,
         ("tokens-00000.bin", "outside the vocabulary")),
    Case("cache-tokenizer-swapped", lambda b, d: ["train", "--out", d / "r", "--data", swapped_tokenizer(b, d), *TRAIN],
         1, ("tokenizer.json", "replaced")),
    Case("npy-negative-ids", lambda b, d: ["tokenize", negative_ids(d), "--tokenizer", cache_copy(b, d) /
                                           "tokenizer.json", "-o", d / "c", "-q"], 1, ("ids.npy", "negative")),
    # numbers that would hang, exhaust memory or abort the process: refused before the work
    Case("tokenize-workers-a-million", lambda b, d: ["tokenize", write(d / "a.txt", "words " * 300), "-o", d / "c",
                                                     "--workers", "1000000", *TOKENIZE], 2, ("--workers", "1024")),
    Case("tokenize-vocab-1e11", lambda b, d: ["tokenize", write(d / "a.txt", "words " * 300), "-o", d / "c",
                                              "--vocab-size", "100000000000", "-q"], 2, ("--vocab-size",)),
    Case("train-vocab-1e11", lambda b, d: ["train", "--out", d / "r", "--vocab-size", "100000000000", *TRAIN], 2,
         ("--vocab-size",)),
    Case("train-batch-1e9", lambda b, d: ["train", "--out", d / "r", "--data", cache_copy(b, d), "--batch-size",
                                          "1000000000", "--seq-len", "16", "--steps", "2", "--warmup-steps", "1",
                                          "-q"], 1,
         ("--batch-size", "GiB", "--micro-batch")),
    Case("train-lr-1e30", lambda b, d: ["train", "--out", d / "r", "--data", cache_copy(b, d), "--lr", "1e30",
                                        "--log-every", "1", *TRAIN, "--steps", "6"], 1,
         ("became nan", "--lr")),  # the gradient norm, or the loss: whichever is not a number first
    Case("train-disk-full-weights", lambda b, d: ["train", "--out", d / "r", "--data", cache_copy(b, d), *TRAIN], 1,
         ("model.safetensors", "no space left"), patch=safetensors_disk_full),
    Case("tokenizer-word-level-without-unk", lambda b, d: ["tokenize", write(d / "a.txt", "hello world foo " * 300),
                                                           "--tokenizer", word_level_without_unk(d), "-o", d / "c",
                                                           "-q"], 1, ("a.txt", "cannot encode", "[UNK]")),
    Case("decay-map-huge-name", lambda b, d: ["train", "--out", d / "r", "--decay-map", huge_name_map(b, d), *TRAIN], 1,
         ("wd.json", "50,000,000 characters")),
    Case("decay-map-100k-modules", lambda b, d: ["train", "--out", d / "r", "--decay-map", many_module_map(b, d),
                                                 *TRAIN], 1, ("wd.json",)),
    Case("hf-dir-not-a-dataset", lambda b, d: ["tokenize", f"hf:{(d / 'x').mkdir() or d / 'x'}", "-o", d / "c",
                                               "-q"], 1, ("not a dataset saved with save_to_disk",)),
    # GGUF headers that claim more than the file holds: refused from the header alone, in bounded memory
    Case("gguf-array-of-2-60-strings", lambda b, d: ["analyze", gguf_bytes(d / "m.gguf", [
        ARCH, gkv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**60))])], 1,
         ("m.gguf", "1,152,921,504,606,846,976 array elements")),
    Case("gguf-array-of-2-60-floats", lambda b, d: ["analyze", gguf_bytes(d / "m.gguf", [
        ARCH, gkv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 2**60))])], 1, ("m.gguf", "array elements")),
    Case("gguf-2-60-metadata-entries", lambda b, d: ["analyze", write(d / "m.gguf", b"GGUF" + struct.pack(
        "<IQQ", 3, 0, 2**60) + ARCH)], 1, ("m.gguf", "metadata entries")),
    Case("gguf-string-past-the-end", lambda b, d: ["analyze", gguf_bytes(d / "m.gguf", [
        gkv("general.architecture", 8, struct.pack("<Q", 10**15) + b"llama")])], 1, ("m.gguf", "past the end")),
    Case("gguf-split-count-1e12", lambda b, d: ["analyze", gguf_bytes(d / "m-00001-of-00002.gguf", [
        ARCH, gkv("split.count", 10, struct.pack("<Q", 10**12))])], 1,
         ("m-00001-of-00002.gguf", "1,000,000,000,000 split files")),
    Case("gguf-parts-of-two-models", lambda b, d: ["analyze", gguf_parts_of_two_models(d)], 1,
         ("m-00002-of-00002.gguf", "not part 2 of the same model")),
    Case("gguf-more-kv-heads-than-heads", lambda b, d: ["analyze", gguf_more_kv_heads(d)], 1,
         ("m.gguf", "not a multiple of 8 key/value heads")),
    Case("same-file-twice", lambda b, d: ["tokenize", write(d / "a.txt", "some text " * 300), d / "." / "a.txt",
                                          "-o", d / "c", *TOKENIZE], 1, ("a.txt", "given twice")),
]


def test_the_second_battery_has_its_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_second_battery(case, base, tmp_path, monkeypatch):  # noqa: F811 - base is test_hostile's fixture
    check_case(case, base, tmp_path, monkeypatch)


def test_a_jsonl_file_with_a_byte_order_mark_is_read(tmp_path):
    """A UTF-8 byte-order mark (as Windows editors write) was refused as a bad first record."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps({"text": f"words of line {i} " * 20})
                                                  for i in range(50)).encode())
    res = CliRunner().invoke(app, ["tokenize", str(path), "-o", str(tmp_path / "c"), *TOKENIZE])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["documents"] == 50


def test_tokenizing_a_directory_into_itself_twice_reads_only_the_data(base, tmp_path):  # noqa: F811
    """`tokenize data/ -o data/cache` failed the second time: its own shards had become sources."""
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "a.txt", (base / "text.txt").read_text()[:20_000])
    argv = ["tokenize", str(tmp_path / "data"), "-o", str(tmp_path / "data" / "cache"), *TOKENIZE]
    for _ in range(2):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "data" / "cache" / "manifest.json").read_text())
    assert [Path(s[0]).name for s in manifest["key"]["sources"]] == ["a.txt"] or len(manifest["key"]["sources"]) == 1


def test_two_tokenize_runs_into_one_cache_exactly_one_writes(tmp_path):
    """Two tokenize runs with different data into one directory both exited 0 and could leave a mixed cache
    (the manifest is written after the BPE is trained, so the second saw an empty directory). The cache is
    locked as run directories are: while one tokenize holds it, another says so and changes nothing."""
    from alphaspec.train.cache import LOCK
    from alphaspec.train.rundir import exclusive_lock

    (tmp_path / "c").mkdir()
    held = exclusive_lock(tmp_path / "c" / LOCK, RuntimeError("held"))  # what a running tokenize holds
    try:
        other = write(tmp_path / "other.txt", "other words " * 2000)
        env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"}
        res = subprocess.run([sys.executable, "-m", "alphaspec", "tokenize", str(other), "-o", str(tmp_path / "c"),
                              "--vocab-size", "300", "-q"], capture_output=True, text=True, env=env, timeout=120)
    finally:
        held.close()
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "another alphaspec tokenize is writing this cache" in lines[0]
    assert [p.name for p in (tmp_path / "c").iterdir()] == [LOCK]


def test_a_million_string_vocabulary_is_skipped_in_bounded_memory(tmp_path):
    """gguf's reader decoded every metadata value: a 3-million-string vocabulary cost 4.9 GB to skip. The
    header reader walks such an array one length at a time and keeps nothing of it (a million here)."""
    import tracemalloc

    from alphaspec.sources.gguf_header import GGUFHeader

    n = 1_000_000
    strings = b"".join(struct.pack("<Q", 6) + b"tok%03d" % (i % 1000) for i in range(n))
    gguf_bytes(tmp_path / "m.gguf", [ARCH, gkv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, n) + strings),
                                     gkv("llama.block_count", 4, struct.pack("<I", 2))])
    del strings
    tracemalloc.start()
    started = time.perf_counter()
    header = GGUFHeader(tmp_path / "m.gguf")
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert header.fields == {"general.architecture": "llama", "tokenizer.ggml.tokens": None, "llama.block_count": 2}
    assert peak < 1 << 20 and seconds < 30, (peak, seconds)


@pytest.mark.parametrize(("count", "side"), [
    pytest.param(12_000, 16, id="12k-16x16"),
    pytest.param(40_000, 2, id="40k-2x2-experts", marks=pytest.mark.slow),
])
def test_many_tiny_matrices_are_analysed_in_bounded_time(tmp_path, count, side):
    """One solve per matrix cost over two minutes for 100,000 16x16 matrices (per-matrix overhead); small
    matrices are now solved in batches, two fits each (the table's and alpha_gof, from one KS scan): ~11 s
    for 12,000 on a 2-core box (8 s for 40,000 2x2), so within 30 s (no more than the start-up and 1.5 ms a
    matrix). Each row is checked against numpy's eigenvalues for a sample of the matrices."""
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(count, side, side, generator=g)
    names = [f"model.layers.{i // 1000}.mlp.experts.{i % 1000}.w" for i in range(count)]
    (tmp_path / "m").mkdir()
    save_file(dict(zip(names, weights.unbind(0), strict=True)), str(tmp_path / "m" / "model.safetensors"))
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "alphaspec", "analyze", str(tmp_path / "m"), "--device", "cpu", "-q",
                          "-o", str(tmp_path / "r.parquet")], capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - started
    assert res.returncode == 0, res.stderr
    assert seconds < 30, seconds
    import pandas as pd

    table = pd.read_parquet(tmp_path / "r.parquet").set_index("name")
    assert len(table) == count
    for i in (0, count // 2, count - 1):
        s = np.linalg.svd(weights[i].double().numpy(), compute_uv=False)
        assert table.loc[names[i], "spectral_norm"] == pytest.approx(s.max(), rel=1e-10)


# --- interruptions and pipes --------------------------------------------------------------------------------------------


def test_sigterm_ends_a_command_with_one_line_saying_what_it_left(tmp_path):
    """SIGTERM (a scheduler's) killed the process without a word; it now ends like Ctrl-C, with cleanup."""
    text = tmp_path / "t.txt"
    text.write_text("a few words to train on. " * 400_000)
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "alphaspec", "tokenize", str(text), "-o", str(tmp_path / "c"),
                             "--vocab-size", "5000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 120  # ready when it holds the cache's lock: a busy machine may take a while
    while not (tmp_path / "c" / ".lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143, err
    assert lines[-1].startswith("error: terminated (SIGTERM)") and "Traceback" not in err, err
    assert "continues from the last one" in lines[-1]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_sigterm_of_train_says_whether_a_checkpoint_is_left(tmp_path, checkpointed):
    """The line said "the run keeps its last checkpoint" also when none had been written yet."""
    run = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "alphaspec", "train", "--out", str(run), "--steps", "100000",
                             "--checkpoint-every", "1" if checkpointed else "100000", "--eval-every", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    ready = (lambda: any((run / "checkpoints").glob("step_*.pt"))) if checkpointed else \
        (lambda: (run / "metrics.csv").exists())
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143 and lines[-1].startswith("error: terminated (SIGTERM)"), err
    if checkpointed:
        assert "keeps its last checkpoint" in lines[-1] and "--resume" in lines[-1], lines[-1]
    else:
        assert "no checkpoint was written yet" in lines[-1], lines[-1]


STARTING = """
import builtins, os, signal, sys
sys.argv = ["alphaspec", "analyze", "example:minilm"]
real = builtins.__import__
def spy(name, *args, **kwargs):  # SIGTERM arrives while the command line is still loading
    if name == "alphaspec.cli":
        os.kill(os.getpid(), signal.SIGTERM)
    return real(name, *args, **kwargs)
builtins.__import__ = spy
from alphaspec._entry import main
main()
"""


def test_sigterm_while_starting_is_one_line_too():
    """A SIGTERM before the command's own handler (while torch and the command line load) ended the process
    with -15 and no word; the entry point answers it from its first instruction."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", STARTING], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 143 and lines == [
        "error: terminated (SIGTERM) before the command started its work: nothing was written"], proc.stderr


def test_a_closed_pipe_ends_quietly_as_sigpipe_would(tmp_path):
    """`alphaspec analyze m | head -1` exited 1 without a word: a reader that leaves is not an error."""
    model = synth.write(tmp_path / "m", synth.llama(layers=8), synth.LLAMA_CONFIG)
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m alphaspec analyze {model} | head -1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode in (0, 141), (res.returncode, res.stderr)
    assert "error" not in res.stderr and "Traceback" not in res.stderr, res.stderr
