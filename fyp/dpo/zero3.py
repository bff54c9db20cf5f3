"""The transformer built partitioned from the start (ZeRO-3 `deepspeed.zero.Init`), and its weights loaded.

Without zero.Init every rank first materialises the whole model (FLUX.1 Fill: 12B parameters, 24 GB in bf16,
48 GB in fp32) and DeepSpeed partitions it only in `deepspeed.initialize`. Under zero.Init each parameter is
partitioned as soon as its module is constructed (rank 0's values broadcast, so every rank holds the same
model); the weights are then copied in one module at a time: the module's own parameters are gathered
(`GatheredParameters`, modifier rank 0), rank 0 copies the tensors from the source, and DeepSpeed broadcasts
and re-partitions them on leaving the context. Peak per rank: its partition plus one module's parameters.

Weight sources (`WeightSource`): a state dict (the tiny model: its seeded weights built on the CPU exactly as
the sampler builds them, so the start is the sampler's model on every device), or a diffusers folder of
safetensors files (one file, or shards with an index), read one tensor at a time. diffusers 0.42 has no
ZeRO-3 integration of its own (transformers' `from_pretrained` has one, diffusers' does not).

The frozen reference is a `partitioned_copy` of the freshly built policy: each rank copies its own
partitions, so the weights are read and broadcast once, not twice.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = SAFETENSORS_NAME + ".index.json"


# safetensors dtype names -> torch dtypes (the ones a diffusers transformer is saved in)
_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(tensor entries {key: {dtype, shape, data_offsets}}, byte offset of the data) of a safetensors file."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class WeightSource:
    """Tensors by state-dict key: from a dict in memory, or read one at a time from safetensors files.

    Files are read with plain reads at each tensor's offset, not memory-mapped: a mapping of the whole
    file (safetensors' `safe_open`) keeps every page it touched resident in this process until it is
    closed, which put the whole model (+600 MB of 608 MB measured) into rank 0's RSS during the load.
    """

    def __init__(self, state: dict | None = None, entries: dict[str, tuple[Path, dict, int]] | None = None):
        self._state, self._entries = state, entries

    @classmethod
    def from_folder(cls, folder: Path | str) -> "WeightSource":
        folder = Path(folder)
        index = folder / SAFETENSORS_INDEX
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (folder / SAFETENSORS_NAME).exists():
            files = [SAFETENSORS_NAME]
        else:
            raise FileNotFoundError(f"{folder} has neither {SAFETENSORS_NAME} nor {SAFETENSORS_INDEX}")
        entries = {}
        for name in files:
            header, start = safetensors_header(folder / name)
            entries.update({key: (folder / name, info, start) for key, info in header.items()})
        return cls(entries=entries)

    def keys(self) -> set[str]:
        return set(self._state if self._state is not None else self._entries)

    def get(self, key: str) -> torch.Tensor:
        if self._state is not None:
            return self._state[key]
        path, info, start = self._entries[key]
        if info["dtype"] not in _ST_DTYPES:
            raise RuntimeError(f"{path}: tensor {key} has dtype {info['dtype']}, not one of {', '.join(_ST_DTYPES)}")
        begin, end = info["data_offsets"]
        buffer = bytearray(end - begin)
        with open(path, "rb") as handle:
            handle.seek(start + begin)
            handle.readinto(buffer)
        if not buffer:
            return torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
        return torch.frombuffer(buffer, dtype=_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


def transformer_folder(pretrained: str) -> Path:
    """The local `transformer/` folder of a diffusers FLUX checkpoint (a local folder or a cached hub id)."""
    local = Path(pretrained) / "transformer"
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(pretrained, allow_patterns=["transformer/*"])) / "transformer"


def build_partitioned(config: dict, source: WeightSource, ds_config: dict, dtype: torch.dtype, model_class=None):
    """`model_class.from_config(config)` (default FluxTransformer2DModel) built under zero.Init, in `dtype`,
    holding `source`'s weights."""
    import deepspeed
    from diffusers import FluxTransformer2DModel

    model_class = model_class or FluxTransformer2DModel
    # The precision comes from ds_config (bf16 enabled or not), not from Init's `dtype` argument, which
    # DeepSpeed 0.19.8 ignores on an accelerator reporting no fp16 support (`dtype or torch.float16 if
    # fp16_supported else ...` parses as `(dtype or torch.float16) if ... else ...`).
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = model_class.from_config(config)
    wrong = {p.dtype for p in model.parameters()} - {dtype}
    if wrong:
        raise RuntimeError(f"zero.Init built the transformer in {wrong}, expected {dtype}: the DeepSpeed config's "
                           f"bf16 setting must match model.dtype")
    load_partitioned(model, source)
    return model


def copies_partitions(ds_config: dict) -> bool:
    """Whether `partitioned_copy` can be used: not with parameters offloaded to NVMe, whose partitions
    live in swap files rather than in `ds_tensor`."""
    offload = (ds_config.get("zero_optimization") or {}).get("offload_param") or {}
    return str(offload.get("device", "none")).lower() != "nvme"


def partitioned_copy(model, ds_config: dict):
    """A second zero.Init-built transformer holding `model`'s weights (the frozen DPO reference).

    Built from the same config under the same partitioning, each rank's parameter partitions line up with
    `model`'s, so the weights are copied partition to partition: no rank gathers a parameter and nothing
    is read from disk again (building the reference from the weight source would read and broadcast the
    whole model a second time). `model` must not be wrapped by DeepSpeed or given LoRA layers yet, and
    its parameters must not be offloaded to NVMe (`copies_partitions`).
    """
    if not copies_partitions(ds_config):
        raise RuntimeError("partitioned_copy: parameters offloaded to NVMe have no partition in memory to copy")
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        twin = type(model).from_config(dict(model.config))
    theirs, mine = dict(model.named_parameters()), dict(twin.named_parameters())
    if theirs.keys() != mine.keys():
        raise RuntimeError("partitioned_copy: the model's parameters differ from its config's (LoRA added?)")
    with torch.no_grad():
        for name, param in mine.items():
            source = theirs[name]
            if source.ds_status != ZeroParamStatus.NOT_AVAILABLE or source.ds_tensor.shape != param.ds_tensor.shape \
                    or source.ds_tensor.dtype != param.ds_tensor.dtype:
                raise RuntimeError(f"partitioned_copy: {name} is not partitioned like its copy "
                                   f"({source.ds_status}, {tuple(source.ds_tensor.shape)} {source.ds_tensor.dtype}"
                                   f" vs {tuple(param.ds_tensor.shape)} {param.ds_tensor.dtype})")
            param.ds_tensor.copy_(source.ds_tensor)
        sources = dict(model.named_buffers())
        for name, buffer in twin.named_buffers():  # buffers are not partitioned: whole on every rank
            buffer.copy_(sources[name])
    return twin


def load_partitioned(model: torch.nn.Module, source: WeightSource) -> None:
    """Copy `source` into a zero.Init-partitioned `model`, module by module; every key must match."""
    import deepspeed
    import torch.distributed as dist

    params = {name for name, _ in model.named_parameters()}
    buffers = {name for name, _ in model.named_buffers()}
    expected = params | buffers
    have = source.keys()
    if have != expected:
        missing, unexpected = sorted(expected - have), sorted(have - expected)
        raise RuntimeError(f"the weights do not match the transformer config (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}; {len(missing)} / {len(unexpected)} in all)")
    rank = dist.get_rank() if dist.is_initialized() else 0
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(prefix=prefix, recurse=False))
        if own:
            with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=0):
                if rank == 0:
                    with torch.no_grad():
                        for name, param in own:
                            param.data.copy_(_checked(source.get(name), param.ds_shape, name))
        for name, buffer in module.named_buffers(prefix=prefix, recurse=False):  # not partitioned: every rank
            with torch.no_grad():
                buffer.copy_(_checked(source.get(name), buffer.shape, name))


def _checked(tensor: torch.Tensor, shape, name: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise RuntimeError(f"weight {name} has shape {tuple(tensor.shape)}, the transformer expects {tuple(shape)}")
    return tensor
