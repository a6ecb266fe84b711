#!/usr/bin/env bash
# The GPU checks as one prepared script for a bare CUDA machine (no Django, PostgreSQL or Redis needed):
#   OUT=<folder> bash bench/gpu_checks.sh [generation] [ddpo] [decoder] [shapes]   # default: generation ddpo
# generation: bench/generation_gpu.py (issue 5 (c)), about 2 minutes.
# ddpo:       bench/ddpo_judge.py on cuda (issue 10, DDPO on the shapes judge), one run per DDPO_RUNS recipe side
#             by side, DDPO_MINUTES of training (default 4) plus evaluations; LoRAs and results in $OUT/ddpo_judge_<i>/.
# decoder:    fine-tunes the shipped shapes VAE's decoder (encoder frozen) for DECODER_MINUTES (default 4)
#             into $OUT/vae_ft/ (generation.shapes.train --finetune-decoder).
# shapes:     trains the shapes-world model with the `gpu` preset: one VAE per latent width in SHAPES_LATENTS
#             (default "4 8 16") side by side for VAE_MINUTES (default 3), the judge on each one's
#             reconstructions (bench.shapes --vae), then the diffusion phase for SHAPES_MINUTES (default 3.5)
#             on the best, exported to $OUT as a split tarball (`cat $OUT/shapes_export.tgz.* | tar xz` gives
#             shapes_export/); about 8 minutes, so run it alone in a 600 s device call.
# Python packages missing there travel as wheels in .whl/ (see bench/README.md) and are installed first.
set -u
OUT=${OUT:-var/gpu_checks}
PY=${PYTHON:-python3}
SHAPES_MINUTES=${SHAPES_MINUTES:-3.5}
SHAPES_LATENTS=${SHAPES_LATENTS:-4 8 16}
SHAPES_PRESET=${SHAPES_PRESET:-gpu}  # cpu: a dry run of the section's plumbing (with tiny minutes)
VAE_MINUTES=${VAE_MINUTES:-3}
CEILING_N=${CEILING_N:-500}
DDPO_MINUTES=${DDPO_MINUTES:-4}
DECODER_MINUTES=${DECODER_MINUTES:-4}
SECTIONS=${*:-generation ddpo}
# bench/ddpo_judge.py arguments, one run each, run at once (3 judge processes per run).
DDPO_RUNS=(
    "--judge-workers 3 --eval-every 20 --ddpo {\"prompts_per_iteration\":16,\"images_per_prompt\":16,\"train_batch_size\":32,\"iterations\":2000,\"lr\":0.0003,\"clip_range\":0.0001}"
    "--judge-workers 3 --eval-every 20 --ddpo {\"prompts_per_iteration\":16,\"images_per_prompt\":16,\"train_batch_size\":32,\"iterations\":2000,\"lr\":0.001,\"clip_range\":0.0001}"
    "--judge-workers 3 --eval-every 20 --ddpo {\"prompts_per_iteration\":16,\"images_per_prompt\":16,\"train_batch_size\":32,\"iterations\":2000,\"lr\":0.0003,\"clip_range\":0.0001,\"timestep_fraction\":1.0}"
    "--judge-workers 3 --eval-every 20 --ddpo {\"prompts_per_iteration\":16,\"images_per_prompt\":16,\"train_batch_size\":32,\"iterations\":2000,\"lr\":0.0001}"
)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"

for section in $SECTIONS; do
    started=$(date +%s)
    case $section in
    generation)
        timeout 150 $PY -m bench.generation_gpu --json "$OUT/generation_gpu.json" >"$OUT/generation_gpu.log" 2>&1
        echo "generation bench: exit $?, $(($(date +%s) - started)) s"
        grep -v "Loading\|it/s\]" "$OUT/generation_gpu.log" | tail -14 ;;
    ddpo)  # the recipes in DDPO_RUNS side by side (a 4M-parameter UNet leaves the GPU mostly idle)
        for i in "${!DDPO_RUNS[@]}"; do
            # shellcheck disable=SC2086  # each entry is a list of arguments
            timeout $((${DDPO_MINUTES%.*} * 60 + 150)) $PY -m bench.ddpo_judge --device cuda --eval-batch 64 \
                --max-minutes "$DDPO_MINUTES" ${DDPO_RUNS[$i]} --out "$OUT/ddpo_judge_$i" >"$OUT/ddpo_judge_$i.log" 2>&1 &
        done
        wait
        echo "DDPO on the judge: $(($(date +%s) - started)) s"
        for i in "${!DDPO_RUNS[@]}"; do
            echo "-- run $i: ${DDPO_RUNS[$i]}"; grep "adherence\|done in\|Error" "$OUT/ddpo_judge_$i.log" | tail -8 | cut -c1-110
        done ;;
    shapes)  # a VAE per latent width side by side; the best reconstruction ceiling gets the diffusion phase
        for lc in $SHAPES_LATENTS; do
            timeout $((${VAE_MINUTES%.*} * 60 + 150)) $PY -m generation.shapes.train --preset "$SHAPES_PRESET" \
                --run-dir "/tmp/vae_$lc" --latent-channels "$lc" --vae-minutes "$VAE_MINUTES" --vae-only \
                >"$OUT/vae_$lc.log" 2>&1 &
        done
        wait
        for lc in $SHAPES_LATENTS; do
            $PY -m bench.shapes --vae "/tmp/vae_$lc/vae" --ceiling-n "$CEILING_N" >"$OUT/vae_$lc.ceiling" 2>&1 &
        done
        wait
        echo "VAEs: $(($(date +%s) - started)) s"
        best=$($PY -c "
import json, sys
scores = {int(lc): json.loads(open(f'$OUT/vae_{lc}.ceiling').read().splitlines()[-1])['vae_ceiling']['overall']
          for lc in sys.argv[1:]}
print(*(f'{lc} latent channels: ceiling {s:.3f}' for lc, s in sorted(scores.items())), sep='\n', file=sys.stderr)
top = max(scores.values())
print(min(lc for lc, s in scores.items() if s >= top - 0.01))  # within a point, the narrower latent
" $SHAPES_LATENTS) || { echo "no VAE finished"; tail -5 "$OUT"/vae_*; exit 1; }
        echo "diffusion on the VAE with $best latent channels"
        mkdir -p /tmp/shapes_run && cp -r "/tmp/vae_$best/vae" /tmp/shapes_run/vae
        timeout $((${SHAPES_MINUTES%.*} * 60 + 150)) $PY -m generation.shapes.train --preset "$SHAPES_PRESET" \
            --run-dir /tmp/shapes_run --latent-channels "$best" --max-minutes "$SHAPES_MINUTES" \
            >"$OUT/shapes_train.log" 2>&1
        echo "shapes training: exit $?, $(($(date +%s) - started)) s"; grep -v "it/s\]" "$OUT/shapes_train.log" | tail -4
        if $PY -m generation.shapes.train --preset "$SHAPES_PRESET" --run-dir /tmp/shapes_run --export /tmp/shapes_export \
            >>"$OUT/shapes_train.log" 2>&1; then
            tar czf - -C /tmp shapes_export | split -b 15M - "$OUT/shapes_export.tgz."
            ls -la "$OUT"
        else
            echo "shapes export failed"; tail -20 "$OUT/shapes_train.log"
        fi ;;
    decoder)  # phase 1b on the shipped VAE: the encoder stays frozen, so the shipped UNet stays valid
        mkdir -p /tmp/decoder_run && cp -r generation/weights/shapes/vae /tmp/decoder_run/vae
        timeout $((${DECODER_MINUTES%.*} * 60 + 90)) $PY -m generation.shapes.train --preset gpu \
            --run-dir /tmp/decoder_run --finetune-decoder 1000000 --max-minutes "$DECODER_MINUTES" \
            >"$OUT/decoder.log" 2>&1
        echo "decoder fine-tune: exit $?, $(($(date +%s) - started)) s"; grep -v "it/s\]" "$OUT/decoder.log" | tail -4
        cp -r /tmp/decoder_run/vae_ft "$OUT/vae_ft" ;;
    *) echo "unknown section $section (generation, ddpo, decoder, shapes)"; exit 2 ;;
    esac
done
