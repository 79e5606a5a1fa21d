"""Cost of the in-place distillation loss: soft-target cross-entropy (``tune.distill_loss``) vs ``kl_div``.

    OMP_NUM_THREADS=2 python bench/bench_distill.py

Every InstaTune student step compares the student's logits with the teacher's at every token: with
batch 8 x 256 tokens and SmolLM2's 49,152-token vocabulary that is two 2,040 x 49,152 matrices. The
peer is the textbook formula, ``kl_div`` over two log-softmaxes, computed per student (what tune.py did
before); ours computes the teacher's probabilities once per batch (``SoftTargets``, shared by every
student of a sandwich step) and the student's side with the fused cross-entropy kernel. Both are timed
forward + backward, interleaved, on the same tensors; the values must agree.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from llamanas.tuning.losses import SoftTargets, distill_loss


def kl_div_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The peer: KL(teacher || student) per token from two log-softmaxes."""
    log_p_s = F.log_softmax(student, dim=-1)
    log_p_t = F.log_softmax(teacher, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") / student.shape[0]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2040, help="Positions compared (batch 8 x 255).")
    ap.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary size.")
    ap.add_argument("--students", type=int, default=3, help="Students sharing one teacher (sandwich k=1).")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    teacher = 3 * torch.randn(args.tokens, args.vocab, generator=g)
    students = [(3 * torch.randn(args.tokens, args.vocab, generator=g)) for _ in range(args.students)]

    def students_step(loss_of) -> float:
        """Forward + backward of every student's loss; the sum of the losses."""
        total = 0.0
        for s in students:
            loss = loss_of(s.clone().requires_grad_())
            loss.backward()
            total += loss.item()
        return total

    def peer() -> float:
        return students_step(lambda s: kl_div_loss(s, teacher))

    def ours() -> float:
        targets = SoftTargets.from_logits(teacher)  # once per batch, shared by the students
        return students_step(lambda s: distill_loss(s, targets))

    first_peer, first_ours = peer(), ours()  # also the warm-up
    assert abs(first_peer - first_ours) < 1e-3 * abs(first_peer), "the two losses disagree"
    t_peer, t_ours = [], []
    for _ in range(args.repeats):
        t_peer.append(timed(peer))
        t_ours.append(timed(ours))
    a, b = statistics.median(t_peer), statistics.median(t_ours)
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads; {args.tokens} x {args.vocab} logits, "
        f"{args.students} students per teacher, median of {args.repeats}"
    )
    print(f"kl_div per student (peer):           {a:.2f} s")
    print(f"SoftTargets + soft cross-entropy:    {b:.2f} s   ({a / b:.1f}x faster)")


if __name__ == "__main__":
    main()
