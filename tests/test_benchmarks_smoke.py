"""`make bench`'s table without timing anything: tests/benchmarks/bench_all.py renders canned reports of its five
steps (the shapes their scripts write), judges the issue-26 targets, and rewrites only the marked sections of
the docs. The benchmarks themselves run by hand on an idle machine."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_ALL = Path(__file__).resolve().parent / "benchmarks" / "bench_all.py"


@pytest.fixture(scope="module")
def ba():
    spec = importlib.util.spec_from_file_location("bench_all_under_test", BENCH_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def canned() -> dict:
    """Merged results as bench_all writes them; each report in the format of its script."""
    train = {"torch": "2.x", "threads": 2, "gradients": {},
             "speed cifar@32px": {"batch": 64, "batch_gpu": 32, "iters_per_block": 2,
                                  "sec_per_kimg": {"official": [800.0, 760.0], "ours": [500.0, 480.0],
                                                   "ours_bf16": [300.0, 310.0]},
                                  "speedup_median ours": 1.6, "speedup_median ours_bf16": 2.55},
             "speed auto@64px": {"batch": 32, "batch_gpu": 32, "iters_per_block": 2,
                                 "sec_per_kimg": {"official": [900.0, 910.0], "ours": [700.0, 690.0],
                                                  "ours_bf16": [400.0, 420.0]},
                                 "speedup_median ours": 1.3, "speedup_median ours_bf16": 2.2}}
    d_case = {"cfg": "cifar", "resolution": 32, "c_dim": 10, "batch": 8, "baseline": "official_fp32",
              "img_s": {"official_fp32": 40.0, "ours_fp32": 64.0, "ours_bf16": 100.0},
              "speedup": {"ours_fp32": 1.6, "ours_bf16": 2.5},
              "parity_fp32_vs_official": {"logits_max_abs": 0.0, "dimg_max_abs": 1e-7, "param_grad_max_abs": 2e-6},
              "bf16_vs_ours_fp32": {"param_grad_rel_l2": 0.013}}
    inference = {"cases": [{"resolution": 128, "baseline": "official_fp32",
                            "batch1": {"img_s": {"official_fp32": 6.0, "ours_fp32": 6.6, "ours_bf16": 9.0,
                                                 "onnxruntime_fp32": 8.0}},
                            "batch8": {"img_s": {"official_fp32": 3.0, "ours_fp32": 4.5, "ours_bf16": 12.0,
                                                 "onnxruntime_fp32": 7.5, "openvino_fp32": 9.0,
                                                 "openvino_bf16": 15.0}}}]}
    prepare = {"cpu_count": 2, "results": [{"images": 2000, "speedup": 2.6,
                                            "ours": {"seconds": 6.5, "peak_rss_mib": 120.0, "peak_tree_rss_mib": 200.0},
                                            "official": {"seconds": 17.0, "peak_rss_mib": 90.0,
                                                         "peak_tree_rss_mib": 90.0}}]}
    serve_rows = []
    for backend, (u, b) in {"onnx": (100.0, 180.0), "bf16": (50.0, 60.0)}.items():
        for mode, rate in (("unbatched", u), ("batched", b)):
            for clients in (1, 16):
                serve_rows.append({"backend": backend, "mode": mode, "clients": clients, "images_per_s": rate,
                                   "p50_ms": 10.0, "p99_ms": 40.0, "errors": 0, "mean_batch": 4.0})
    steps = {"train": train, "d": {"cases": {"cifar@32": d_case}}, "inference": inference, "prepare": prepare,
             "serve": {"rows": serve_rows}}
    return {"meta": {"date": "2026-01-02T03:04:05+00:00", "quick": False, "smoke": False, "loadavg_start": [0.1] * 3,
                     "machine": {"cpu": "Test CPU", "cores": 2, "features": ["AMX-BF16"]},
                     "command": "python tests/benchmarks/bench_all.py --official-repo X"},
            "steps": {k: {"report": v, "finished": "2026-01-02T03:30:00+00:00"} for k, v in steps.items()}}


def cells(table: str, benchmark: str) -> list[str]:
    for line in table.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts[0] == benchmark:
            return parts
    raise AssertionError(f"no row {benchmark!r} in\n{table}")


def test_one_table_with_every_ratio_and_its_target(ba):
    out = ba.render(canned())
    assert "2026-01-02" in out and "Test CPU" in out and "2 cores" in out and "--official-repo X" in out
    assert cells(out, "training cifar 32 px, fp32")[1:] == [
        "1.60x", "490 vs 780 sec/kimg, batch 64, median of 2 block(s) of 2 iteration(s)", "≥ 1.5x", "yes"]
    assert cells(out, "training cifar 32 px, bf16")[3:] == ["≥ 2.5x", "yes"]
    assert cells(out, "training auto 64 px, fp32")[4] == "**no**"
    assert cells(out, "D fwd+bwd cifar 32 px, fp32")[1] == "1.60x"
    assert cells(out, "D fwd+bwd cifar 32 px, bf16")[3:] == ["≥ 3.0x", "**no**"]
    g = cells(out, "G inference 128 px, batch 8")
    assert g[1] == "ours fp32 1.50x · ours bf16 4.00x · onnxruntime 2.50x · OpenVINO fp32 3.00x · OpenVINO bf16 5.00x"
    assert g[3:] == ["—", "—"]
    p = cells(out, "prepare 2,000 photos → 256 px")
    assert p[1] == "2.60x" and "peak RSS 120 MiB" in p[2] and p[4] == "**no**"  # fast enough, too much memory
    assert cells(out, "serve 16 clients, onnxruntime fp32: batched / unbatched")[1:2] + \
        cells(out, "serve 16 clients, onnxruntime fp32: batched / unbatched")[4:] == ["1.80x", "yes"]
    assert cells(out, "serve 16 clients, eager bf16: batched / unbatched")[4] == "**no**"
    assert "Not in this table" not in out


def test_missing_and_failed_steps_are_named_under_the_table(ba):
    results = canned()
    del results["steps"]["serve"]
    results["steps"]["train"] = {"error": "exit status 1; boom"}
    results["steps"]["prepare"]["report"] = {"results": [{"images": 5}]}  # a report that does not parse
    out = ba.render(results)
    assert "serve: not run" in out and "train: failed (exit status 1; boom)" in out
    assert "prepare: report not understood" in out
    assert "D fwd+bwd cifar 32 px, fp32" in out


def test_sections_between_the_markers_are_replaced_and_nothing_else(ba):
    text = ("# Page\n\nbefore\n\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\n\nmiddle\n\n"
            "<!-- bench:begin summary -->\nold\n<!-- bench:end -->\nafter\n")
    new, count = ba.replace_sections(text, canned())
    assert count == 2
    assert new.startswith("# Page\n\nbefore\n\n<!-- bench:begin -->\n") and new.endswith("<!-- bench:end -->\nafter\n")
    assert "old table" not in new and "\nmiddle\n" in new
    full, summary = new.split("<!-- bench:begin summary -->")
    assert "sec/kimg" in full and "sec/kimg" not in summary  # the short form has no figures column
    assert "training cifar 32 px, bf16" in summary and "G inference 128 px, batch 8" in summary
    assert "G inference 128 px, batch 1" not in summary
    assert ba.replace_sections(new, canned()) == (new, 2)  # idempotent
    with pytest.raises(ValueError, match="no <!-- bench:end -->"):
        ba.replace_sections("<!-- bench:begin -->\nunterminated", canned())


def test_from_json_writes_the_docs_and_refuses_smoke_results(ba, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("intro\n<!-- bench:begin -->\n<!-- bench:end -->\n")
    saved = tmp_path / "all.json"
    saved.write_text(json.dumps(canned()))
    argv = ["bench_all.py", "--from-json", str(saved), "--write-docs", "--docs", str(doc)]
    monkeypatch.setattr(sys, "argv", argv)
    assert ba.main() == 0
    assert "| training cifar 32 px, fp32 | 1.60x |" in capsys.readouterr().out
    assert "| training cifar 32 px, fp32 | 1.60x |" in doc.read_text() and doc.read_text().startswith("intro\n")

    smoke = copy.deepcopy(canned())
    smoke["meta"]["smoke"] = True
    saved.write_text(json.dumps(smoke))
    before = doc.read_text()
    assert ba.main() == 1
    assert doc.read_text() == before


def test_step_commands_merge_flags_and_read_reports(ba):
    assert ba.merge_flags(["--rounds", "3", "--fast", "--x", "1"], ["--rounds", "1", "--y=2"]) == \
        ["--rounds", "1", "--fast", "--x", "1", "--y", "2"]
    text = '{"images": 20}\nprogress\n{\n  "cpu_count": 2,\n  "results": []\n}\n'
    assert ba.last_json(text) == {"cpu_count": 2, "results": []}
    with pytest.raises(ValueError):
        ba.last_json("no json here\n")


def test_steps_kept_from_an_earlier_run_name_that_run(ba):
    results = canned()
    for step, entry in results["steps"].items():
        entry["run_by"] = results["meta"]["command"] if step != "prepare" else "python bench_all.py --only prepare"
    out = ba.render(results)
    assert "Kept from an earlier run, prepare: `python bench_all.py --only prepare`." in out
