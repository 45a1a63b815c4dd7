"""Times diffusers on the tiny parity checkpoint, module by module, on CPU (the side-by-side half
of docs/module-times.md). Usage: diffusers_module_times.py FIXTURES_DIR OUT_JSON [THREADS]"""
import json
import statistics
import sys
import time

import diffusers
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline  # noqa: F401
from safetensors.torch import load_file

RUNS = 7


def median_ms(fn):
    fn()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    fixtures, out = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(threads)
    pipe = WanPipeline.from_pretrained(f"{fixtures}/tiny-wan", torch_dtype=torch.float32)
    t = load_file(f"{fixtures}/io/transformer_t2v.safetensors")
    v = load_file(f"{fixtures}/io/vae.safetensors")
    u = load_file(f"{fixtures}/io/umt5.safetensors")
    p = load_file(f"{fixtures}/io/pipeline.safetensors")
    times = {}
    with torch.no_grad():
        times["transformer forward"] = median_ms(
            lambda: pipe.transformer(
                hidden_states=t["hidden_states"],
                timestep=t["timestep"].long(),
                encoder_hidden_states=t["encoder_hidden_states"],
                return_dict=False,
            )
        )
        times["vae encode"] = median_ms(lambda: pipe.vae.encode(v["encode.input"]))
        times["vae decode"] = median_ms(lambda: pipe.vae.decode(v["decode.input"]))
        times["umt5 forward"] = median_ms(
            lambda: pipe.text_encoder(u["input_ids"], u["attention_mask"])
        )
        times["pipeline (4 steps, CFG)"] = median_ms(
            lambda: pipe(
                prompt="a red ball",
                negative_prompt="",
                height=32,
                width=32,
                num_frames=9,
                num_inference_steps=4,
                guidance_scale=5.0,
                latents=p["latents"].clone(),
                output_type="np",
            )
        )
    info = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "threads": threads,
        "runs": RUNS,
        "times_ms": times,
    }
    with open(out, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
