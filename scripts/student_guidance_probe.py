"""Why a one-row student misses the guidance shift: what a head reaches without guidance rows.

On held-out teacher-forced conditions [c, u] (u: the transformer's output for the empty caption over
the same history) it reports, against the guided 50-step teacher (energy distance, and the share of
the guidance mean shift reproduced, eval/head_quality.guidance_capture):
  - the teacher with other seeds (the floor) and the respaced guided teacher at the student's counts;
  - the teacher's network run with ONE row on u + cfg_scale (c - u): guidance in the condition, true u;
  - the same with u predicted from c by an MLP fitted on training conditions (all a one-row head has);
  - the bundle's student at each of its step counts.
docs/student.md (the distillation page) quotes its numbers (embedded model, synthetic data):

    python scripts/student_guidance_probe.py --data data/synth --latents runs/latents
"""
from __future__ import annotations

import argparse

import torch


def fit_uncond_predictor(pairs: torch.Tensor, steps: int = 3000, hidden: int = 512, seed: int = 0):
    """An MLP c -> u fitted (MSE, Adam) on training pairs (N, 2, E): the best a head that sees only c
    can know of u."""
    torch.manual_seed(seed)
    E = pairs.shape[-1]
    net = torch.nn.Sequential(torch.nn.Linear(E, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.SiLU(), torch.nn.Linear(hidden, E))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(steps):
        idx = torch.randint(len(pairs), (256,))
        loss = ((net(pairs[idx, 0]) - pairs[idx, 1]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return lambda c: net(c).detach()


def main(argv=None) -> int:
    from motionstreamer.cli import CLIError, check_positive

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a bundle with a student head (default: the embedded model)")
    ap.add_argument("--data", required=True, help="HumanML3D-272 layout folder (train and test splits)")
    ap.add_argument("--latents", required=True, help="per-clip latents of that dataset (encode-latents)")
    ap.add_argument("--conditions", type=int, default=32, help="held-out test conditions")
    ap.add_argument("--samples", type=int, default=512, help="samples per condition and sampler")
    ap.add_argument("--train-pairs", type=int, default=8192, help="training conditions the u-predictor is fitted on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        check_positive(args, "conditions", "train_pairs")
        if args.samples < 2:
            raise CLIError(f"--samples must be >= 2, got {args.samples}")
        probe(args)
    except (CLIError, ValueError, FileNotFoundError) as e:   # bad flags, bundle or dataset: one line
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    return 0


def probe(args) -> None:
    from motionstreamer.eval import head_quality as H
    from motionstreamer.runtime.loading import load_models
    from motionstreamer.train.distill import teacher_forced_conditions
    from motionstreamer.train.t2m import embed_captions, load_latent_examples

    torch.set_grad_enabled(False)
    bundle, enc, desc = load_models(args.checkpoint, "cpu", "fp32")
    if bundle.student is None:
        raise ValueError(f"{desc} has no student head")

    def conditions(split: str, count: int) -> torch.Tensor:
        ex = load_latent_examples(args.latents, args.data, split)
        return teacher_forced_conditions(bundle.t2m, ex, embed_captions(ex, enc), count=count, seed=args.seed)

    test = conditions("test", args.conditions)
    with torch.enable_grad():
        predict_u = fit_uncond_predictor(conditions("train", args.train_pairs), seed=args.seed)
    sc = bundle.student.student_config
    cfg_scale, skip, diff, n = sc.teacher_cfg_scale, sc.teacher_skip_terminal_step, bundle.t2m.diff_loss, args.samples
    gen = lambda k: torch.Generator().manual_seed(args.seed * 1000 + k)
    guided = H.teacher_sampler(diff, cfg_scale, 50, skip)(test, n, gen(0))
    guided_mean = guided.mean(dim=1)
    unguided_mean = H.teacher_sampler(diff, 1.0, 50, skip)(test, n, gen(1)).mean(dim=1)
    candidates = {"teacher, other seeds (floor)": H.teacher_sampler(diff, cfg_scale, 50, skip)}
    for k in (50, max(sc.steps)):
        candidates[f"one row on u + cfg_scale (c - u), true u, {k} steps"] = \
            H.extrapolated_sampler(diff, cfg_scale, k, skip)
        candidates[f"one row on u + cfg_scale (c - u), u predicted from c, {k} steps"] = \
            H.extrapolated_sampler(diff, cfg_scale, k, skip, predict_u)
    for k in sc.steps:
        candidates[f"respaced guided teacher, {k} steps (2 rows)"] = H.teacher_sampler(diff, cfg_scale, k, skip)
        candidates[f"student, {k} steps"] = H.student_sampler(bundle.student, k)
    print(f"{args.conditions} held-out conditions x {n} samples; "
          f"reference: the guided teacher, cfg_scale {cfg_scale}, 50 steps")
    print(f"{'sampler':58s} energy distance      guidance captured")
    for j, (name, sampler) in enumerate(candidates.items()):
        s = sampler(test, n, gen(10 + j))
        e = H.mean_ci(H.energy_distance(s, guided))   # unbiased: the floor scatters around 0
        print(f"{name:58s} {e['mean']:7.3f} ± {e['ci95']:.3f}   "
              f"{H.guidance_capture(s, guided_mean, unguided_mean):6.2f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
