"""Run verl's real FSDP engine (as resolved by verl's EngineRegistry) on spawned CPU ranks.

Each rank is a fresh spawned process (torch.multiprocessing), so verl's class-level monkey patches
of the transformers models never leak into the test process that computes the plain reference.
Engines and batches are built by vgpo_verl.doctor.verl_run, as the doctor builds them.
"""

from __future__ import annotations

import torch

from vgpo_verl.doctor.verl_run import free_port


def engine_worker(rank: int, world_size: int, port: int, model_dir: str, samples: list, runs: list,
                  out_path: str) -> None:
    """One rank: for each run (remove_padding, sp, dynamic_bsz, max_token_len, legacy_layout, flags,
    optionally its own model_dir, samples, `lora` fields of HFModelConfig and `backend`), verl's engine.infer_batch;
    rank 0 saves {run name: {"outputs": {key: [per-sample tensors]}, "engine_class", "scoring_hooks"
    (hooks installed), "scored_modules" (their modules' names), "timings" (the pass's `timing_s/` metrics)}}.

    Engines are built in the order the runs first ask for them (the padded one first: building a
    remove-padding engine patches the model classes' attention for the whole process).
    """
    torch.set_num_threads(1)
    from vgpo_verl.doctor import verl_run

    verl_run.init_process_group("cpu", rank, world_size, port)
    try:
        import transformers

        import vgpo_verl.plugin.scoring_engine

        scoring_hooks = []
        original_capture = vgpo_verl.plugin.scoring_engine.HiddenStateCapture

        def recording_capture(*args, **kwargs):  # records every hook the engine installs and its module's name
            capture = original_capture(*args, **kwargs)
            scoring_hooks.append(next(n for n, m in args[0].named_modules() if m is capture.module))
            return capture

        vgpo_verl.plugin.scoring_engine.HiddenStateCapture = recording_capture
        plain_models, engines, results = {}, {}, {}
        for run in runs:
            run_dir, run_samples = run.get("model_dir", model_dir), run.get("samples", samples)
            if run_dir not in plain_models:  # for position ids only
                plain_models[run_dir] = transformers.AutoModelForImageTextToText.from_pretrained(run_dir)
            key = (run_dir, run["remove_padding"], run.get("sp", 1), tuple(sorted(run.get("lora", {}).items())), "cpu",
                   run.get("backend", "fsdp2"))
            if key not in engines:
                engines[key] = verl_run.build_engine(*key)
            batch = verl_run.build_batch(plain_models[run_dir], run_samples, run.get("legacy_layout", False),
                                         **run.get("flags", {}))
            hooks_before = len(scoring_hooks)
            outputs, metrics = verl_run.infer(engines[key], batch, run["remove_padding"], run.get("dynamic_bsz", False),
                                     run.get("max_token_len", 4096))
            results[run["name"]] = {
                "engine_class": type(engines[key]).__name__,
                "scoring_hooks": len(scoring_hooks) - hooks_before,
                "scored_modules": sorted(set(scoring_hooks[hooks_before:])),
                "outputs": outputs,
                "timings": {k: v for k, v in metrics.items() if k.startswith("timing_s/")},
            }
        if rank == 0:
            torch.save(results, out_path)
    finally:
        torch.distributed.destroy_process_group()


def run_engine(model_dir: str, samples: list, runs: list, out_path: str, world_size: int = 1) -> dict:
    """Spawn `world_size` gloo ranks running engine_worker; return rank 0's saved results."""
    import torch.multiprocessing as mp

    mp.spawn(engine_worker, args=(world_size, free_port(), model_dir, samples, runs, out_path),
             nprocs=world_size, join=True)
    return torch.load(out_path)
