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
Sampling draws with key(seed) folded with the record index (the record's number in the
concatenated sources, fixed by the sources) and the sample number, so captions depend on
neither the device count, the batch size, the process count, which process computes a record
nor restarts.

Work: the records are divided into units of records_per_shard consecutive records (output.py),
independent of the process count; each run divides the units without a result file among its
processes and commits each unit's result file atomically when complete (`run`).
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
from blip_jax.inference import with_dtype
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
    """Loads both checkpoints (computing in config.dtype, inference.with_dtype) and checks each
    can do its job and that they read the same images."""
    cap_cfg, cap_params = with_dtype(*checkpoint.load_model(config.captioner_checkpoint),
                                     config.dtype)
    fil_cfg, fil_params = with_dtype(*checkpoint.load_model(config.filter_checkpoint),
                                     config.dtype)
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


def process_units(config: ml_collections.ConfigDict, workdir: str, plan: output.UnitPlan,
                  units: Sequence[int], sources: list[tuple[str, str]], data_dir: str,
                  devices: Sequence[jax.Device], image_size: int, steps_factory, *,
                  max_units: Optional[int] = None, show_progress: bool = True) -> dict[str, float]:
    """Computes and commits the result file of each of `units` (ascending) that is not already in
    `workdir`, in order, reading only their records; max_units: stop after committing that many.
    Returns {"images": records committed now, "units": units committed now, "timed_images" /
    "seconds": the images after the first batch (which includes compilation) and their time}."""
    from blip_jax.data.pipeline import scan_records  # grain is slow to import

    done = plan.done(workdir)  # a unit another run committed since the list was made is kept
    units = [u for u in units if u not in done][:max_units]
    stats = {"images": 0, "units": 0, "timed_images": 0, "seconds": 0.0}
    if not units:
        return stats
    steps = steps_factory()
    rows = len(devices) * config.per_device_batch
    ranges = [plan.bounds(u) for u in units]
    length = sum(plan.size(u) for u in units)
    batches = scan_records(data_dir, sources, batch_size=rows, image_size=image_size,
                           max_words=config.max_words, max_tokens=config.max_tokens,
                           worker_count=config.workers, ranges=ranges)
    progress = _Progress(length, 0, enabled=show_progress)
    current, buffer, t_first = 0, [], None  # the unit being filled (index into units), its records

    def consume(pos0: int, batch, result) -> None:
        nonlocal current, buffer, t_first
        captions, synth, web = result
        for row in range(min(rows, length - pos0)):  # the rest is the last batch's padding
            rec = _record(batch, row, captions, synth, web, config.threshold)
            expected = ranges[current][0] + len(buffer)
            if rec["index"] != expected:
                raise RuntimeError(f"scan_records gave record {rec['index']} where record {expected} "
                                   f"(unit {units[current]}) was expected")
            buffer.append(rec)
            stats["timed_images"] += t_first is not None
            if len(buffer) == plan.size(units[current]):  # the unit is complete: commit it
                plan.write(workdir, units[current], buffer)
                stats["images"] += len(buffer)
                stats["units"] += 1
                current, buffer = current + 1, []
                progress.update(stats["images"])
        if t_first is None:
            t_first = time.time()  # the first batch includes compilation: not timed

    pending = None
    for number, batch in enumerate(_prefetch(batches)):
        pos0 = number * rows
        if pos0 >= length:
            break
        device_batch = {k: batch[k].reshape(len(devices), config.per_device_batch, *batch[k].shape[1:])
                        for k in ("image", "text_ids", "text_mask", "index")}
        handle = steps.dispatch(device_batch)  # async: runs while the previous batch is finished
        if pending is not None:
            consume(pending[0], pending[1], steps.finish(pending[2]))
        pending = (pos0, batch, handle)
    if pending is not None:
        consume(pending[0], pending[1], steps.finish(pending[2]))
    progress.close()
    if current < len(units):
        raise RuntimeError(f"the input ended before units {units[current:]} were complete")
    stats["seconds"] = time.time() - t_first if t_first else 0.0
    return stats


def shared_todo(plan: output.UnitPlan, workdir: str, process_index: int, distributed: bool) -> list[int]:
    """The units still to do, one list on every process: process 0 deletes what killed writers
    left and lists the result files; between real processes (jax.distributed) the others take
    its list, so none lists after a peer has committed a unit of this run."""
    mask = np.zeros(plan.num_units, np.uint8)  # 1: done
    if process_index == 0 or not distributed:
        if process_index == 0:
            plan.remove_partial(workdir)
        mask[sorted(plan.done(workdir))] = 1
    if distributed:
        from jax.experimental import multihost_utils
        mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return [u for u in range(plan.num_units) if not mask[u]]


def _sync(distributed: bool, name: str) -> None:
    if distributed:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def run(config: ml_collections.ConfigDict, workdir: str, *,
        devices: Optional[Sequence[jax.Device]] = None, process_index: Optional[int] = None,
        process_count: Optional[int] = None, todo: Optional[Sequence[int]] = None,
        max_units: Optional[int] = None) -> dict[str, Any]:
    """Runs (or resumes) CapFilt; returns the summary (also in workdir/summary.json).

    The records are divided into units of records_per_shard (output.py); the units without a
    result file are divided among the processes (every count-th each), each unit committed when
    complete, so a run resumes any earlier one, with any number of processes. Once every unit is
    done: the webdataset shards (output_format "webdataset"/"both"), each process writing those of
    its share of the units, then on process 0 the TFDS dataset ("array_record"/"both"), the
    release-format JSONs and the summary.

    devices: the local devices to pmap over (default: all of this process's devices).
    process_index / process_count: this process's place among the job's (default: jax's). Given
    in a single jax process, they simulate one process of a multi-process run: no barriers, and
    the output phase runs only once no unit is left (process 0 writes any shard missing).
    todo: the units to divide (default: those without a result file, as process 0 lists them);
    a simulation of several processes in one passes each the same list.
    max_units: stop after committing this many units in this process (a time-boxed run).
    A run that ends with units left returns {"finished": False, "units", "units_done", ...}."""
    from blip_jax.capfilt import webdataset_output as wds
    from blip_jax.capfilt.dataset import BlipCapfilt, write_dataset
    from blip_jax.data.sources import RecordSource
    from blip_jax.data.synthetic import IS_NOISE, WEB_TEXT_KINDS

    check_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    data_dir = os.path.abspath(os.path.expanduser(config.data_dir))
    devices = list(devices or jax.local_devices())
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, process_count={count})")
    distributed = jax.process_count() > 1  # barriers and process 0's unit list: real processes only
    if distributed and (index, count) != (jax.process_index(), jax.process_count()):
        raise ValueError(f"process {index} of {count} given under jax.distributed, which runs process "
                         f"{jax.process_index()} of {jax.process_count()}")
    sources = resolve_sources(config)
    records_source = RecordSource(data_dir, sources)  # one shard: every record
    total = len(records_source)
    plan = output.UnitPlan(total, config.records_per_shard)
    formats = _formats(config)
    per_image = 1 + config.num_captions  # texts per image: the web text and the synthetic captions
    if "webdataset" in formats:
        wds.check_keys(total, per_image)
    models = load_models(config)  # checked before the workdir records these settings
    output.check_layout(workdir)
    fingerprint = {k: config[k] for k in RESULT_KEYS}
    if config.dtype != "float32":  # float32 is what a workdir without the key computed
        fingerprint["dtype"] = config.dtype
    fingerprint.update(total_records=total)
    output.check_job(workdir, fingerprint)
    wds_dir = _webdataset_dir(config, workdir) if "webdataset" in formats else None
    if wds_dir:
        wds.check_origin(wds_dir, workdir)  # before the work: a folder of another run is an error
    if todo is None:
        todo = shared_todo(plan, workdir, index, distributed)
    elif list(todo) != sorted(set(todo)) or any(not 0 <= u < plan.num_units for u in todo):
        raise ValueError(f"todo must be ascending distinct units in [0, {plan.num_units}); got {list(todo)[:10]}")
    stats = process_units(config, workdir, plan, output.assign(list(todo), index, count), sources,
                          data_dir, devices, models.captioner.config.vision.image_size,
                          lambda: Steps(models, config, devices), max_units=max_units,
                          show_progress=index == 0)
    _sync(distributed, "blip_jax_capfilt_units_done")
    left = plan.todo(workdir)
    if left:  # max_units, or one of several simulated processes: nothing is final yet
        if index == 0:
            print(f"capfilt: {plan.num_units - len(left)}/{plan.num_units} units done; rerun with "
                  f"the same workdir (any number of processes) to continue", file=sys.stderr, flush=True)
        return {"finished": False, "units": plan.num_units, "units_done": plan.num_units - len(left),
                "images_computed_this_run": stats["images"], "units_computed_this_run": stats["units"],
                "devices": len(devices), "processes": count}

    if wds_dir:
        image = lambda i: records_source[i]["image"]  # noqa: E731
        wds.write_shards(wds_dir, workdir, plan, output.assign(range(plan.num_units), index, count),
                         image, per_image)
        _sync(distributed, "blip_jax_capfilt_webdataset_done")
        if index == 0:  # a simulated process, or one that failed, may have left some unwritten
            wds.write_shards(wds_dir, workdir, plan, range(plan.num_units), image, per_image)

    records = output.load_results(workdir, total, config.records_per_shard)
    summary = output.summarize(records, WEB_TEXT_KINDS, IS_NOISE)
    rate = stats["timed_images"] / stats["seconds"] if stats["seconds"] else None
    summary_path = os.path.join(workdir, output.SUMMARY_FILE)
    if rate is None and os.path.exists(summary_path):  # a rerun of a finished job keeps its figure
        rate = output.read_json(summary_path).get("images_per_sec")
    summary.update(finished=True, units=plan.num_units, devices=len(devices), processes=count,
                   images_computed_this_run=stats["images"], units_computed_this_run=stats["units"],
                   images_per_sec=rate)
    out_dir = os.path.abspath(os.path.expanduser(config.output_data_dir or config.data_dir))
    pairs = output.kept_pairs(records)
    summary["dataset"] = (f"{BlipCapfilt.name}/{config.output_name}"
                          if pairs and "array_record" in formats else None)
    summary["dataset_dir"] = out_dir
    summary["webdataset"] = wds.describe(wds_dir, plan, pairs) if wds_dir else None
    if index == 0:
        if summary["dataset"]:
            written = write_dataset(data_dir=out_dir, name=config.output_name, pairs=pairs,
                                    source_data_dir=data_dir, sources=sources,
                                    origin=f"capfilt {workdir}")
            assert written == summary["dataset"], (written, summary["dataset"])
        elif not pairs:
            print("capfilt: the filter kept no text: no dataset written", file=sys.stderr)
        if wds_dir:
            wds.write_manifest(wds_dir, workdir, summary["webdataset"], per_image)
        summary["json"] = list(output.write_release_json(workdir, records))
        output.write_json_atomic(summary_path, summary)
        print(output.format_summary(summary), flush=True)
    _sync(distributed, "blip_jax_capfilt_outputs_done")
    return summary


def _formats(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return {"array_record": ("array_record",), "webdataset": ("webdataset",),
            "both": ("array_record", "webdataset")}[config.output_format]


def _webdataset_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    from blip_jax.capfilt.webdataset_output import DEFAULT_DIR
    return os.path.abspath(os.path.expanduser(config.webdataset_dir or os.path.join(workdir, DEFAULT_DIR)))
