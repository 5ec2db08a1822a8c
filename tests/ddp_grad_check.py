"""One training step of the text-to-motion objective (Two-Forward on, text dropout, stream history,
padding) on a FIXED global batch of 4 rows, through the project's train_loop, in float64.

    python -m torch.distributed.run --nproc_per_node 2 --master_port P tests/ddp_grad_check.py OUT
        each of the 2 ranks takes its half of the rows; DDP averages the gradients
    python tests/ddp_grad_check.py OUT [START STOP]
        one process, rows [START, STOP) (default: all 4)

Writes OUT/rank<r>.pt = {"grads", "params", "losses", "rows"}. The batch carries explicit per-position
diffusion t/noise (draw_diffusion_noise), so each row's loss is a pure function of the row; every
row has the same number of target latents (8), so the mean over the full batch equals the average of
the two halves' means, which is what DDP computes. tests/test_train_ddp.py compares the results.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakes import FakeTextEncoder  # noqa: E402
from train_tiny import tiny_t2m  # noqa: E402

GLOBAL_BATCH = 4
OBJECTIVE_STEP, TOTAL_STEPS = 5, 10      # Two-Forward replaces half of the positions


def fixed_batch():
    from motionstreamer.train.t2m import (
        LatentExample,
        LatentTextData,
        T2MTrainConfig,
        draw_diffusion_noise,
        embed_captions,
    )

    rng = np.random.default_rng(0)
    # 8 target latents in every row; histories of 0, 2, 4 latents make rows of different lengths (padding)
    examples = [LatentExample(f"caption {i}", rng.standard_normal((2 * (i % 3), 16)).astype(np.float32),
                              rng.standard_normal((8, 16)).astype(np.float32), edge_drop=False) for i in range(6)]
    config = T2MTrainConfig(text_dropout=0.5, drop_edge_prob=0.0, diffmlps_batch_mul=2)
    emb = embed_captions(examples, FakeTextEncoder())
    g = torch.Generator().manual_seed(1)
    batch = LatentTextData(examples, emb, config).sample_batch(g, GLOBAL_BATCH)
    return draw_diffusion_noise(batch, config.diffmlps_batch_mul, 50, g), config


def run(out: Path, rows: tuple[int, int] | None = None) -> dict:
    from motionstreamer.train.common import setup_distributed, train_loop
    from motionstreamer.train.t2m import T2MTrainConfig, TwoForwardObjective, split_batch_rows

    torch.set_num_threads(1)
    env = setup_distributed("cpu")
    batch, data_cfg = fixed_batch()
    if env.world_size > 1:
        n = GLOBAL_BATCH // env.world_size
        rows = (env.rank * n, env.rank * n + n)
    rows = rows or (0, GLOBAL_BATCH)
    model = tiny_t2m(seed=0).double()
    objective = TwoForwardObjective(model, TOTAL_STEPS, data_cfg.diffmlps_batch_mul, two_forward=True)
    config = T2MTrainConfig(out_dir=str(out / f"run_w{env.world_size}_{rows[0]}_{rows[1]}"), steps=1,
                         batch_size=(rows[1] - rows[0]) * env.world_size, lr=1e-3, grad_clip=None,
                         save_every=100, progress=False, tensorboard=False, device="cpu")

    def sample_batch(gen, local_batch):
        assert local_batch == rows[1] - rows[0]
        return split_batch_rows(batch, *rows)

    res = train_loop(objective, config, sample_batch, lambda m, b, step: m(b, OBJECTIVE_STEP), name="t2m", dist_env=env)
    result = {"grads": {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None},
              "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
              "losses": res.losses, "rows": list(rows), "world_size": env.world_size}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{env.rank}.pt")
    if env.world_size > 1:
        from motionstreamer.train.common import cleanup_distributed
        cleanup_distributed()
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rows = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) == 4 else None
    run(out, rows)
