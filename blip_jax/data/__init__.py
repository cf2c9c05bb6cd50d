"""Data: TFDS datasets (array_record), the built-in synthetic data, and the grain input pipeline.

prepare (CLI, ensure_synthetic), builders (TFDS builders), annotations (annotation file parsing),
synthetic (scenes, rendering, captions, noise), pipeline (make_train_loader, make_eval_data,
scan_records), transforms (augmentation), sources (sharded record access), export (image files
out of a dataset), report (DataError, SkipReport), worker_lifetime (grain workers end with
their parent). VQA: vqa_builders (one record per question, answer lists), synthetic_vqa
(questions with annotator answers about the synthetic scenes), vqa_pipeline
(make_vqa_train_loader, vqa_eval_batches). NLVR2: nlvr_builders (one record per image pair and
sentence), synthetic_nlvr (true/false statements about pairs of synthetic scenes), nlvr_pipeline
(make_nlvr_train_loader with the pair swap, nlvr_eval_batches). Import the module you need: the
pipeline brings in grain, which is slow to import.
"""
