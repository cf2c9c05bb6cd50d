"""The CapFilt job: caption every web image by nucleus sampling, score the web text and the
synthetic captions with the filter's ITM head, keep those at or above the threshold.

One step per batch of [num_local_devices, per_device_batch] images, under `jax.pmap` with the
captioner's and the filter's params replicated on every local device:
  A (device): captioner image tokens -> N nucleus-sampled captions per image; filter image tokens
     -> ITM match probability of the web text ([CLS] replaced by [ENC]).
  host: captions decoded, cleaned with pre_caption (as training data is) and re-tokenised with
     [ENC] first: the filter reads the text a later pre-training would read.
  B (device): ITM match probability of each synthetic caption, on the filter image tokens that
     step A left on the devices.
Sampling draws with key(seed) folded with the record index and the sample number, so captions
depend on neither the device count, the batch size nor restarts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from blip_jax import checkpoint, decoding, tokenizer as tok
from blip_jax.capfilt import output
from blip_jax.capfilt.defaults import RESULT_KEYS, CapFiltConfigError, check_config
from blip_jax.models.blip import Blip
from blip_jax.models.config import BlipConfig


# -- models ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Models:
    captioner: Blip
    filter: Blip
    captioner_params: Any
    filter_params: Any


def load_models(config: ml_collections.ConfigDict) -> Models:
    """Loads both checkpoints and checks each can do its job and that they read the same images."""
    cap_cfg, cap_params = checkpoint.load_model(config.captioner_checkpoint)
    fil_cfg, fil_params = checkpoint.load_model(config.filter_checkpoint)
    _check_roles(cap_cfg, fil_cfg, config)
    return Models(Blip(cap_cfg), Blip(fil_cfg), cap_params, fil_params)


def _check_roles(cap: BlipConfig, fil: BlipConfig, config: ml_collections.ConfigDict) -> None:
    if not cap.text_decoder or cap.decoder_context != "image":
        raise CapFiltConfigError(f"captioner_checkpoint {config.captioner_checkpoint} has no "
                                 f"image-grounded text decoder: use a captioning or pre-trained checkpoint")
    if not (fil.text_encoder and fil.itc_itm_heads):
        raise CapFiltConfigError(f"filter_checkpoint {config.filter_checkpoint} has no text encoder "
                                 f"with an ITM head: use a retrieval/filter or pre-trained checkpoint")
    if cap.vision.image_size != fil.vision.image_size:
        raise CapFiltConfigError(
            f"captioner reads {cap.vision.image_size}px images, the filter {fil.vision.image_size}px: "
            f"CapFilt loads each image once; fine-tune both at one resolution")
    if config.max_tokens > fil.text.max_position_embeddings:
        raise CapFiltConfigError(f"max_tokens={config.max_tokens} exceeds the filter's "
                                 f"{fil.text.max_position_embeddings} position embeddings")
    prefix = decoding.prompt_ids(tok.BlipTokenizer(), config.prompt)
    if len(prefix) >= config.max_length:
        raise CapFiltConfigError(f"prompt {config.prompt!r} is {len(prefix)} tokens with [DEC]; "
                                 f"max_length={config.max_length} leaves no room to caption")
    if config.max_length > cap.text.max_position_embeddings:
        raise CapFiltConfigError(f"max_length={config.max_length} exceeds the captioner's "
                                 f"{cap.text.max_position_embeddings} position embeddings")


# -- the two device steps -------------------------------------------------------------------------

def _match_probability(model: Blip, params, ids, mask, image_tokens) -> jax.Array:
    """ITM match probability [B] (softmax over the 2 logits, index 1); ids start with [ENC]."""
    logits = model.apply({"params": params}, ids, mask, image_tokens, method=Blip.itm_logits)
    return jax.nn.softmax(logits, axis=-1)[:, 1]


def sample_keys(seed: int, index: jax.Array, num_captions: int) -> jax.Array:
    """Per (record, sample) PRNG keys [B, num_captions] from record indexes [B]."""
    base = jax.random.key(seed)
    per_record = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    return jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(
        jnp.arange(num_captions)))(per_record)


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """What the sampled captions depend on (hashable: a static argument of the pmapped steps)."""

    prefix: tuple[int, ...]  # [DEC] + prompt tokens
    top_p: float
    top_k: int
    temperature: float
    max_length: int
    min_length: int
    repetition_penalty: float
    seed: int
    num_captions: int
    decoding: str = "nucleus"  # or "beam"
    num_beams: int = 3


def _step_a(cap: Blip, fil: Blip, opts: SampleOptions, cap_params, fil_params, images, web_ids,
            web_mask, index):
    """Per device: images [B, H, W, 3], web_ids/web_mask [B, L] ([CLS] first), index [B] ->
    (caption tokens [B, N, max_length], web match probability [B], filter image tokens)."""
    context = cap.apply({"params": cap_params}, images, method=Blip.image_features)
    prefix = jnp.asarray(opts.prefix, jnp.int32)

    def one(ctx, key):  # one caption of one image with its own key, whatever the batch
        return decoding.nucleus_sample(
            cap, cap_params, ctx[None], prefix, key, top_p=opts.top_p, top_k=opts.top_k,
            temperature=opts.temperature, max_length=opts.max_length,
            min_length=opts.min_length, repetition_penalty=opts.repetition_penalty)[0]

    if opts.decoding == "beam":  # one caption per image, the beam's best: [B, 1, max_length]
        tokens = decoding.beam_search(
            cap, cap_params, context, prefix, num_beams=opts.num_beams, max_length=opts.max_length,
            min_length=opts.min_length, repetition_penalty=opts.repetition_penalty)[:, None]
    else:
        keys = sample_keys(opts.seed, index, opts.num_captions)
        tokens = jax.vmap(jax.vmap(one, in_axes=(None, 0)))(context, keys)
    image_tokens = fil.apply({"params": fil_params}, images, method=Blip.image_features)
    web = _match_probability(fil, fil_params, web_ids.at[:, 0].set(tok.ENC_ID), web_mask,
                             image_tokens)
    return tokens, web, image_tokens


def _step_b(fil: Blip, num: int, fil_params, image_tokens, ids, mask):
    """Per device: ids/mask [B * N, L] ([ENC] first; row b * N + s is caption s of image b)
    -> match probability [B, N]."""
    repeated = jnp.repeat(image_tokens, num, axis=0)
    return _match_probability(fil, fil_params, ids, mask, repeated).reshape(-1, num)


@functools.lru_cache(maxsize=None)
def _pmapped(devices: tuple[jax.Device, ...]):
    """One pmapped pair per device set, so that runs in one process reuse the compilation."""
    return (jax.pmap(_step_a, static_broadcasted_argnums=(0, 1, 2), devices=devices),
            jax.pmap(_step_b, static_broadcasted_argnums=(0, 1), devices=devices))


class Steps:
    """The pmapped steps A and B for `devices`, with both models' params replicated there."""

    def __init__(self, models: Models, config: ml_collections.ConfigDict,
                 devices: Sequence[jax.Device]) -> None:
        self.devices = tuple(devices)
        self.tokenizer = tok.BlipTokenizer()
        prefix = decoding.prompt_ids(self.tokenizer, config.prompt)
        self.opts = SampleOptions(tuple(int(t) for t in prefix), float(config.top_p),
                                  int(config.top_k),
                                  float(config.temperature), int(config.max_length),
                                  int(config.min_length), float(config.repetition_penalty),
                                  int(config.seed), int(config.num_captions),
                                  str(config.decoding), int(config.num_beams))
        self.max_words, self.max_tokens = config.max_words, config.max_tokens
        self.models = models
        mesh = Mesh(np.array(self.devices), ("devices",))
        sharding = NamedSharding(mesh, PartitionSpec("devices"))
        n = len(self.devices)
        replicate = lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))),
                                             sharding)
        self.captioner_params = jax.tree_util.tree_map(replicate, models.captioner_params)
        self.filter_params = jax.tree_util.tree_map(replicate, models.filter_params)
        self._step_a, self._step_b = _pmapped(self.devices)

    def dispatch(self, batch: dict[str, np.ndarray]):
        """Starts step A on a host batch with leading dims [devices, per_device_batch]."""
        m = self.models
        return self._step_a(m.captioner, m.filter, self.opts, self.captioner_params,
                            self.filter_params, batch["image"], batch["text_ids"],
                            batch["text_mask"], batch["index"])

    def finish(self, handle) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """Host part and step B: (captions [rows][N] as cleaned text, synthetic match probability
        [rows, N], web match probability [rows]), rows = devices * per_device_batch."""
        tokens, web, image_tokens = handle
        tokens = np.asarray(tokens)
        d, b, n, length = tokens.shape
        texts = decoding.strip_and_decode(self.tokenizer, tokens.reshape(-1, length),
                                          len(self.opts.prefix))
        texts = [tok.pre_caption(t, self.max_words) for t in texts]
        ids, mask = self.tokenizer.encode(texts, self.max_tokens, bos_id=tok.ENC_ID)
        synth = self._step_b(self.models.filter, n, self.filter_params, image_tokens,
                             ids.reshape(d, b * n, -1),
                             mask.reshape(d, b * n, -1))
        captions = [texts[r * n:(r + 1) * n] for r in range(d * b)]
        return captions, np.asarray(synth).reshape(d * b, n), np.asarray(web).reshape(d * b)


# -- input ----------------------------------------------------------------------------------------

def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Runs `it` in a background thread so image decoding overlaps the device steps."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def work():
        try:
            for item in it:
                q.put(item)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
        q.put(end)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


def resolve_sources(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """(TFDS name, split) pairs; the "synthetic" alias names the configured synthetic dataset."""
    from blip_jax.data import prepare
    synthetic = prepare.synthetic_dataset_name(**prepare.synthetic_kwargs(config))
    return [(synthetic if name == "synthetic" else name, split) for name, split in config.sources]


# -- the driver -----------------------------------------------------------------------------------

class _Progress:
    """One carriage-return line on stderr: done/total, rate, ETA (process 0 only)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.start_done, self.enabled = total, done, enabled
        self.t0 = time.time()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        rate = (done - self.start_done) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        sys.stderr.write(f"\rcapfilt: {done}/{self.total} images ({100 * done / max(self.total, 1):.1f}%)"
                         f" {rate:.2f} img/s ETA {eta_text}  ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _record(batch: dict[str, np.ndarray], row: int, captions, synth, web, threshold: float):
    """The result of one input record (see output.py for the layout)."""
    valid = bool(batch["valid"][row])
    out = {"index": int(batch["index"][row]), "image_id": int(batch["image_id"][row]),
           "image_path": str(batch["image_path"][row]), "noise": int(batch["noise"][row]),
           "valid": valid, "web": None, "synthetic": []}
    if valid:  # unreadable image or empty web caption: nothing from this record is kept
        score = float(web[row])
        out["web"] = {"caption": str(batch["caption"][row]), "score": score, "kept": score >= threshold}
        out["synthetic"] = [{"caption": c, "score": float(s), "kept": bool(c) and float(s) >= threshold}
                            for c, s in zip(captions[row], synth[row])]
    return out


def process_shards(config: ml_collections.ConfigDict, workdir: str, plan: output.ShardPlan,
                   sources: list[tuple[str, str]], data_dir: str,
                   devices: Sequence[jax.Device], image_size: int, steps_factory) -> dict[str, float]:
    """Computes and writes every result shard of this process not already in `workdir`.
    Returns {"images": records computed now, "timed_images" / "seconds": those after the first
    batch (which includes compilation) and their time}."""
    from blip_jax.data.pipeline import scan_records  # grain is slow to import

    plan.remove_partial(workdir)
    done = plan.done(workdir)
    missing = [k for k in range(plan.num_shards) if k not in done]
    written = sum(plan.size(k) for k in done)  # positions in finished shards
    progress = _Progress(plan.length, written, enabled=jax.process_index() == 0)
    stats = {"images": 0, "timed_images": 0, "seconds": 0.0}
    if not missing:
        return stats
    steps = steps_factory()
    rows = len(devices) * config.per_device_batch
    batches = scan_records(data_dir, sources, batch_size=rows, image_size=image_size,
                           max_words=config.max_words, max_tokens=config.max_tokens,
                           shard_index=plan.process, shard_count=plan.count,
                           worker_count=config.workers)
    buffers: dict[int, list] = {k: [] for k in missing}
    t_first = None

    def consume(pos0: int, batch, result) -> None:
        nonlocal written, t_first
        captions, synth, web = result
        for row in range(rows):
            pos = pos0 + row
            shard = pos // config.records_per_shard
            if shard not in buffers:
                continue  # past the end, or a shard already on disk
            expected = plan.record_index(pos)
            if expected is not None:
                rec = _record(batch, row, captions, synth, web, config.threshold)
                if rec["index"] != expected:
                    raise RuntimeError(f"scan_records gave record {rec['index']} at position {pos} "
                                       f"of process {plan.process}; expected {expected}")
                buffers[shard].append(rec)
                stats["images"] += 1
                stats["timed_images"] += t_first is not None
            if pos == plan.bounds(shard)[1] - 1:  # the shard's last position: it is complete
                plan.write(workdir, shard, buffers.pop(shard))
                written += plan.size(shard)
                progress.update(written)
        if t_first is None:
            t_first = time.time()  # the first batch includes compilation: not timed

    pending = None
    for number, batch in enumerate(_prefetch(batches)):
        pos0 = number * rows
        if pos0 >= plan.length:
            break
        last = min(pos0 + rows, plan.length) - 1
        if not any(k in buffers for k in range(pos0 // config.records_per_shard,
                                               last // config.records_per_shard + 1)):
            continue  # every record of this batch is in a finished shard
        device_batch = {k: batch[k].reshape(len(devices), config.per_device_batch, *batch[k].shape[1:])
                        for k in ("image", "text_ids", "text_mask", "index")}
        handle = steps.dispatch(device_batch)  # async: runs while the previous batch is finished
        if pending is not None:
            consume(pending[0], pending[1], steps.finish(pending[2]))
        pending = (pos0, batch, handle)
        if not buffers:
            break
    if pending is not None:
        consume(pending[0], pending[1], steps.finish(pending[2]))
    progress.close()
    if buffers:
        raise RuntimeError(f"the input ended before shards {sorted(buffers)} of process "
                           f"{plan.process} were complete")
    stats["seconds"] = time.time() - t_first if t_first else 0.0
    return stats


def run(config: ml_collections.ConfigDict, workdir: str, *,
        devices: Optional[Sequence[jax.Device]] = None) -> dict[str, Any]:
    """Runs (or resumes) CapFilt; returns the summary (also in workdir/summary.json).

    devices: the local devices to pmap over (default: all of this process's devices)."""
    from blip_jax.capfilt.dataset import BlipCapfilt, write_dataset
    from blip_jax.data.sources import RecordSource
    from blip_jax.data.synthetic import IS_NOISE, WEB_TEXT_KINDS

    check_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    data_dir = os.path.abspath(os.path.expanduser(config.data_dir))
    devices = list(devices or jax.local_devices())
    sources = resolve_sources(config)
    total = len(RecordSource(data_dir, sources))  # one shard: every record
    plan = output.ShardPlan(total, jax.process_index(), jax.process_count(), config.records_per_shard)
    models = load_models(config)  # checked before the workdir records these settings
    fingerprint = {k: config[k] for k in RESULT_KEYS}
    fingerprint.update(process_count=plan.count, total_records=total)
    output.check_job(workdir, fingerprint)
    stats = process_shards(config, workdir, plan, sources, data_dir, devices,
                           models.captioner.config.vision.image_size,
                           lambda: Steps(models, config, devices))
    if plan.count > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("blip_jax_capfilt_shards_done")

    records = output.load_results(workdir, total, plan.count, config.records_per_shard)
    summary = output.summarize(records, WEB_TEXT_KINDS, IS_NOISE)
    rate = stats["timed_images"] / stats["seconds"] if stats["seconds"] else None
    summary_path = os.path.join(workdir, output.SUMMARY_FILE)
    if rate is None and os.path.exists(summary_path):  # a rerun of a finished job keeps its figure
        rate = output.read_json(summary_path).get("images_per_sec")
    summary.update(devices=len(devices), processes=plan.count,
                   images_computed_this_run=stats["images"], images_per_sec=rate)
    out_dir = os.path.abspath(os.path.expanduser(config.output_data_dir or config.data_dir))
    pairs = output.kept_pairs(records)
    summary["dataset"] = f"{BlipCapfilt.name}/{config.output_name}" if pairs else None
    summary["dataset_dir"] = out_dir
    if jax.process_index() == 0:
        if pairs:
            written = write_dataset(data_dir=out_dir, name=config.output_name, pairs=pairs,
                                    source_data_dir=data_dir, sources=sources,
                                    origin=f"capfilt {workdir}")
            assert written == summary["dataset"], (written, summary["dataset"])
        else:
            print("capfilt: the filter kept no text: no dataset written", file=sys.stderr)
        summary["json"] = list(output.write_release_json(workdir, records))
        output.write_json_atomic(summary_path, summary)
        print(output.format_summary(summary), flush=True)
    if plan.count > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("blip_jax_capfilt_outputs_done")
    return summary
