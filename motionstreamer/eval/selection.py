"""Choosing a distilled student by what a user sees: the end-to-end metrics of the motion it streams
(`evaluate t2m` and `evaluate stream`), against its teacher's, not a head-level distance (which does
not predict them: docs/student.md).

StudentSelector(bundle, evaluator, ...)(student) streams the evaluation prompts with the student, and
scores how far it is from the teacher on the three acceptance criteria, each in units of its
tolerance: R@3 and FID of `evaluate t2m` (tolerances about the teacher's 95% CI over repeats) and
R@3 of `evaluate stream` (0.05). score = the worst of the three; <= 1 means every criterion is within
its tolerance of the teacher. The teacher is measured once, with the same evaluation draws.
"""
from __future__ import annotations

import dataclasses

from motionstreamer.checkpoints import bundle_config_of
from motionstreamer.data.humanml3d import load_mean_std
from motionstreamer.eval import protocols as P
from motionstreamer.runtime.engine import GenerationConfig

# the teacher's 95% CIs over 3 repeats on the embedded model (R@3, FID of evaluate t2m) and the stream
# R@3 margin of the acceptance bar (docs/student.md)
TOLERANCES = {"t2m_r3": 0.04, "t2m_fid": 0.25, "stream_r3": 0.05}


def with_student(bundle, student):
    """The bundle with `student` as its few-step head (config.json's student_head follows)."""
    config = dataclasses.replace(bundle_config_of(bundle), student_head=student.student_config)
    return dataclasses.replace(bundle, student=student, config=config)


class StudentSelector:
    """bundle: the teacher bundle (its evaluator: `evaluator`, a models.evaluator.TMREvaluator); data:
    a HumanML3D-272 layout folder (split `split` is scored); stream_data: a BABEL-stream folder (split
    `stream_split`), optional; mean_std: the statistics folder (default DATA/mean_std)."""

    def __init__(self, bundle, text_encoder, evaluator, data, stream_data=None, split: str = "val",
                 stream_split: str = "val", mean_std=None, repeats: int = 1, batch: int = 32, seed: int = 0,
                 teacher: dict | None = None, tolerances: dict | None = None):
        self.bundle, self.text_encoder, self.evaluator = bundle, text_encoder, evaluator
        self.evalset = P.EvalSet.load(data, split, mean_std_dir=mean_std)
        self.mean, self.std = load_mean_std(mean_std or f"{data}/mean_std")
        self.cases = P.load_stream_cases(stream_data, stream_split, mean=self.mean, std=self.std) \
            if stream_data is not None else None
        self.kw = {"repeats": repeats, "batch": batch, "seed": seed}
        self.tolerances = {**TOLERANCES, **(tolerances or {})}
        self.teacher = teacher if teacher is not None else self.metrics(bundle, GenerationConfig(head="teacher"))

    def metrics(self, bundle, config: GenerationConfig) -> dict:
        """{t2m_r3, t2m_fid[, stream_r3]} of a bundle sampled as `config` says (means over repeats)."""
        res = P.evaluate_t2m(self.evaluator, self.evalset, P.runtime_generator(bundle, self.text_encoder, config),
                             **self.kw).summary()
        out = {"t2m_r3": res["r_precision_top3"]["mean"], "t2m_fid": res["fid"]["mean"]}
        if self.cases is not None:
            s = P.evaluate_stream(self.evaluator, self.cases,
                                  P.runtime_stream_generator(bundle, self.text_encoder, config), self.mean, self.std,
                                  **self.kw).summary()
            out["stream_r3"] = s["r_precision_top3"]["mean"]
        return out

    def gaps(self, metrics: dict) -> dict:
        """How far each criterion is below the teacher, in units of its tolerance (<= 0: as good)."""
        t, tol = self.teacher, self.tolerances
        out = {"t2m_r3": (t["t2m_r3"] - metrics["t2m_r3"]) / tol["t2m_r3"],
               "t2m_fid": (metrics["t2m_fid"] - t["t2m_fid"]) / tol["t2m_fid"]}
        if "stream_r3" in metrics:
            out["stream_r3"] = (t["stream_r3"] - metrics["stream_r3"]) / tol["stream_r3"]
        return out

    def __call__(self, student, steps: int | None = None) -> dict:
        """The student's metrics at `steps` (default: its default count), its gaps, and the score."""
        m = self.metrics(with_student(self.bundle, student), GenerationConfig(head="student", sampling_steps=steps))
        gaps = self.gaps(m)
        return {"metrics": m, "teacher": self.teacher, "gaps": gaps, "score": max(gaps.values())}
