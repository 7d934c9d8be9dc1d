#!/usr/bin/env bash
# Train one recipe (recipes/<name>.yaml) on this node; verl starts its own local Ray.
#
#   examples/run_vgpo.sh vgpo_qwen2_5_vl_7b                       # the published run
#   examples/run_vgpo.sh dapo_qwen2_5_vl_7b trainer.total_epochs=1  # overrides go to Hydra as they are
#   examples/run_vgpo.sh vgpo_qwen2_5_vl_3b --dry-run               # print the command, run nothing
#                                                                   # (--dry-run anywhere in the line)
#
# Environment: PYTHON (default python3), VGPO_RECIPES_DIR (default: this repo's recipes/).
# Multi-node runs: examples/slurm/run_vgpo.slurm.
set -euo pipefail

usage() {
    echo "usage: $0 <recipe> [hydra overrides...] [--dry-run]" >&2
    local recipe
    printf 'recipes:' >&2
    for recipe in "$RECIPES_DIR"/*.yaml; do
        printf ' %s' "$(basename "$recipe" .yaml)" >&2
    done
    echo >&2
    exit 2
}

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPES_DIR="${VGPO_RECIPES_DIR:-$REPO_DIR/recipes}"
PYTHON="${PYTHON:-python3}"

DRY_RUN=0
ARGS=()
for arg in "$@"; do  # no Hydra override is spelt --dry-run, so the flag may stand anywhere
    if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
[[ $# -ge 1 ]] || usage
RECIPE="$1"
shift
[[ -f "$RECIPES_DIR/$RECIPE.yaml" ]] || { echo "error: no recipe $RECIPES_DIR/$RECIPE.yaml" >&2; usage; }

# The plugin normally loads through its verl.plugins entry point; VERL_USE_EXTERNAL_MODULES is verl's
# documented fallback (imported by `import verl` in the driver and in every Ray worker it starts).
# Modules the user lists already are kept.
case ",${VERL_USE_EXTERNAL_MODULES:-}," in
    *,vgpo_verl.plugin,*) ;;
    *) export VERL_USE_EXTERNAL_MODULES="${VERL_USE_EXTERNAL_MODULES:+$VERL_USE_EXTERNAL_MODULES,}vgpo_verl.plugin" ;;
esac

COMMAND=("$PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPES_DIR" --config-name "$RECIPE" "$@")

if [[ "$DRY_RUN" == 1 ]]; then
    echo "VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES"
    printf '%q ' "${COMMAND[@]}"
    echo
    exit 0
fi

# Fail here, not after model loading, if this Python's verl does not find the `vgpo` estimator: verl and the
# installed plugin, as the Ray workers will import them (the current directory, maybe this checkout, left out).
GUARD="import sys; sys.path = [p for p in sys.path if p not in ('', '.')]; "
GUARD+="import verl.trainer.ppo.core_algos as c; assert 'vgpo' in c.ADV_ESTIMATOR_REGISTRY, 'vgpo-verl missing'"
"$PYTHON" -c "$GUARD" || {
    echo "error: $PYTHON cannot import verl with vgpo-verl's estimator; pip install verl and vgpo-verl" \
         "(pip install -e . in this repository) in this environment" >&2
    exit 1
}
exec "${COMMAND[@]}"
