"""Streaming TAE decode: a per-layer state of the last (k-1)*dilation inputs makes any chunking of
a latent sequence give the frames of one full decode (fp32, within 1e-5); rows of a batch restart
independently; every conv (full and streamed) goes through the one backend switch."""
import pytest
import torch

from motionstreamer.models.tae import CausalHumanTAE, TAEConfig

ATOL = 1e-5


def stream(tae, z, chunks, state=None):
    state = state if state is not None else tae.init_decode_state(z.shape[0])
    out, i = [], 0
    for n in chunks:
        out.append(tae.decode_step(z[:, i:i + n], state))
        assert out[-1].shape == (z.shape[0], 4 * n, tae.config.in_dim)
        i += n
    assert i == z.shape[1]
    return torch.cat(out, dim=1), state


def random_chunks(total, gen):
    chunks = []
    while sum(chunks) < total:
        chunks.append(min(int(torch.randint(1, 6, (1,), generator=gen)), total - sum(chunks)))
    return chunks


@pytest.fixture(scope="module")
def small_tae():
    torch.manual_seed(0)
    return CausalHumanTAE(TAEConfig.small(48)).eval()


@pytest.mark.parametrize("chunking", ["ones", "threes", "random", "whole"])
def test_stream_equals_full_decode_for_any_chunking(small_tae, chunking):
    L = 23
    z = torch.randn(2, L, 16, generator=torch.Generator().manual_seed(1))
    chunks = {"ones": [1] * L, "threes": [3] * 7 + [2], "whole": [L],
              "random": random_chunks(L, torch.Generator().manual_seed(2))}[chunking]
    with torch.no_grad():
        full = small_tae.decode(z)
        streamed, _ = stream(small_tae, z, chunks)
    err = (streamed - full).abs().max().item()
    print(f"small TAE, chunks {chunking}: max |stream - full| = {err:.3e} (|full| max {full.abs().max():.2f})")
    assert err <= ATOL


def test_official_size_stream_equals_full_decode():
    torch.manual_seed(3)
    tae = CausalHumanTAE(TAEConfig.official()).eval()
    z = torch.randn(1, 10, 16)
    with torch.no_grad():
        full = tae.decode(z)
        streamed, state = stream(tae, z, [1] * 10)
    err = (streamed - full).abs().max().item()
    print(f"official TAE, one latent per step: max |stream - full| = {err:.3e}")
    assert err <= ATOL
    # one buffer per decoder conv: conv0, 2 x (res blocks with dilation 9, 3, 1 + conv after upsample), conv4, conv6
    assert [tuple(b.shape) for b in state.buffers] == [(1, 1024, s) for s in (2, 18, 6, 2, 2, 18, 6, 2, 2, 2, 2)]


def test_rows_restart_independently(small_tae):
    g = torch.Generator().manual_seed(4)
    za, zb = torch.randn(3, 9, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    with torch.no_grad():
        state = small_tae.init_decode_state(3)
        first = small_tae.decode_step(za[:, :4], state)
        small_tae.reset_decode_state(state, [1])                    # row 1 starts a new sequence
        rest = small_tae.decode_step(torch.stack([za[0, 4:], zb[1], za[2, 4:]]), state)
        full_a = small_tae.decode(za)
        full_b = small_tae.decode(zb[1:2])
    assert (torch.cat([first, rest], 1)[[0, 2]] - full_a[[0, 2]]).abs().max() <= ATOL
    assert (rest[1:2] - full_b).abs().max() <= ATOL
    # bool masks and tensors are accepted too; a reset row equals a fresh state
    fresh = small_tae.init_decode_state(3)
    small_tae.reset_decode_state(state, torch.tensor([True, False, True]))
    small_tae.reset_decode_state(state, torch.tensor([1]))
    assert all(torch.equal(a, b) for a, b in zip(state.buffers, fresh.buffers))


def test_subset_rows_update_only_their_state(small_tae):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 6, 16, generator=g)
    with torch.no_grad():
        full = small_tae.decode(z)
        state = small_tae.init_decode_state(3)
        out = {r: [] for r in range(3)}
        # rows advance at different times and in any order
        schedule = [[0, 1, 2], [2, 0], [1], [1, 2, 0], [0], [2, 1], [0, 1], [2], [1, 0, 2]]
        pos = [0, 0, 0]
        for rows in schedule:
            rows = [r for r in rows if pos[r] < 6]
            if not rows:
                continue
            before = [b.clone() for b in state.buffers]
            frames = small_tae.decode_step(torch.stack([z[r, pos[r]:pos[r] + 1] for r in rows]), state,
                                           rows=torch.tensor(rows))
            idle = [r for r in range(3) if r not in rows]
            assert all(torch.equal(b[idle], a[idle]) for a, b in zip(before, state.buffers))
            for i, r in enumerate(rows):
                out[r].append(frames[i])
                pos[r] += 1
    assert pos == [6, 6, 6]
    for r in range(3):
        assert (torch.cat(out[r]) - full[r]).abs().max() <= ATOL


def test_functional_step_does_not_mutate_and_clone_is_independent(small_tae):
    z = torch.randn(2, 3, 16)
    state = small_tae.init_decode_state(2)
    with torch.no_grad():
        small_tae.decode_step(z[:, :1], state)
        saved = state.clone()
        frames, new = small_tae.decode_step_functional(z[:, 1:], state.buffers)
        assert all(torch.equal(a, b) for a, b in zip(state.buffers, saved.buffers))
        frames2 = small_tae.decode_step(z[:, 1:], state)
    assert torch.equal(frames, frames2)
    assert all(torch.equal(a, b) for a, b in zip(state.buffers, new))
    assert not all(torch.equal(a, b) for a, b in zip(state.buffers, saved.buffers))
    assert saved.batch_size == 2


def test_state_keeps_its_storage_for_cuda_graphs(small_tae):
    state = small_tae.init_decode_state(2)
    ptrs = [b.data_ptr() for b in state.buffers]
    with torch.no_grad():
        small_tae.decode_step(torch.randn(2, 2, 16), state)
        small_tae.decode_step(torch.randn(1, 1, 16), state, rows=torch.tensor([1]))
    assert [b.data_ptr() for b in state.buffers] == ptrs


def test_step_input_errors(small_tae):
    state = small_tae.init_decode_state(2)
    with pytest.raises(ValueError, match=r"streamed latents must be \(batch, length, 16\)"):
        small_tae.decode_step(torch.zeros(2, 16), state)
    with pytest.raises(ValueError, match="3 latent rows for 2 state rows"):
        small_tae.decode_step(torch.zeros(3, 1, 16), state)
    with pytest.raises(ValueError, match="2 latent rows for 1 state rows"):
        small_tae.decode_step(torch.zeros(2, 1, 16), state, rows=torch.tensor([0]))


def test_every_conv_goes_through_the_backend_switch(small_tae, monkeypatch):
    """The native op plugs in at ops.causal_conv's conv_forward_full / conv_forward_step (the conv
    backend switch): both the full and the streamed decode (and the encoder) must call them for every
    convolution. A streamed step the switch gives to the native op runs as one prepared chain of native
    calls instead (ops.native_update_unchecked, once per conv), and under the torch backend layer by layer."""
    from motionstreamer.ops import causal_conv as ops

    calls = []
    for name in ("conv_forward_full", "conv_forward_step"):
        def spy(conv, *args, real=getattr(ops, name), **kw):
            calls.append(conv)
            return real(conv, *args, **kw)
        monkeypatch.setattr(ops, name, spy)
    convs = {id(m.weight): m for m in small_tae.tae.decoder.modules() if isinstance(m, torch.nn.Conv1d)}

    def chain_spy(x, weight, *args, real=ops.native_update_unchecked, **kw):
        calls.append(convs[id(weight)])
        return real(x, weight, *args, **kw)
    monkeypatch.setattr(ops, "native_update_unchecked", chain_spy)
    n_decoder_convs = len(convs)
    n_encoder_convs = sum(isinstance(m, torch.nn.Conv1d) for m in small_tae.tae.encoder.modules())
    with torch.no_grad():
        small_tae.decode(torch.zeros(1, 2, 16))
        assert len(calls) == n_decoder_convs == 17
        for backend in ("torch", "auto"):
            calls.clear()
            ops.set_conv_backend(backend)
            try:
                small_tae.decode_step(torch.zeros(1, 1, 16), small_tae.init_decode_state(1))
            finally:
                ops.set_conv_backend("auto")
            assert len(calls) == n_decoder_convs and len({id(c) for c in calls}) == n_decoder_convs, backend
        calls.clear()
        small_tae.encode(torch.zeros(1, 4, 272))
        assert len(calls) == n_encoder_convs == 16


@pytest.mark.skipif(not __import__("motionstreamer.ops.causal_conv", fromlist=["x"]).available(),
                    reason="motionstreamer._C not built")
def test_native_chain_step_equals_the_layer_by_layer_step(small_tae, monkeypatch):
    """The streamed step as one prepared chain of native calls gives the layer by layer path's numbers
    exactly (the same op and arguments; the ReLUs after convs run inside the op, and ReLU is exact), over
    several steps and a batch of 3 with different states; when a state has the wrong shape, or a gradient
    is wanted, the step takes the checked path (which names the error)."""
    from motionstreamer.models.tae import CausalDecoder

    dec = small_tae.tae.decoder
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 6, 16, generator=g)
    used = []
    real = CausalDecoder._native_step
    monkeypatch.setattr(CausalDecoder, "_native_step", lambda self, *a: used.append(1) or real(self, *a))
    outs = {}
    with torch.no_grad():
        for chain in (True, False):
            if not chain:
                monkeypatch.setattr(CausalDecoder, "_native_chain_applies", lambda self, x, states: False)
            state = small_tae.init_decode_state(3)
            outs[chain] = torch.cat([small_tae.decode_step(z[:, i:i + 1], state) for i in range(6)], dim=1)
            assert len(used) == 6   # the chain ran every step of the first pass, none of the second
    monkeypatch.undo()
    assert torch.equal(outs[True], outs[False])
    with torch.no_grad():
        full = small_tae.decode(z)
    assert (outs[True] - full).abs().max() <= ATOL
    state = small_tae.init_decode_state(1)
    x = torch.zeros(1, small_tae.config.hidden, 1)
    with torch.no_grad():
        assert dec._native_chain_applies(x, state.buffers)
        assert not dec._native_chain_applies(x, state.buffers[:-1] + [torch.zeros(1, 5, 2)])
        assert not dec._native_chain_applies(x.double(), state.buffers)
    assert not dec._native_chain_applies(x, state.buffers)   # gradients on


def test_bf16_state_streams_close_to_the_fp32_decode(small_tae):
    """Reduced precision (the GPU default) keeps the state in the model dtype; error is bf16 rounding."""
    import copy

    tae16 = copy.deepcopy(small_tae).to(torch.bfloat16)
    z = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full32 = small_tae.decode(z)
        state = tae16.init_decode_state(2)
        assert all(b.dtype == torch.bfloat16 for b in state.buffers)
        streamed = torch.cat([tae16.decode_step(z[:, i:i + 1], state) for i in range(8)], 1)
        full16 = tae16.decode(z)
    assert streamed.dtype == torch.bfloat16
    scale = full32.abs().max()
    assert (streamed.float() - full32).abs().max() <= 0.03 * scale
    assert (streamed.float() - full16.float()).abs().max() <= 0.03 * scale


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stream_equals_full_decode(small_tae):
    import copy

    tae = copy.deepcopy(small_tae).cuda()
    z = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(7)).cuda()
    allow = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False          # TF32 would round both paths differently (~1e-3)
    try:
        with torch.no_grad():
            full = tae.decode(z)
            streamed, _ = stream(tae, z, [1, 3, 2, 5])
    finally:
        torch.backends.cudnn.allow_tf32 = allow
    assert (streamed - full).abs().max().item() <= ATOL
    torch.testing.assert_close(full.cpu(), small_tae.decode(z.cpu()), atol=ATOL, rtol=1e-4)
