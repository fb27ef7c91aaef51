"""Regional text-to-image: boxes + region prompts -> image.

Product (paper, "regional text-to-image"): a global FLUX.1 [dev] expert × one FLUX.1 [dev]
expert per region prompt, with per-token weight maps from the boxes that add up to 1 on
every token (inside a box ``p_global^(1−α)·p_region^α``, α = ``region_strength``; see
:func:`poe_backend.families.flux.runtime.regional_weights`), × VQAScore as a discriminative expert on the decoded clean predictions, with
particles and resampling (score-only Feynman-Kac path by default). The final image is the
particle with the highest final VQAScore, the paper's output (``select="draw"``: one drawn
by weight with the job's seed); every particle's score is recorded and all particles are
written. ``cond_weight`` > 0 conditions each region expert on the global one
(:func:`conditioning`).

Regions come from the bundle's objects: each object with a non-empty ``prompt`` and a box on
the first frame (``bbox_px[0]``, scaled to the run's resolution). Objects with a prompt but
no box there are skipped and listed in the manifest. The global prompt is the bundle's, or
the region prompts joined by ", ". With ``layout_parser`` and no boxed region in the bundle,
the LLM layout parser (:mod:`poe_backend.families.vqascore.layout`, the VQAScore backbone generating a
JSON layout) proposes regions from the global prompt; otherwise, or when its answer does not
parse, the global expert runs alone.

Baseline ``method="flux"``: FLUX.1 [dev] alone on the global prompt, no reward, with the
summed-velocity ODE (its own flow sampler) unless ``sampler`` is set.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from poe_backend.bundle import Bundle, BundleError
from poe_backend.sampling import Factor
from poe_backend.sampling.experts import Conditioning
from poe_backend.sampling.run import Selection
from poe_backend.tasks import images
from poe_backend.tasks.base import JobCost, Task, TaskContext, TaskResult, flux_tokens, planned_sampler_cost, seed_for


class RegionalParams(images.ImageParams):
    """Defaults from the regional miniature (``benchmarks/regional_digits.py``: two 8×8
    digits stacked, one learned caption-conditioned net as the global and the region
    experts with this task's weight maps, a classifier's log-probability per region as the
    reward, an independent classifier as the judge; figures in README.md, Measurements):

    * ``select="best"``: the best-scoring particle beat a draw by weight at every P > 1
      and for every sampler, by the widest margin of any setting (P = 8: reward 0.86 vs
      0.69, layout accuracy 1.00 vs 0.88); a draw gains nothing from P = 8 to 32.
    * ``particles=8``: 1 / 4 / 8 / 32 particles gave reward 0.52 / 0.79 / 0.86 / 0.93
      (layout accuracy 0.72 / 0.94 / 1.00 / 0.98), the shape of the paper's VQAScore
      0.567 / 0.879 / 0.904 at 1 / 8 / 32; 32 adds little for four times the cost (each
      particle is a full run of forwards).
    * ``sampler="fkc"``: at P = 1 its correctors, accepted by the reward's twist, reach
      reward 0.52 where the paper's annealed Langevin stays at the reward-free product's
      0.35; from P = 4 the two are within noise.
    * ``fk_scale=0.1``: the region maps sum to 1 on every token, but that does not make the
      weights the reward's: the transport increment is then ``−½Δu Σ_i λ_i ‖s_i − S‖²``,
      the experts' disagreement, estimated at tens to hundreds of nats per run at full size
      against a few nats from VQAScore. In the miniature it is small (0.07 nats against
      the reward's 1.5) and points the same way as the reward (correlation 0.49): scaled to
      about 5× the reward's spread it helped (reward 0.90 vs 0.86 at P = 8), at about 46×
      (resampling at most levels) it cost (0.90 vs 0.93 at P = 32). 0.1 maps the full-size
      estimate towards the regime that helped; 0 and 1 are indistinguishable at the
      miniature's scale, so this is an extrapolation the GPU check should confirm.
    """

    method: Literal["regional", "flux"] = "regional"
    particles: int = Field(8, ge=1, le=256, description="resampled by the VQAScore twist (and the experts' disagreement, scaled by fk_scale); the best-scoring one is the result")
    fk_scale: float = Field(0.1, ge=0.0, le=1.0, description="fkc: multiplies the experts' disagreement term of the weights (1: exact; 0: the reward alone); see the class docstring")
    guidance: float = Field(3.5, ge=0.0, le=100.0)
    region_strength: float = Field(0.8, ge=0.0, le=1.0, description="share of a region expert on its box's tokens")
    vqascore: bool = True
    vqa_prompts: Literal["global", "regions", "all"] = "all"
    vqa_strength: float = Field(1.0, ge=0.0, le=100.0)
    vqa_max_pixels: int = Field(448 * 448, ge=28 * 28, le=2048 * 2048)
    layout_parser: bool = Field(False, description="propose boxes with the LLM when the bundle has none")
    select: Selection = Field("best", description="the result: best = the particle with the highest VQAScore (the paper's output); draw = one drawn by weight with the seed")
    cond_weight: float = Field(0.0, ge=0.0, le=10.0, description="conditional experts: each region expert, the child, aligned to the global expert, its parent, over its box's tokens (0: off)")


class RegionalT2ITask(Task):
    name = "regional_t2i"
    Params = RegionalParams
    kind = "image"

    def model_roles(self, context: TaskContext) -> list[str]:
        from poe_backend.families.flux.runtime import FluxRuntime
        from poe_backend.families.vqascore.declaration import ROLES

        params: RegionalParams = context.params.effective()
        uses_vqa = params.method == "regional" and (params.vqascore or params.layout_parser)
        return FluxRuntime.roles(["dev"]) + (list(ROLES) if uses_vqa else [])

    def run(self, context: TaskContext) -> TaskResult:
        from poe_backend.families.flux import runtime as flux
        from poe_backend.models import lookup
        from poe_backend.models import specs
        from poe_backend.families.vqascore.declaration import ROLES

        params: RegionalParams = context.params.effective()
        bundle, timer = context.bundle, images.Timer()
        if bundle.task != self.name:
            raise BundleError("task", f"this bundle is for '{bundle.task}', not '{self.name}'")
        height, width = images.resolution(bundle, params.max_side)
        regions, skipped = read_regions(bundle, height, width)
        global_prompt = bundle.prompt.strip() or ", ".join(prompt for prompt, _ in regions)
        if not global_prompt:
            raise BundleError("prompt", "regional_t2i needs a prompt or per-object prompts")
        use_vqa = params.method == "regional" and params.vqascore
        parse = params.method == "regional" and params.layout_parser and not regions
        roles = flux.FluxRuntime.roles(["dev"]) + (list(ROLES) if use_vqa or parse else [])
        lookup.check_available(roles, context.models)
        layout = None
        if parse:
            from poe_backend.families.vqascore.layout import LayoutParser

            regions, answer = LayoutParser(context.models, device=context.device)(global_prompt, width, height)
            regions = regions[:MAX_PARSED_REGIONS]
            layout = {"answer": answer, "regions": len(regions)}
        use_regions = params.method == "regional" and bool(regions)
        seed = seed_for(context)

        runtime = flux.FluxRuntime(height, width, preset=context.models, device=context.device, max_sequence_length=params.max_sequence_length)
        region_prompts = [prompt for prompt, _ in regions] if use_regions else []
        embeddings = runtime.encode_prompts([global_prompt] + region_prompts)
        rewards, reward = [], None
        if use_vqa:  # loaded before the transformer is planned, so the plan sees its memory as taken
            from poe_backend.families.vqascore.scorer import VQAScorer, VQAScoreReward

            scorer = VQAScorer(context.models, device=context.device, max_pixels=params.vqa_max_pixels)
            vqa_prompts = {"global": [global_prompt], "regions": region_prompts or [global_prompt], "all": [global_prompt] + region_prompts}[params.vqa_prompts]
            reward = VQAScoreReward(scorer, lambda x0: runtime.decode_preview(x0, params.vqa_max_pixels), vqa_prompts, strength=params.vqa_strength)
            rewards.append(reward)
        # conditioned region experts back-propagate through [dev]: the plan sizes that pass and keeps it resident
        runtime.plan(["dev"], offload=params.offload, fp8_storage=params.fp8_storage, particles=params.particles, max_batch=params.max_batch,
                     conditioned=["dev"] if params.cond_weight > 0.0 and use_regions else [])
        factors = build_factors(runtime, embeddings, regions if use_regions else [], params)
        params = with_own_sampler(params)
        timer.mark("load_and_encode")

        product = flux.RegionalProduct(factors, rewards, conditioning=conditioning(factors, params.cond_weight))
        generator, noise = images.start_noise(seed, params.particles, runtime.event_shape)
        levels = images.levels_for(params, runtime.num_tokens)
        result = images.run_sampler(params, product, noise.to(context.device), levels, generator, context)
        timer.mark("sample")
        log_weights = result.log_weights.float().cpu()
        decoded = images.to_uint8(runtime.decode(result.particles))
        select = params.select if result.scores is not None else "draw"
        best = result.chosen_index(seed, select)
        outputs = images.write_outputs(context.out_dir, decoded[best], decoded if params.save_particles else None, log_weights)
        written, seen = images.write_expert_inputs(context.out_dir, weight_map_images(factors, height, width))
        outputs.update(written)
        timer.mark("decode_and_write")
        record = images.manifest(
            self.name,
            context,
            params,
            seed,
            prompt=global_prompt,
            regions=[{"prompt": prompt, "box_px": box} for prompt, box in regions],
            skipped_regions=skipped,
            expert_inputs=seen,
            layout_parser=layout,
            resolution=[height, width],
            chosen_index=best,
            selected_by="highest VQAScore" if select == "best" else "drawn by weight",
            particle_scores=None if result.scores is None else result.scores.tolist(),
            log_weights=log_weights.tolist(),
            vqascore=None if reward is None else reward.last_scores,
            sampler_stats={**result.stats(), "sampler": params.sampler, "levels": levels, "expert_calls": [f.expert.calls for f in factors]},
            placement=runtime.describe(),
            model_specs={role: specs.get_spec(role, context.models).describe() for role in roles},
            seconds=timer.seconds,
        )
        return TaskResult(kind="image", primary="image", outputs=outputs, manifest=record)

    def planned_cost(self, bundle: Bundle, params: RegionalParams) -> JobCost:
        """The global expert and one per boxed region at the run's resolution, one FLUX
        forward per evaluation ([dev] is guidance-distilled), a conditioned region expert
        three; the weight maps sum to 1 on every token. VQAScore is a reward, not counted
        (as in ``planned_nfe``). With the layout parser and no boxed region the regions are
        known only once it has run: the cost is then an upper bound, at
        :data:`MAX_PARSED_REGIONS` regions."""
        params = with_own_sampler(params.effective())
        height, width = images.resolution(bundle, params.max_side)
        regions, _ = read_regions(bundle, height, width)
        parse = params.method == "regional" and params.layout_parser and not regions
        count = MAX_PARSED_REGIONS if parse else len(regions) if params.method == "regional" else 0
        tokens = flux_tokens(height, width)
        children = range(1, 1 + count) if params.cond_weight != 0.0 else ()
        nfe, forwards = planned_sampler_cost(params.sampler, images.levels_for(params, tokens), expert_passes=[1] * (1 + count), total_weight=1.0, children=children,
                                             langevin_steps=params.langevin_steps, transport=params.transport)
        return JobCost(particles=params.particles, nfe=nfe, forwards=forwards, tokens=tokens, width=width, height=height, frames=1, exact=not parse)


#: Most regions the layout parser's answer may add (the first ones it lists): each is one
#: more expert, so this bounds a job's cost before the parser has run.
MAX_PARSED_REGIONS = 8


def with_own_sampler(params: RegionalParams) -> RegionalParams:
    """The ``flux`` baseline runs FLUX's own flow sampler (``summed_velocity``) unless the
    caller chose a sampler."""
    if params.method == "flux" and "sampler" not in params.model_fields_set:
        return params.model_copy(update={"sampler": "summed_velocity"})
    return params


def read_regions(bundle, height: int, width: int) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """``[(prompt, [x0, y0, x1, y1])]`` in run pixels from objects with a prompt and a box on
    the first frame; and the names of prompted objects without a box there."""
    scale_x, scale_y = width / bundle.width, height / bundle.height
    regions, skipped = [], []
    for obj in bundle.objects:
        if not obj.prompt.strip():
            continue
        box = obj.bbox_px[0]
        if box is None:
            skipped.append(obj.name)
            continue
        scaled = [int(box[0] * scale_x), int(box[1] * scale_y), max(int(box[0] * scale_x) + 1, round(box[2] * scale_x)), max(int(box[1] * scale_y) + 1, round(box[3] * scale_y))]
        regions.append((obj.prompt.strip(), scaled))
    return regions, skipped


def conditioning(factors: list[Factor], cond_weight: float) -> list[Conditioning]:
    """The paper's conditional experts for layouts: the global expert (factor 0) is every
    region expert's parent, and each region expert the child over its box's tokens (where
    its weight map is non-zero), so a region's content is drawn to agree with the global
    composition around it. Empty when ``cond_weight`` is 0 or there are no regions."""
    if cond_weight == 0.0:
        return []
    return [Conditioning(child=index, parents=(0,), weight=cond_weight, region=(factor.weight > 0).to(factor.weight.dtype)) for index, factor in enumerate(factors) if index > 0]


def weight_map_images(factors: list[Factor], height: int, width: int) -> dict[str, dict[str, np.ndarray]]:
    """Each expert's weight map (its share of every 16×16-pixel token, white = 1) as an
    ``(H, W)`` uint8 image: where the global expert and each region expert act."""
    from poe_backend.families.flux.runtime import TOKEN_PIXELS

    seen = {}
    for factor in factors:
        weight = torch.as_tensor(factor.weight, dtype=torch.float32).cpu().expand(height // TOKEN_PIXELS * (width // TOKEN_PIXELS), 1)
        tokens = weight.reshape(height // TOKEN_PIXELS, width // TOKEN_PIXELS).numpy()
        seen[factor.expert.name] = {"weight_map": images.as_uint8(np.kron(tokens, np.ones((TOKEN_PIXELS, TOKEN_PIXELS), dtype=np.float32)))}
    return seen


def build_factors(runtime, embeddings, regions, params: RegionalParams) -> list[Factor]:
    """The global expert and one expert per region, sharing one transformer."""
    from poe_backend.families.flux import runtime as flux

    global_map, region_maps = flux.regional_weights([box for _, box in regions], runtime.space.height, runtime.space.width, region_strength=params.region_strength)

    def expert(embedding, name: str) -> flux.FluxExpert:
        return runtime.expert("dev", embedding, guidance=params.guidance, max_batch=params.max_batch, name=name)

    if not regions:
        return [Factor(expert(embeddings[0], "global"), 1.0)]
    factors = [Factor(expert(embeddings[0], "global"), global_map.to(runtime.device))]
    for index, (weights, embedding) in enumerate(zip(region_maps, embeddings[1:])):
        factors.append(Factor(expert(embedding, f"region{index}"), weights.to(runtime.device)))
    return factors
