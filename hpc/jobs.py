"""`jobs/`: the stages as plain sbatch scripts, rendered by the same code hpc submits with.

    python -m hpc.jobs write [DIR]   regenerate jobs/*.sbatch (a test fails when they drift)
    python -m hpc.jobs plan RUN      one line per available stage: `stage shards variant,variant|-`
                                     (what jobs/chain.sh submits)

The templates take the resources of `cluster_configs/slurm-local.yaml`; on another cluster pass
sbatch options on the command line (they override #SBATCH lines), e.g. SBATCH_ARGS for chain.sh.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fyp.stages import PIPELINE

from . import clusters, render

JOBS_DIR = Path(__file__).resolve().parent.parent / "jobs"
TEMPLATE_CLUSTER = "slurm-local"


def rendered() -> dict[str, str]:
    cluster = clusters.load(TEMPLATE_CLUSTER)
    out = {}
    for stage in PIPELINE:
        script = render.task_script(stage, None, cluster.resources(stage), None)
        out[script.path_name] = script.text
    out["finalize.sbatch"] = render.finalize_script("", None, cluster.finalize_resources(PIPELINE[0]), None).text
    return out


def write(folder: Path = JOBS_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered().items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
        paths.append(path)
    return paths


def plan(run_dir: str) -> list[str]:
    from fyp.run import Run
    from fyp.stages import available_stages, get_stage, option_defaults

    run = Run.open(run_dir)
    lines = []
    for name in [s for s in PIPELINE if s in available_stages()]:
        stage = get_stage(name)
        opts = option_defaults(stage.options)
        variants = [v for v in stage.variants(run, opts) if v]
        lines.append(f"{name} {stage.num_shards(run, opts)} {','.join(variants) or '-'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["write"]:
        for path in write(Path(argv[1]) if len(argv) > 1 else JOBS_DIR):
            print(path)
        return 0
    if argv[:1] == ["plan"] and len(argv) == 2:
        print("\n".join(plan(argv[1])))
        return 0
    print("usage: python -m hpc.jobs write [DIR] | plan RUN", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
