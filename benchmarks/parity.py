"""Stage-by-stage parity report: jtts against PyTorch on the same weights and inputs, full NGC sizes.

    python benchmarks/parity.py                                   # jtts vs the project's PyTorch reference
    python benchmarks/parity.py --dle ~/DeepLearningExamples/PyTorch/SpeechSynthesis/Tacotron2
                                                                  # ... and vs NVIDIA's own modules too

Weights are random with every path live (tests/reference/weights.py), written as a DLE training checkpoint and
converted with `jtts.convert`, exactly as the tests do. With --dle, NVIDIA's Tacotron2/WaveGlow/Denoiser classes
are imported from that checkout at run time and load the same state_dict with strict=True; nothing of DLE is
part of this project. Prints relative L2 errors, ||a - b|| / ||b||, in float32, plus bf16/fp16 against float32.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dle import NoDropout  # noqa: E402
from _dle import load as load_dle  # noqa: E402


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tacotron2_rows(tmp: Path, dle) -> list[tuple]:
    import jax.numpy as jnp
    import torch

    from conftest import text_batch
    from jtts import Tacotron2
    from jtts.convert import convert
    from reference.tacotron2_torch import tacotron2_config
    from reference.weights import calibrate_gate, live_tacotron2, save_dle_checkpoint

    cfg = tacotron2_config()
    ref = live_tacotron2(cfg, seed=1)
    tokens, lengths = text_batch([37, 29, 16], seed=1)
    stops = calibrate_gate(ref, tokens, lengths, n_steps=150, min_step=25, margin=2e-3, isolate=True)
    save_dle_checkpoint(tmp / "t.pt", ref, cfg, module_prefix=True, with_optimizer=False)
    model_dir = convert(tmp / "t.pt", tmp / "t")
    models = {d: Tacotron2.from_checkpoint(model_dir, dtype=jnp.dtype(d)) for d in ("float32", "bfloat16", "float16")}
    mels = torch.randn(3, 80, 45, generator=torch.Generator().manual_seed(5)) - 3.0
    out_lengths = torch.tensor([45, 40, 22])
    tok, n, m, ol = tokens.numpy(), lengths.numpy(), mels.numpy(), out_lengths.numpy()

    with torch.no_grad():
        r_enc = ref.encode(tokens, lengths)
        r_tf = ref(tokens, lengths, mels, out_lengths, prenet_dropout=0.0)
    runs = {d: mdl(tok, n, m, ol, prenet_dropout=0.0) for d, mdl in models.items()}
    enc = {d: mdl.encode(tok, n, isolate=False) for d, mdl in models.items()}
    free = {d: mdl.infer(tok[:1], n[:1], max_decoder_steps=120, early_stopping=False, prenet_dropout=0.0)
            for d, mdl in models.items()}
    r_free = ref.infer(tokens[:1], lengths[:1], max_decoder_steps=120, early_stopping=False)
    stop_mel, stop_len, _ = models["float32"].infer(tok, n, max_decoder_steps=150, prenet_dropout=0.0)

    refs = {"encoder": r_enc, "teacher-forced mel": r_tf[0], "postnet mel": r_tf[1], "gate logits": r_tf[2],
            "alignments": r_tf[3], "120 free-running steps (postnet mel)": r_free["mel_postnet"],
            "120 free-running steps (alignments)": r_free["alignments"]}
    ours = {d: {"encoder": enc[d], "teacher-forced mel": runs[d][0], "postnet mel": runs[d][1],
                "gate logits": runs[d][2], "alignments": runs[d][3],
                "120 free-running steps (postnet mel)": free[d][0],
                "120 free-running steps (alignments)": free[d][2]} for d in models}

    dle_vals = {}
    if dle is not None:
        dle_models, dle_taco, _ = dle
        net = dle_models.get_model("Tacotron2", dict(cfg, max_decoder_steps=120, decoder_no_early_stopping=True),
                                   cpu_run=True)
        net.load_state_dict(ref.state_dict(), strict=True)
        net.eval()
        saved, dle_taco.F = dle_taco.F, NoDropout(dle_taco.F)
        try:
            with torch.no_grad():
                dle_vals["encoder"] = net.encoder.infer(net.embedding(tokens).transpose(1, 2), lengths)
                mel, post, gate, align = net((tokens, lengths, mels, 45, out_lengths))
                dle_vals.update({"teacher-forced mel": mel, "postnet mel": post, "gate logits": gate,
                                 "alignments": align})
                post, _, align = net.infer(tokens[:1], lengths[:1])
        finally:
            dle_taco.F = saved
            dle_vals["120 free-running steps (postnet mel)"] = post
            dle_vals["120 free-running steps (alignments)"] = align

    rows = []
    for name, r in refs.items():
        row = [f"Tacotron 2 {name}", rel(ours["float32"][name], r)]
        if dle is not None:
            row += [rel(r, dle_vals[name]), rel(ours["float32"][name], dle_vals[name])]
        row += [rel(ours["bfloat16"][name], ours["float32"][name]), rel(ours["float16"][name], ours["float32"][name])]
        rows.append(tuple(row))
    lengths_ok = np.asarray(stop_len).tolist() == stops
    print(f"Tacotron 2 stop steps {np.asarray(stop_len).tolist()} (reference {stops}): "
          f"{'identical' if lengths_ok else 'DIFFERENT'}; mel frames {stop_mel.shape[2]}", file=sys.stderr)
    return rows


def waveglow_rows(tmp: Path, dle) -> list[tuple]:
    import jax.numpy as jnp
    import torch

    from jtts import Denoiser, WaveGlow
    from jtts.convert import convert
    from jtts.waveglow import waveglow_loss
    from reference.waveglow_torch import Denoiser as RefDenoiser
    from reference.waveglow_torch import waveglow_config
    from reference.weights import live_waveglow, save_dle_checkpoint

    cfg = waveglow_config(256)
    ref = live_waveglow(cfg, seed=2)
    save_dle_checkpoint(tmp / "w.pt", ref, cfg, module_prefix=True, with_optimizer=False)
    model_dir = convert(tmp / "w.pt", tmp / "w")
    models = {d: WaveGlow.from_checkpoint(model_dir, dtype=jnp.dtype(d)) for d in ("float32", "bfloat16", "float16")}
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(2, 80, 12, generator=g) * 0.5 - 4.0
    z = torch.randn(2, 8, 12 * 32, generator=g)
    audio = torch.randn(2, 12 * 256 - 512, generator=g) * 0.3

    with torch.no_grad():
        r_z, r_log_s, r_log_det = ref(mel, audio)
        refs = {"audio, given z, sigma 0.9": ref.infer(mel, sigma=0.9, z=z, sigma_on_early=True),
                "audio, given z, sigma 0": ref.infer(mel, sigma=0.0, z=z, sigma_on_early=True),
                "training z": r_z, "training log_s (all flows)": torch.cat([s.flatten() for s in r_log_s]),
                "training log-det W": torch.stack(r_log_det), "NLL loss": ref.loss(r_z, r_log_s, r_log_det)}
        refs["denoised audio (0.01)"] = RefDenoiser(ref)(refs["audio, given z, sigma 0.9"], strength=0.01)

    def ours_for(m):
        oz, olog_s, olog_det = m(mel.numpy(), audio.numpy())
        vocoder = m.inference()
        a09 = vocoder.infer(mel.numpy(), sigma=0.9, z=z.numpy())
        return {"audio, given z, sigma 0.9": a09,
                "audio, given z, sigma 0": vocoder.infer(mel.numpy(), sigma=0.0, z=z.numpy()),
                "training z": oz, "training log_s (all flows)": np.concatenate([np.ravel(s) for s in olog_s]),
                "training log-det W": np.array([float(x) for x in olog_det]),
                "NLL loss": waveglow_loss(oz, olog_s, olog_det),
                "denoised audio (0.01)": Denoiser(vocoder)(np.asarray(refs["audio, given z, sigma 0.9"]),
                                                           strength=0.01)}

    ours = {d: ours_for(m) for d, m in models.items()}
    dle_vals = {}
    if dle is not None:
        dle_models, _, DLEDenoiser = dle
        net = dle_models.get_model("WaveGlow", cfg, cpu_run=True)
        net.load_state_dict(ref.state_dict(), strict=True)
        net.eval()
        n_rem = net.n_remaining_channels
        with torch.no_grad():
            for sigma, name in ((0.9, "audio, given z, sigma 0.9"), (0.0, "audio, given z, sigma 0")):
                zs = z.clone()
                zs[:, n_rem:] *= sigma  # infer_onnx leaves the early-output noise unscaled
                dle_vals[name] = net.infer_onnx(mel, zs, sigma=sigma)
            dz, dlog_s, dlog_det = net((mel, audio))
            dle_vals.update({"training z": dz, "training log_s (all flows)": torch.cat([s.flatten() for s in dlog_s]),
                             "training log-det W": torch.stack(dlog_det),
                             "NLL loss": ref.loss(dz, dlog_s, dlog_det)})
            dle_vals["denoised audio (0.01)"] = DLEDenoiser(net)(refs["audio, given z, sigma 0.9"], strength=0.01)[:, 0]

    rows = []
    for name, r in refs.items():
        row = [f"WaveGlow-256 {name}", rel(ours["float32"][name], r)]
        if dle is not None:
            row += [rel(r, dle_vals[name]), rel(ours["float32"][name], dle_vals[name])]
        row += [rel(ours["bfloat16"][name], ours["float32"][name]), rel(ours["float16"][name], ours["float32"][name])]
        rows.append(tuple(row))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dle", type=Path, help="DLE's PyTorch/SpeechSynthesis/Tacotron2 directory (optional)")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    dle = load_dle(args.dle) if args.dle else None
    with tempfile.TemporaryDirectory() as d:
        rows = tacotron2_rows(Path(d), dle) + waveglow_rows(Path(d), dle)
    head = ["stage", "jtts f32 vs reference"]
    if dle:
        head += ["reference vs DLE", "jtts f32 vs DLE"]
    head += ["bf16 vs f32", "fp16 vs f32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + r[0] + " | " + " | ".join(f"{v:.1e}" for v in r[1:]) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
