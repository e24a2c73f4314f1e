"""Both losses under DDP (2 CPU processes, gloo) equal one process with the doubled batch:
loss values, parameter gradients after DDP's averaging, and (momentum queue) the enqueued keys."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

WORLD, LOCAL_B, QUEUE = 2, 4, 16


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.img, self.txt = nn.Linear(6, 5), nn.Linear(7, 5)

    def forward(self, x, y):
        return F.normalize(self.img(x), dim=-1), F.normalize(self.txt(y), dim=-1)  # (B, D) each


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL_B, 6, generator=g), torch.randn(WORLD * LOCAL_B, 7, generator=g)


def run_step(model, loss_name, x, y):
    """One step of either loss on (x, y); returns loss and the queue state for moco."""
    from brivl.losses import MomentumQueueLoss, make_clip_loss

    img, txt = model(x, y)
    if loss_name == "clip":
        return make_clip_loss()(img, txt, torch.tensor(10.0)), None
    q = MomentumQueueLoss(5, QUEUE, 0.07)
    g = torch.Generator().manual_seed(2)  # the same pre-filled queue state on every rank
    q.image_queue.copy_(F.normalize(torch.randn(QUEUE, 5, generator=g), dim=-1))
    q.text_queue.copy_(F.normalize(torch.randn(QUEUE, 5, generator=g), dim=-1))
    q.filled.fill_(QUEUE)
    q.ptr.fill_(4)
    k_img, k_txt = (F.normalize(t.detach() + 0.1, dim=-1) for t in (img, txt))  # stand-in momentum keys
    loss = q(img, txt, k_img, k_txt)
    return loss, {k: v.clone() for k, v in q.state_dict().items()}


def worker(rank, port, loss_name, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(Towers())
        x, y = batch()
        sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        loss, state = run_step(model, loss_name, x[sl], y[sl])
        loss.backward()
        out = {"loss": loss.detach(), **{f"grad.{n}": p.grad for n, p in model.module.named_parameters()}}
        out.update({f"state.{k}": v for k, v in (state or {}).items()})
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while its peer is still inside a collective
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: gloo's worker threads can abort there ("terminate called without an active
    # exception", seen once in CI) after the results are written; the result file is closed by now.
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="gloo not available")
@pytest.mark.parametrize("loss_name", ["clip", "moco"])
def test_ddp_matches_single_process_doubled_batch(loss_name, tmp_path):
    for attempt in range(2):  # one retry, only for a rank killed by a signal (a gloo teardown abort), on a new port
        out = tmp_path / f"attempt{attempt}"
        out.mkdir()
        try:
            mp.start_processes(worker, args=(free_port(), loss_name, str(out)), nprocs=WORLD, start_method="spawn")
            break
        except mp.ProcessExitedException as e:
            if attempt or e.signal_name is None:
                raise
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    model = Towers()
    loss, state = run_step(model, loss_name, *batch())
    loss.backward()
    if loss_name == "clip":  # every rank computes the loss of the whole global batch
        for r in ranks:
            assert r["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    else:  # each rank averages its own queries; DDP's mean over ranks is the global mean
        assert sum(r["loss"].item() for r in ranks) / WORLD == pytest.approx(loss.item(), abs=1e-5)
        for k, v in state.items():  # the gathered global batch of keys was enqueued, in rank order
            for r in ranks:
                torch.testing.assert_close(r[f"state.{k}"], v, atol=1e-6, rtol=0)
    for n, p in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r[f"grad.{n}"], p.grad, atol=1e-5, rtol=1e-4)
