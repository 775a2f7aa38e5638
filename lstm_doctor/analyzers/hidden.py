"""H — the hidden state and the final encodings it produces."""

from __future__ import annotations

from lstm_doctor.analyzers.cell import weighty_steps
from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location

np = Deferred("numpy")  # imported by the first check that runs


def _enough_sequences(ctx: Context, code: str) -> bool:
    n = ctx.capture.encoding.n
    need = int(ctx.th(code, "min_sequences"))
    if n < need:
        ctx.skip(code, f"needs at least {need} sequences, got {n}")
        return False
    return True


def encodings_collapse(ctx: Context) -> bool:
    """H601's test on its own thresholds (False with too few sequences or no capture)."""
    cap = ctx.capture
    if cap is None or cap.encoding.n < int(ctx.th("H601", "min_sequences")):
        return False
    enc = cap.encoding
    cosine = enc.mean_pairwise_cosine()
    std, mean_abs = enc.cross_input_std(), enc.mean_abs()
    if not np.isfinite(cosine):
        return False
    relative = std / mean_abs if mean_abs > 0 else 0.0
    return bool(cosine > ctx.th("H601", "cosine") and relative < ctx.th("H601", "relative_std"))


def encodings_low_rank(ctx: Context) -> bool:
    """H604's test on its own thresholds (False with too few sequences or no capture)."""
    cap = ctx.capture
    if cap is None or cap.encoding.n < int(ctx.th("H604", "min_sequences")):
        return False
    enc = cap.encoding
    return bool(enc.effective_rank() < ctx.th("H604", "rank_share") * min(enc.n, enc.E))


@rule(
    "H601",
    "encoding-collapse",
    "error",
    "final encodings: mean pairwise cosine over all pairs, and the mean over units of "
    "the cross-input std relative to mean |h|",
    {"cosine": 0.99, "relative_std": 0.01, "min_sequences": 8},
    what="""
Compares the final encodings (last layer's final h, directions concatenated)
of different inputs. Fires when the mean pairwise cosine exceeds `cosine` and
the cross-input std is under `relative_std` × mean |h|: every input gives the
same vector. Needs at least `min_sequences` sequences.""",
    why="""
This is the symptom of the case study (docs/case-study.md): every tweet encoded to a vector of ones, mean
pairwise cosine 0.999997 and cross-tweet std 4e-8. An encoder whose outputs do
not differ cannot be used downstream, however well it "trained".""",
    example="H601 error  encodings: mean pairwise cosine 0.999997, cross-input std 4e-08 (mean |h| 0.98)",
    fix="""
Fix the root causes first (W101, A201, I501, I504); `what-if` measures how
distinct the encodings become with each fix.""",
)
def check_encoding_collapse(ctx: Context):
    if not _enough_sequences(ctx, "H601"):
        return
    enc = ctx.capture.encoding
    cosine = enc.mean_pairwise_cosine()
    std, mean_abs = enc.cross_input_std(), enc.mean_abs()
    if not np.isfinite(cosine):
        return
    relative = std / mean_abs if mean_abs > 0 else 0.0
    if cosine > ctx.th("H601", "cosine") and relative < ctx.th("H601", "relative_std"):
        k = len(ctx.model.layers) - 1
        yield ctx.finding(
            "H601",
            f"the final encodings of {enc.n} inputs are nearly identical: mean pairwise cosine "
            f"{cosine:.6f}, cross-input std {std:.2g} ({relative:.2g} of mean |h| {mean_abs:.3g}).",
            location=Location(k, None, "h"),
            evidence={
                "mean_pairwise_cosine": cosine,
                "cross_input_std": std,
                "mean_abs": mean_abs,
                "sequences": enc.n,
            },
        )


@rule(
    "H603",
    "fixed-point",
    "warning",
    "per step: the largest ‖h_t − h_{t−1}‖ / √H over sequences; the step k from which it "
    "stays under the tolerance",
    {"tolerance": 1e-4, "min_remaining": 2},
    what="""
Finds the step k from which the hidden state stops moving for every sequence:
max over sequences of ‖h_t − h_{t−1}‖ / √H stays below `tolerance` for the rest
of the sequence (at least `min_remaining` steps). Whatever the input after
step k, the output is the same: the effective memory horizon is k steps.""",
    why="""
A fixed point reached regardless of input means the later inputs are ignored.
Case study (docs/case-study.md): h reached 1.0 by step 15 for every tweet, and stayed.""",
    example="H603 warning  layer 0 fwd: h stops changing at step 15 for every sequence (240 more steps ignored)",
    fix="Fix the saturation that pins the state (S301, C401).",
)
def check_fixed_point(ctx: Context):
    for (k, d), st in ctx.capture.directions.items():
        # the tails of the longest sequences (under 10% of them valid) do not
        # decide whether "every sequence" has stopped moving
        steps = weighty_steps(st)
        if steps.size < 2:
            continue
        moving = st.max_dh_t[steps] / np.sqrt(st.H) >= ctx.th("H603", "tolerance")
        if moving[-1]:
            continue  # still moving at the last step: no fixed point
        last_moving = np.flatnonzero(moving)
        k_step = int(steps[last_moving[-1] + 1]) if last_moving.size else int(steps[0])
        remaining = int(steps[-1] - k_step + 1)
        if remaining < ctx.th("H603", "min_remaining"):
            continue
        yield ctx.finding(
            "H603",
            f"the hidden state stops changing at step {k_step} for every sequence "
            f"(max ‖Δh‖/√H < {ctx.th('H603', 'tolerance'):g} afterwards): the remaining "
            f"{remaining} steps are ignored; the effective memory horizon is {k_step} steps.",
            location=Location(k, d, "h", steps=(k_step, int(steps[-1]))),
            evidence={"fixed_from_step": k_step, "steps_ignored": remaining, "T": st.T},
        )


@rule(
    "H604",
    "low-rank-encodings",
    "warning",
    "effective rank (exp of the entropy of normalised singular values) of the N×E matrix "
    "of final encodings",
    {"rank_share": 0.05, "min_sequences": 8},
    what="""
Computes the effective rank (Roy & Vetterli 2007) of the matrix of final
encodings: exp of the entropy of its normalised singular values. Fires when it
is under `rank_share` × min(N, E): the encodings live in a handful of
directions.""",
    why="""
Even when encodings are not identical (H601), a rank of 1–3 out of hundreds of
units means most of the representation is wasted or redundant.""",
    example="H604 warning  encodings: effective rank 1.02 of 64 (1.6%)",
    fix="See the saturation and input findings; a healthy encoder spreads over many directions.",
)
def check_low_rank(ctx: Context):
    if not _enough_sequences(ctx, "H604"):
        return
    enc = ctx.capture.encoding
    rank = enc.effective_rank()
    size = min(enc.n, enc.E)
    if rank < ctx.th("H604", "rank_share") * size:
        yield ctx.finding(
            "H604",
            f"the final encodings have effective rank {rank:.3g} of a possible {size} "
            f"({rank / size:.1%}).",
            location=Location(len(ctx.model.layers) - 1, None, "h"),
            evidence={"effective_rank": rank, "max_rank": size, "sequences": enc.n},
        )
