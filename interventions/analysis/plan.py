"""The work plan of identify, flow and reproduce, from the model's config alone (no weights).

Work is counted in model forwards and decoder layer-tokens (decoder layer calls x tokens in the
call): hardware-independent, so the same plan holds on any machine. A backward pass is counted as
two forwards' work. Time on an H100 is layer-tokens x `H100_SECONDS_PER_LAYER_TOKEN`, measured on
LLaVA-1.5-7B in bf16 (an exact head sweep: 1,025 passes of 4 x 695 tokens x 32 layers in 106 s).

The counts follow the analyses' loops: identify (attribution, the exact sweeps over every head or a
shortlist, the learned mask, the objective at each ranking's top set, gate-response curves), flow
(each edge knocked out around each layer, per prompt layout and instruction side), amplification
on validation, and lm-eval's runs (prompts scored once each; generated tokens beyond the first
are not counted, so those runs are a lower bound). The exact sweeps and flow's knockouts resume
each intervention's forward from its first intervened layer (`mechanism.resume`): a forward still,
but of fewer layers; flow's knockouts also from their receiving group's first position (the
positions before it are unchanged), plus one checking replay per batch. The plan assumes each
batch's kept layer inputs, keys and values fit the memory budget, and a causal prompt (PaliGemma's
prompt attends both ways: its knockouts replay every position, more than planned).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from interventions.analysis.defaults import LearnedMaskOptions, top_k

H100_SECONDS_PER_LAYER_TOKEN = 1.16e-6  # LLaVA-1.5-7B, bf16, one H100 (see the module docstring)
GATE_COUNT = 8  # gate_response.GATES: 0, 0.25, 0.5, 0.75, 1, 2, 4, 8 (1 is the shared unchanged model)
CURVE_RANKINGS = 4  # rankings whose top heads get gate-response curves
AMPLIFY_STEPS, AMPLIFY_SCALES = 30, 5  # amplify.AmplifyOptions: steps and the scales tried
LM_EVAL_TASKS = 4  # follow_image, follow_text and the two controls
# Above this many heads the exact sweeps score only a shortlist (identify.shortlist); at or below it
# (the organism's 48 heads) they score every head: cheap there, and the exhaustive check needs it.
FULL_SWEEP_HEADS = 64
SHORTLIST_FACTOR = 2  # the shortlist: 2 cheap rankings x k x this many heads, taken from each in turn


@dataclass
class Phase:
    """One phase's counted work: forwards, backwards and the layer-tokens of both."""

    name: str
    forwards: int
    backwards: int
    layer_tokens: int  # forward layer-tokens; a backward adds twice its forward's

    def h100_minutes(self) -> float:
        return self.layer_tokens * H100_SECONDS_PER_LAYER_TOKEN / 60

    def to_json(self) -> dict:
        return asdict(self) | {"h100_minutes": round(self.h100_minutes(), 3)}


def batch_tokens(rows: int, tokens: int, batch_size: int) -> list[int]:
    """Tokens (rows x padded width) of each batch when `rows` docs of `tokens` tokens are batched."""
    return [min(batch_size, rows - start) * tokens for start in range(0, rows, batch_size)]


def shortlist_size(num_heads: int, k: int, exact_sweep: str = "shortlist") -> int:
    """How many heads the exact sweeps score: all, or two cheap rankings' top k x factor (identify.shortlist)."""
    if exact_sweep == "full" or num_heads <= FULL_SWEEP_HEADS:
        return num_heads
    return min(num_heads, 2 * k * SHORTLIST_FACTOR)


def _phase(name: str, passes: int, backwards: int, tokens: list[int], layers: int) -> Phase:
    """`passes` forwards (`backwards` of them also backpropagated) over every batch of `tokens`."""
    return Phase(name, passes * len(tokens), backwards * len(tokens), (passes + 2 * backwards) * sum(tokens) * layers)


def _resumed_phase(name: str, starts: list[float], tokens: list[int], layers: int) -> Phase:
    """Per batch of `tokens`, the clean forward and one forward per intervention resumed from its start
    layer (`mechanism.resume`: it runs layers start..layers-1 only); assumes the kept inputs fit the budget."""
    resumed = sum(layers - start for start in starts)
    return Phase(name, (1 + len(starts)) * len(tokens), 0, round((layers + resumed) * sum(tokens)))


def head_sweep_starts(layers: int, heads: int, swept: int) -> list[float]:
    """The start layers of a sweep blocking `swept` heads one at a time: every head's layer when it
    sweeps all of them; a shortlist's heads taken as spread evenly over the depth (mean layer (L-1)/2)."""
    if swept == layers * heads:
        return [float(layer) for layer in range(layers) for _ in range(heads)]
    return [(layers - 1) / 2] * swept


def identify_plan(layers: int, heads: int, follow: list[int], control: list[int], *, fraction: float = 0.05,
                  exact: bool = True, learned: bool = True, curve_heads: int = 3,
                  options: LearnedMaskOptions = LearnedMaskOptions(), exact_sweep: str = "shortlist") -> list[Phase]:
    """identify's phases over follow and control batches of the given token counts (`batch_tokens`)."""
    num_heads = layers * heads
    k = top_k(num_heads, fraction)
    both = follow + control
    swept = shortlist_size(num_heads, k, exact_sweep)
    phases = [_phase("attribution", 1, 1, follow, layers)]
    if control:
        phases.append(_phase("objective (open model)", 1, 0, both, layers))
    if learned and control:
        starts = len(options.init_logits)
        refined = min(options.refine_sets, k * options.candidates)
        descents = starts * options.steps + math.ceil(refined / options.candidates)
        phases.append(_phase("learned mask", descents + starts + refined, descents, both, layers))
    if exact:
        starts = head_sweep_starts(layers, heads, swept)
        phases.append(_resumed_phase("ablation sweep", starts, follow, layers))
        if control:
            phases.append(_resumed_phase("selective sweep", starts, both, layers))
    rankings = 1 + (1 + bool(control)) * exact + (learned and bool(control))
    if control:
        phases.append(_phase("objective at each top set", rankings, 0, both, layers))
    # curves for each ranking's top heads, once per distinct head: the rankings share about half of them;
    # each scaled forward resumes at its head's layer, planned as spread over the depth
    curves = math.ceil(min(k, curve_heads) * (rankings + 1) / 2) if curve_heads else 0
    phases.append(_resumed_phase("gate response", [(layers - 1) / 2] * curves * (GATE_COUNT - 1), follow, layers)
                  if curves else _phase("gate response", 0, 0, follow, layers))
    return phases


@dataclass(frozen=True)
class FlowBatch:
    """One flow batch: its rows x padded width, and per runnable edge the rows x the width from the edge's
    receiving group's first position on (what each of its knockouts recomputes)."""

    tokens: int
    suffixes: tuple[int, ...]


def flow_plan(layers: int, batches: list[FlowBatch], window: int | None = None) -> list[Phase]:
    """flow's knockouts: per batch the clean forward, one checking replay from the first position any
    edge changes, and edges x layers knockouts, each resumed from its window's first layer and its
    edge's first position (`window`: the knockout window, default flow.default_window)."""
    from interventions.analysis.flow import default_window
    from interventions.mechanism.knockout import layer_window

    k = default_window(layers) if window is None else window
    starts = [layer_window(centre, k, layers)[0] for centre in range(layers)]
    forwards, layer_tokens = 0, 0
    for batch in batches:
        cut = [suffix for suffix in batch.suffixes if suffix < batch.tokens]
        forwards += 1 + bool(cut) + len(batch.suffixes) * len(starts)
        layer_tokens += layers * batch.tokens + (layers - min(starts)) * max(cut, default=0)
        layer_tokens += sum(layers - start for start in starts) * sum(batch.suffixes)
    return [Phase("flow knockouts", forwards, 0, layer_tokens)]


def amplify_plan(layers: int, follow: list[int], control: list[int], alphas: int) -> list[Phase]:
    """Amplification on validation: open model, learned gates, the scales and the alphas tried."""
    return [_phase("amplification (validation)", 1 + AMPLIFY_STEPS + AMPLIFY_SCALES + alphas, AMPLIFY_STEPS,
                   follow + control, layers)]


def _last_position_phase(name: str, starts: list[int], tokens: list[int], rows: list[int], layers: int) -> Phase:
    """Per batch of `tokens` (`rows` prompts), the clean forward, one checking replay and one replay per
    intervention acting at the last position only: layers start..layers-1 on that position alone."""
    replays = 1 + len(starts)
    forwards = (1 + replays) * len(tokens)
    return Phase(name, forwards, 0, layers * sum(tokens)
                 + (layers - min(starts) + sum(layers - start for start in starts)) * sum(rows))


def steer_plan(layers: int, follow: tuple[list[int], list[int]], control: tuple[list[int], list[int]],
               directions: int, alphas: int) -> list[Phase]:
    """Steering on validation: one residual pass over the follow batches, then each direction's layer x alpha
    settings over the follow and control batches ((tokens, rows) per batch; the amplification's objective,
    already open), each resumed from its layer at the last position, where it steers. An upper bound on the
    controls: the search skips those of settings that can no longer win (`amplify.best_of`), scoring
    CONTROL_ROUND settings per clean forward."""
    from interventions.analysis.amplify import CONTROL_ROUND

    starts = [layer for layer in range(layers) for _ in range(alphas)]
    rounds = [starts[i:i + CONTROL_ROUND] for i in range(0, len(starts), CONTROL_ROUND)]
    parts = [_phase("fit", 1, 0, follow[0], layers)]
    for _ in range(directions):
        parts.append(_last_position_phase("follow", starts, *follow, layers))
        parts += [_last_position_phase("controls", part, *control, layers) for part in rounds]
    return [Phase("steering (validation)", sum(p.forwards for p in parts), 0, sum(p.layer_tokens for p in parts))]


def lm_eval_plan(layers: int, runs: int, prompts: list[int]) -> list[Phase]:
    """lm-eval's runs, each scoring every task's prompts (batches of the given tokens) once."""
    phase = _phase("lm-eval", runs, 0, prompts, layers)
    phase.name = f"lm-eval ({runs} runs)"
    return [phase]


@dataclass
class Workload:
    """The token counts of each batch every phase runs over (`batch_tokens` or measured ones)."""

    identify_follow: list[int]
    identify_control: list[int]
    flow: list[FlowBatch]
    lens: list[int]
    amplify_follow: list[int]
    amplify_control: list[int]
    amplify_rows: tuple[list[int], list[int]]  # prompts per batch of amplify_follow, of amplify_control
    lm_eval: list[int]  # one run's prompts over every task


def measured_tokens(model_config, processor, docs: list[dict], batch_size: int) -> list[int]:
    """Rows x padded width of each batch of `docs`, encoded as the analyses encode them (processor only)."""
    from interventions.analysis.batches import encode_inputs

    return [int(encode_inputs(model_config, processor, docs[start:start + batch_size])[0]["input_ids"].numel())
            for start in range(0, len(docs), batch_size)]


def flow_batches(model_config, processor, docs: list[dict], batch_size: int) -> list[FlowBatch]:
    """flow's batches of `docs` as flow_sweep forms them (per layout and side), with each runnable edge's
    suffix, from the token groups of the encoded prompts (processor only)."""
    from interventions.analysis.batches import encode_inputs
    from interventions.analysis.flow import EDGES, edge_masks, first_position, split_docs, why_inapplicable
    from interventions.mechanism.token_groups import doc_token_groups, image_token_id

    batches = []
    for (layout, _side), part in split_docs(docs).items():
        encoded = []
        for start in range(0, len(part), batch_size):
            chunk = part[start:start + batch_size]
            inputs, texts = encode_inputs(model_config, processor, chunk)
            encoded.append((inputs["input_ids"].shape, doc_token_groups(inputs, texts, chunk, processor.tokenizer,
                                                                        image_token_id(model_config))))
        runnable = [edge for edge in EDGES if why_inapplicable([groups for _, groups in encoded], edge, layout) is None]
        batches += [FlowBatch(rows * width, tuple(rows * (width - first_position(edge_masks(groups, edge)[0]))
                                                  for edge in runnable))
                    for (rows, width), groups in encoded]
    return batches


def docs_workload(model_config, processor, batch_size: int, limit: int, identify_docs: list[dict],
                  flow_docs: list[dict], amplify_docs: list[dict]) -> Workload:
    """The Workload of reproduce's docs, their prompt lengths measured with the processor; lm-eval's
    `limit` prompts per task are taken as long as the identify docs on average."""
    from interventions.analysis.identify import split_docs

    def tokens(docs):
        return measured_tokens(model_config, processor, docs, batch_size)

    follow, control = split_docs(identify_docs)
    amplify_follow, amplify_control = split_docs(amplify_docs)
    per_row = round(sum(tokens(identify_docs)) / len(identify_docs))
    return Workload(tokens(follow), tokens(control), flow_batches(model_config, processor, flow_docs, batch_size),
                    tokens(flow_docs), tokens(amplify_follow), tokens(amplify_control),
                    (batch_tokens(len(amplify_follow), 1, batch_size), batch_tokens(len(amplify_control), 1, batch_size)),
                    batch_tokens(LM_EVAL_TASKS * limit, per_row, batch_size))


def shapes_workload(model_config, processor, config) -> Workload:
    """The Workload of `modarb reproduce` on shapes data with `config` (a ReproduceConfig)."""
    from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
    from interventions.analysis.defaults import DEFAULT_LAYOUTS

    return docs_workload(model_config, processor, config.batch_size, config.limit, shapes_docs(config.analysis_items),
                         shapes_docs(config.analysis_items, FOLLOW_KINDS, layouts=DEFAULT_LAYOUTS),
                         shapes_docs(config.amplify_items))


def read_model(model: str | None, trust_remote_code: bool = False):
    """(config, processor) of `model` (default: the organism), without its weights; one line when it cannot load."""
    from transformers import AutoConfig

    from interventions.model.model_files import check_pretrained
    from interventions.model.processors import load_processor
    from interventions.organism import organism_path

    path = str(organism_path() if model is None else model)
    check_pretrained(path, trust_remote_code=trust_remote_code)
    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), \
        load_processor(path, trust_remote_code=trust_remote_code)


def shape(model_config) -> tuple[int, int]:
    text = model_config.get_text_config()
    return text.num_hidden_layers, text.num_attention_heads


def reproduce_work(config) -> list[Phase]:
    """`modarb reproduce --plan`: the plan for `config` (a ReproduceConfig), from the config and processor only."""
    from interventions.analysis.data import CONTROL_KINDS, FOLLOW_KINDS, analysis_docs, resolve_data
    from interventions.analysis.defaults import DEFAULT_LAYOUTS

    source = resolve_data(config.data, config.mc2_json, config.mc2_images,
                          uses=[("analysis", config.analysis_items), ("test", config.limit)])
    model_config, processor = read_model(config.model, config.trust_remote_code)

    def docs(n, kinds, layouts=("standard",)):
        return analysis_docs(source, model_config, processor.tokenizer, n, kinds, layouts)[0]

    kinds = (*FOLLOW_KINDS, *CONTROL_KINDS)
    work = docs_workload(model_config, processor, config.batch_size, config.limit, docs(config.analysis_items, kinds),
                         docs(config.analysis_items, FOLLOW_KINDS, DEFAULT_LAYOUTS), docs(config.amplify_items, kinds))
    return reproduce_plan(*shape(model_config), work, config, config.exact_sweep)


def reproduce_plan(layers: int, heads: int, work: Workload, config, exact_sweep: str = "shortlist") -> list[Phase]:
    """Every phase of `modarb reproduce` with `config` (a ReproduceConfig) on a layers x heads decoder."""
    from interventions.analysis.defaults import METHODS
    from interventions.analysis.steer import SteerOptions

    steer = SteerOptions()
    directions = len(steer.directions) * config.steers
    runs = reproduce_runs(len(config.fractions), config.draws, len(METHODS), len(config.alphas)) + directions
    steering = steer_plan(layers, (work.amplify_follow, work.amplify_rows[0]), (work.amplify_control, work.amplify_rows[1]),
                          directions, len(steer.alphas))
    return [*flow_plan(layers, work.flow, config.window),
            _phase("logit lens", 1, 0, work.lens, layers),
            *identify_plan(layers, heads, work.identify_follow, work.identify_control, fraction=config.top,
                           options=LearnedMaskOptions(steps=config.learned_steps), exact_sweep=exact_sweep),
            *amplify_plan(layers, work.amplify_follow, work.amplify_control, len(config.alphas)),
            *(steering if directions else []),
            *lm_eval_plan(layers, runs, work.lm_eval)]


def reproduce_runs(fractions: int, draws: int, methods: int, alphas: int) -> int:
    """Baseline, top + random draws per fraction, the other rankings' top sets, learned gates, the alphas
    (and one per steering direction, counted by the caller)."""
    return 1 + fractions * (1 + draws) + (methods - 1) + 1 + alphas


def totals(phases: list[Phase]) -> Phase:
    return Phase("total", sum(p.forwards for p in phases), sum(p.backwards for p in phases),
                 sum(p.layer_tokens for p in phases))


def table(phases: list[Phase]) -> str:
    """The plan as aligned text rows: phase, forwards, backwards, layer-tokens, H100 minutes."""
    rows = [("phase", "forwards", "backwards", "layer-tokens", "H100 min")]
    rows += [(p.name, f"{p.forwards:,}", f"{p.backwards:,}", f"{p.layer_tokens:,}", f"{p.h100_minutes():.2f}")
             for p in [*phases, totals(phases)]]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


class WorkCounter:
    """Forwards and decoder layer-tokens actually run, counted by hooks on the decoder's attention
    modules (one call per layer and forward), per named phase. Use as a context manager. A forward
    is counted at the last layer, which every forward reaches, resumed ones (`mechanism.resume`) too."""

    def __init__(self, model) -> None:
        from interventions.mechanism.locate import locate_heads

        self.attentions = locate_heads(model).attentions
        self.forwards, self.layer_tokens, self.phases = 0, 0, []
        self._handles = []

    def __enter__(self) -> WorkCounter:
        last = len(self.attentions) - 1
        self._handles = [attention.register_forward_pre_hook(self._hook(i == last), with_kwargs=True)
                         for i, attention in enumerate(self.attentions)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, last: bool):
        def count(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self.layer_tokens += hidden.shape[0] * hidden.shape[1]
            self.forwards += last
        return count

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the work done inside the block as phase `name` (backwards are not counted)."""
        forwards, tokens = self.forwards, self.layer_tokens
        yield
        self.phases.append(Phase(name, self.forwards - forwards, 0, self.layer_tokens - tokens))


def identify_work(model: str | None, docs: list[dict], batch_size: int, trust_remote_code: bool = False,
                  **options) -> list[Phase]:
    """`modarb identify --plan`: identify's plan on `docs` (options: identify_plan's keywords)."""
    from interventions.analysis.identify import split_docs

    model_config, processor = read_model(model, trust_remote_code)
    follow, control = split_docs(docs)
    return identify_plan(*shape(model_config), measured_tokens(model_config, processor, follow, batch_size),
                         measured_tokens(model_config, processor, control, batch_size) if control else [], **options)


def flow_work(model: str | None, docs: list[dict], batch_size: int, trust_remote_code: bool = False,
              window: int | None = None) -> list[Phase]:
    """`modarb flow --plan`: the knockouts (in windows of `window` layers) and the logit lens on `docs`."""
    model_config, processor = read_model(model, trust_remote_code)
    layers, _ = shape(model_config)
    return [*flow_plan(layers, flow_batches(model_config, processor, docs, batch_size), window),
            _phase("logit lens", 1, 0, measured_tokens(model_config, processor, docs, batch_size), layers)]
