"""Training in several processes, one torchrun launch for both modes: data-parallel replicas
(biossl.distributed.replicas: what a rule sees), layer-parallel stage groups
(biossl.distributed.pipeline, stage_split) and their product. biossl.distributed.launch: the
processes, set up from torchrun's environment, and where each rank sits;
biossl.distributed.part: what each rank trains. docs/distributed.md, docs/layer_parallel.md."""
