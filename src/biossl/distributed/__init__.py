"""Training in several processes: data-parallel replicas (biossl.distributed.replicas: what a
rule sees; biossl.distributed.launch: the processes, set up from torchrun's environment) and
layer-parallel stages (biossl.distributed.pipeline). docs/distributed.md says how to launch."""
