"""The doctor's checks (see vgpo_verl.doctor): references first, then verl's engine, then the comparison."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys

import torch

from vgpo_verl.doctor.tiny_models import Sample, synthetic_sample, tiny_model
from vgpo_verl.plugin.families import family_of

# |engine - reference| allowed on CPU (fp32 everywhere; the tests see ~1e-7) and on CUDA (bf16 compute
# and flash-attention against an fp32 reference).
TOLERANCE = {"cpu": {"score": 1e-4, "log_prob": 1e-3}, "cuda": {"score": 5e-2, "log_prob": 0.5}}
VPPO_SEED, VPPO_PROB = 7, 0.5
SAMPLES = ("one image", "text only", "two images", "a video")
# (layout name, remove padding, dynamic batch)
LAYOUTS = (("padded", False, False), ("packed", True, True))


@dataclasses.dataclass
class Reference:
    """Plain-transformers values of one sample (vgpo_verl.doctor.reference): (L,) scores, has_visual,
    (L-1,) log-probs, (L,) entropy, (L-1,) log-probs under the perturbed image; with LoRA also the
    perturbed log-probs of the base model without the adapter."""

    scores: torch.Tensor
    has_visual: bool
    log_probs: torch.Tensor
    entropy: torch.Tensor
    perturbed: torch.Tensor
    base_perturbed: torch.Tensor | None = None


class Doctor:
    """Runs every check of one model, printing a line per fact to `out`; `failures` lists what failed."""

    def __init__(self, args, workdir: str, out):
        self.args, self.workdir, self.out = args, workdir, out
        self.tolerance = TOLERANCE[args.device]
        self.checks, self.failures = 0, []
        self.worst: dict[str, float] = {}  # the largest |delta| seen per quantity, for the last line

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.failures.append(what)
        return ok

    def delta(self, quantity: str, value: float) -> float:
        self.worst[quantity] = max(self.worst.get(quantity, 0.0), value)
        return value

    def summary(self) -> str:
        return ", ".join(f"max |delta {k}| {v:.1e}" for k, v in self.worst.items())

    # ------------------------------------------------------------------ set-up

    def run(self) -> None:
        import transformers

        from vgpo_verl.plugin.model_check import config_problems, veomni_checkpoint_problems

        model_dir = self._model_dir()
        hf_config = transformers.AutoConfig.from_pretrained(model_dir)
        refused = list(dict.fromkeys(line for method in self.args.methods for line in config_problems(hf_config, method)))
        if self.args.engine == "veomni":
            refused += veomni_checkpoint_problems({"actor_rollout_ref": {"model": {"path": model_dir}}})
        if not self.check(not refused, "refused at start-up"):
            for line in refused:
                self.say(f"refused: {line}")
            return
        try:
            family = family_of(hf_config)
        except ValueError as error:  # the prompts are laid out per family
            self.check(False, f"no synthetic prompt layout: {error}")
            return
        lora = f", LoRA rank {self.args.lora_rank}" if self.args.lora_rank else ""
        self.say(f"model: {family.model_type} ({'tiny random, built offline' if self.args.tiny else model_dir}), "
                 f"{self.args.device}, verl's {self.args.engine} engine{lora}, methods {','.join(self.args.methods)}")
        self.say(f"visual token ids: image {hf_config.image_token_id}, video {hf_config.video_token_id}")
        samples = self._samples(hf_config)
        normalisation = self._normalisation(model_dir, hf_config, family)
        references, adapter_dir = self._references(model_dir, samples, normalisation)
        self._engine_checks(model_dir, hf_config, samples, references, normalisation, adapter_dir)
        if self.args.model:
            from vgpo_verl.methods.scoring import DEFAULT_CHUNK_TOKENS

            hidden = hf_config.get_text_config().hidden_size
            self.say(f"scoring memory at hidden size {hidden}: {DEFAULT_CHUNK_TOKENS * hidden * 4 / 2**20:.0f} MiB for "
                     f"one {DEFAULT_CHUNK_TOKENS}-token float32 chunk, plus {hidden * 4 / 1024:.0f} KiB per "
                     "sequence of a micro-batch (its visual prototype)")

    def _model_dir(self) -> str:
        if self.args.model:
            return self.args.model
        model_dir = os.path.join(self.workdir, f"tiny_{self.args.tiny}")
        # VeOmni 0.1.12 loads fused experts only; transformers saves the hub's layout (one tensor per expert)
        tiny_model(self.args.tiny).save_pretrained(model_dir, save_original_format=self.args.engine != "veomni")
        return model_dir

    def _samples(self, hf_config) -> list[Sample]:
        """SAMPLES, response lengths 9, 5, 12, 7. GLM-4V's video goes alone: transformers' GLM-4V
        counts a video's frames among the image tokens, so one prompt cannot hold both."""
        generator = torch.Generator().manual_seed(0)
        video_images = 0 if hf_config.model_type == "glm4v" else 1
        return [synthetic_sample(hf_config, generator, images=1, response_len=9),
                synthetic_sample(hf_config, generator, images=0, response_len=5),
                synthetic_sample(hf_config, generator, images=2, response_len=12),
                synthetic_sample(hf_config, generator, images=video_images, videos=1, response_len=7)]

    def _normalisation(self, model_dir: str, hf_config, family) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The pixel rows' mean / std: the checkpoint's preprocessor_config.json when it has one (its
        patch size must be the vision tower's), else the family's released value. The file is read as
        it is (building the processor class may need torchvision, which a CPU machine may lack)."""
        vision_patch = hf_config.vision_config.patch_size
        path = os.path.join(model_dir, "preprocessor_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                processor = json.load(f)
            patch = processor.get("patch_size", vision_patch)
            self.check(patch == vision_patch, f"the image processor cuts {patch}-px patches, the vision tower reads "
                                              f"{vision_patch}-px")
            mean = processor.get("image_mean", family.image_mean)
            std = processor.get("image_std", family.image_std)
            source = "the checkpoint's preprocessor_config.json"
        else:
            mean, std, source = family.image_mean, family.image_std, f"{family.model_type}'s released processor"
        self.say(f"pixel normalisation ({source}): mean {tuple(round(m, 4) for m in mean)}, "
                 f"std {tuple(round(s, 4) for s in std)}")
        return tuple(mean), tuple(std)

    def _references(self, model_dir, samples, normalisation):
        """Reference per sample, computed before verl's engine exists (it patches the model classes).
        With --lora-rank, a random non-zero adapter is saved for verl and merged for the reference."""
        import transformers

        from vgpo_verl.doctor import reference

        device = self.args.device
        perturbation = (VPPO_SEED, VPPO_PROB, *normalisation)
        model = transformers.AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
        model = model.to(device).eval()
        base_perturbed, adapter_dir = [None] * len(samples), None
        if self.args.lora_rank:
            base_perturbed = [reference.log_probs_and_entropy(model, _to(s, device), perturbation)[0].cpu()
                              for s in samples]
            adapter_dir = os.path.join(self.workdir, "adapter")
            model = reference.random_lora_adapter(model, adapter_dir, self.args.lora_rank)
        references = []
        for sample, base in zip(samples, base_perturbed):
            sample = _to(sample, device)
            scores, has_visual = reference.scores(model, sample)
            log_probs, entropy = reference.log_probs_and_entropy(model, sample)
            perturbed, _ = reference.log_probs_and_entropy(model, sample, perturbation)
            references.append(Reference(scores.cpu(), has_visual, log_probs.cpu(), entropy.cpu(), perturbed.cpu(), base))
        del model
        gc.collect()
        return references, adapter_dir

    # ------------------------------------------------------------------ verl's engine

    def _flags(self, normalisation) -> dict:
        from vgpo_verl.methods.perturb import MEAN_KEY, PERTURB_FLAG, PROB_KEY, SEED_KEY, STD_KEY
        from vgpo_verl.methods.scoring import SCORE_FLAG

        flags = {}
        if "vgpo" in self.args.methods:
            flags[SCORE_FLAG] = True
        if "vppo" in self.args.methods:
            flags.update({PERTURB_FLAG: True, PROB_KEY: VPPO_PROB, SEED_KEY: VPPO_SEED,
                          MEAN_KEY: normalisation[0], STD_KEY: normalisation[1]})
        return flags

    def _layouts(self, hf_config) -> tuple:
        if self.args.engine == "veomni" and hf_config.model_type in ("qwen3_5", "qwen3_5_moe"):
            self.say("padded: not run (VeOmni's Qwen3.5 layers need packed sequences; refused at start-up)")
            return tuple(layout for layout in LAYOUTS if layout[1])
        return LAYOUTS

    def _engine_checks(self, model_dir, hf_config, samples, references, normalisation, adapter_dir) -> None:
        from vgpo_verl.doctor import verl_run

        lora = (("lora_rank", self.args.lora_rank), ("lora_adapter_path", adapter_dir)) if adapter_dir else ()
        run = (model_dir, samples, self._layouts(hf_config), self._flags(normalisation))
        options = {"lora": lora, "device": self.args.device, "backend": self.args.engine}
        if self.args.engine == "veomni" and self.args.device == "cpu":  # VeOmni on CPU needs 2 ranks
            try:
                scored, results = verl_run.run_layouts_on_ranks(2, self.workdir, *run, **options)
            except Exception:
                with open(os.path.join(self.workdir, "rank0.log"), encoding="utf-8", errors="replace") as log:
                    sys.stderr.write(log.read()[-20000:])  # the rank's own traceback
                raise
        else:
            verl_run.init_process_group(self.args.device)
            try:
                scored, results = verl_run.run_layouts(*run, **options)
            finally:
                torch.distributed.destroy_process_group()
        if "vgpo" in self.args.methods:
            self.say(f"scored module (vgpo, layer -1): {scored}")
        for layout, outputs in results.items():
            self._compare(layout, outputs, samples, references)

    def _compare(self, layout, outputs, samples, references) -> None:
        from vgpo_verl.methods.perturb import AUG_LOG_PROBS_KEY
        from vgpo_verl.methods.scoring import HAS_VISUAL_KEY, SCORE_KEY

        tol = self.tolerance
        parts = []
        log_prob = max(float((out[:-1].double() - ref.log_probs).abs().max())
                       for out, ref in zip(outputs["log_probs"], references))
        self.check(log_prob <= tol["log_prob"], f"{layout}: verl's log-probs differ from the reference by {log_prob:.1e}")
        parts.append(f"log-prob {self.delta('log-prob', log_prob):.1e}")
        if "vgpo" in self.args.methods:
            score = max(float((out.double() - ref.scores[-s.response_len:]).abs().max())
                        for out, ref, s in zip(outputs[SCORE_KEY], references, samples))
            self.check(score <= tol["score"], f"{layout}: vgpo scores differ from the reference by {score:.1e}")
            flags = [bool(h.item()) for h in outputs[HAS_VISUAL_KEY]]
            self.check(flags == [r.has_visual for r in references], f"{layout}: has_visual {flags}")
            parts.append(f"score {self.delta('score', score):.1e} (has_visual {flags})")
        if "entropy_shaping" in self.args.methods:
            present = self.check("entropy" in outputs, f"{layout}: verl wrote no entropy")
            if present:
                entropy = max(float((out.double() - ref.entropy).abs().max())
                              for out, ref in zip(outputs["entropy"], references))
                self.check(entropy <= tol["log_prob"], f"{layout}: entropy differs from the reference by {entropy:.1e}")
                parts.append(f"entropy {self.delta('entropy', entropy):.1e}")
        if "vppo" in self.args.methods:
            parts.append(self._compare_vppo(layout, outputs[AUG_LOG_PROBS_KEY], samples, references))
        self.say(f"{layout}: max |engine - reference|: " + "; ".join(parts))

    def _compare_vppo(self, layout, augmented, samples, references) -> str:
        tol = self.tolerance["log_prob"]
        aug = max(float((out.double() - ref.perturbed[-s.response_len:]).abs().max())
                  for out, ref, s in zip(augmented, references, samples))
        self.check(aug <= tol, f"{layout}: vppo's perturbed log-probs differ from the reference by {aug:.1e}")
        gaps = [float((out.double() - ref.log_probs[-s.response_len:]).abs().mean())
                for out, ref, s in zip(augmented, references, samples)]
        for gap, ref, name in zip(gaps, references, SAMPLES):
            if ref.has_visual:
                self.check(gap > tol, f"{layout}: blackening the patches did not change the log-probs ({name})")
            else:
                self.check(gap <= tol, f"{layout}: the perturbed pass changed a text-only sample by {gap:.1e}")
        text = (f"vppo perturbed log-prob {self.delta('perturbed log-prob', aug):.1e}, gap (mean |perturbed - clean|) "
                + ", ".join(f"{g:.3f} {n}" for g, n in zip(gaps, SAMPLES)))
        if references[0].base_perturbed is not None:
            base = max(float((out.double() - ref.base_perturbed[-s.response_len:]).abs().max())
                       for out, ref, s in zip(augmented, references, samples))
            self.check(base > tol, f"{layout}: vppo's perturbed forward ignored the LoRA adapter")
            text += f"; without the adapter it would differ by {base:.2f}"
        return text


def _to(sample: Sample, device: str) -> Sample:
    """The sample's tensors on `device`."""
    return dataclasses.replace(sample, **{f.name: getattr(sample, f.name).to(device) for f in dataclasses.fields(sample)
                                          if isinstance(getattr(sample, f.name), torch.Tensor)})
