"""The benchmark suite runs end to end (CI-sized), so it cannot rot."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_quick_run_writes_json_and_table(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    data = json.loads(files[0].read_text())
    assert {"device", "torch", "git_commit", "config"} <= set(data["info"])
    cases = {row["case"] for row in data["results"]}
    assert any(c.startswith("stream_b1") for c in cases) and any(c.startswith("throughput") for c in cases)
    stream = next(r for r in data["results"] if r["case"].startswith("stream_b1"))
    for k in ("baseline_ms_per_latent", "engine_ms_per_latent"):
        assert {"min", "median", "max"} <= set(stream[k]) and stream[k]["median"] > 0
    assert all("error" not in row for row in data["results"]), data["results"]
    assert "| case |" in files[0].with_suffix(".md").read_text()


def test_goal_benchmark_times_both_streams_in_one_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cases", "goals",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["results"]
    assert any(row["case"].startswith("goals_random_goal_model") for row in rows)
    for row in rows:
        assert row["ms_per_latent_text_only"] > 0 and row["ms_per_latent_with_goal"] > 0
        assert row["goal_cost_ratio"] == row["ms_per_latent_with_goal"] / row["ms_per_latent_text_only"]


def test_student_benchmark_times_teacher_and_both_students_in_one_run(tmp_path):
    """--cases student: the teacher, the one-row student and the guided student (two KV rows per stream)
    in PyTorch and ONNX Runtime fp32/int8, in one run."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cases", "student",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = {row["case"]: row for row in data["results"]}
    for runtime in ("torch", "ort_fp32", "ort_int8"):
        got = {k: rows[f"student_b1_{runtime}_{k}"]["kv_rows_per_stream"] for k in ("teacher4", "student1", "guided4")}
        assert got == {"teacher4": 2, "student1": 1, "guided4": 2}, (runtime, got)
        assert all(rows[f"student_b1_{runtime}_{k}"]["ms_per_latent"]["median"] > 0 for k in got)


def test_embedded_benchmark_times_the_shipped_model_in_torch_and_onnxruntime(tmp_path):
    """--cases embedded: the embedded teacher and its default student, in PyTorch and through the fp32 and
    int8 exports (what `generate --onnx` runs), in one run; speed-ups against the teacher in the same runtime."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cases", "embedded",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["case"]: row for row in json.loads(next(tmp_path.glob("*.json")).read_text())["results"]}
    for suffix, runtime in (("", "torch"), ("_ort_fp32", "ort_fp32"), ("_ort_int8", "ort_int8")):
        teacher, student = rows[f"embedded_model_steps4{suffix}"], rows[f"embedded_model_default_student4{suffix}"]
        assert (teacher["runtime"], teacher["head"], teacher["kv_rows_per_stream"]) == (runtime, "teacher", 2)
        assert (student["runtime"], student["head"], student["kv_rows_per_stream"]) == (runtime, "student", 2)
        assert student["engine_ms_per_latent"]["median"] > 0 and teacher["first_frame_ms"]["median"] > 0


def test_student_variants_pick_the_rows_and_reject_unknown_names(tmp_path):
    base = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--cases", "student", "--no-onnx",
            "--out", str(tmp_path)]
    r = subprocess.run(base + ["--student-variants", "guided4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cases = {row["case"] for row in json.loads(next(tmp_path.glob("*.json")).read_text())["results"]}
    assert cases == {"student_b1_torch_guided4", "student_b4_torch_guided4"}
    r = subprocess.run(base + ["--student-variants", "guided4,guided3"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "unknown ['guided3']" in r.stderr
