"""ftune's three training jobs as a Flyte workflow.

Each task is thin: it writes the recipe, runs `ftune train` on every rank and returns the output
directory. The jobs are Llama-2-7B and Llama-2-13B full fine-tuning on 3 nodes x 8 GPUs (Flyte's
Elastic task, which runs torchrun; ftune reads torchrun's environment) and Llama-2-70B QLoRA on one
8-GPU node.

The recipes and commands are built by plain functions (`recipe_for`, `command_for`), so they can be
checked without flytekit. Where flytekit is missing, this module still imports, says so on stderr,
and defines no Flyte objects.
"""
import json
import os
import subprocess
import sys

JOBS = {
    "llama2-7b-full": {"model": "meta-llama/Llama-2-7b-hf", "method": "full", "nnodes": 3, "nproc_per_node": 8,
                       "micro_batch_size": 1, "grad_accum": 4, "zero": 3, "gpus": 8, "memory": "180Gi"},
    "llama2-13b-full": {"model": "meta-llama/Llama-2-13b-hf", "method": "full", "nnodes": 3, "nproc_per_node": 8,
                        "micro_batch_size": 1, "grad_accum": 4, "zero": 3, "gpus": 8, "memory": "180Gi"},
    # The layers split over the node's 8 GPUs (dist.pipeline), each held under a T4's 15 GiB; fp32
    # AdamW moments for the small adapter, so that its checkpoints (8-bit ones are not taken under a
    # pipeline) survive preemption.
    "llama2-70b-qlora": {"model": "meta-llama/Llama-2-70b-hf", "method": "qlora", "nnodes": 1, "nproc_per_node": 8,
                         "micro_batch_size": 1, "grad_accum": 16, "zero": 0, "pipeline": 8, "optimizer": "adamw",
                         "max_memory": "15GiB", "gpus": 8, "memory": "180Gi"},
}


def recipe_for(job, model_dir, data_path, output_dir, max_steps=1000):
    """The recipe of one job as a dict (written as YAML: JSON is valid YAML)."""
    j = JOBS[job]
    train = {
        "method": j["method"],
        "device": "cuda",
        "micro_batch_size": j["micro_batch_size"],
        "grad_accum": j["grad_accum"],
        "max_steps": max_steps,
        "lr": 2e-5 if j["method"] == "full" else 2e-4,
        "gradient_checkpointing": True,
        "save_every": 100,
        "resume": "auto",
        "grace_s": 25,
    }
    if j["method"] == "qlora":
        train["optimizer"] = j.get("optimizer", "paged_adamw_8bit")
    if "max_memory" in j:
        train["max_memory"] = j["max_memory"]
    recipe = {"model": model_dir, "output_dir": output_dir,
              "data": {"train": data_path, "max_seq_len": 2048},
              "train": train, "dist": {"zero": j["zero"], "pipeline": j.get("pipeline", 1), "timeout_s": 900}}
    if j["method"] != "full":
        recipe["lora"] = {"r": 16, "alpha": 32, "target_modules": "all-linear"}
    return recipe


def command_for(job, recipe_path):
    """The command each rank runs. Elastic tasks: Flyte's Elastic plugin starts torchrun, which starts
    this command on every rank. One-node tasks: ftune starts its own ranks."""
    j = JOBS[job]
    cmd = ["ftune", "train", recipe_path]
    if j["nnodes"] == 1 and j["nproc_per_node"] > 1:
        cmd += ["--nproc-per-node", str(j["nproc_per_node"])]
    return cmd


def run_job(job, model_dir, data_path, output_dir, workdir, max_steps=1000):
    """Writes the recipe and runs ftune; returns output_dir. ftune's exit status 75 means preempted:
    raise so the platform retries, and the retry resumes from the checkpoint."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "recipe.yaml")
    with open(path, "w") as f:
        json.dump(recipe_for(job, model_dir, data_path, output_dir, max_steps), f, indent=2)
    rc = subprocess.call(command_for(job, path))
    if rc != 0:
        raise RuntimeError(f"ftune train exited with status {rc}" + (" (preempted, resumable)" if rc == 75 else ""))
    return output_dir


try:
    from flytekit import PodTemplate, Resources, task, workflow
    from flytekit.types.directory import FlyteDirectory
    from flytekit.types.structured import StructuredDataset
    from flytekitplugins.kfpytorch import Elastic
    from kubernetes.client import V1Container, V1EmptyDirVolumeSource, V1PodSpec, V1Volume, V1VolumeMount
except ImportError as e:  # no flytekit here: the plain functions above still work
    print(f"deploy/flyte/workflow.py: flytekit not importable ({e}); Flyte tasks not defined", file=sys.stderr)
else:
    SHM = PodTemplate(pod_spec=V1PodSpec(
        containers=[V1Container(name="primary", volume_mounts=[V1VolumeMount(name="dshm", mount_path="/dev/shm")])],
        volumes=[V1Volume(name="dshm", empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit="16Gi"))],
        termination_grace_period_seconds=30))
    IMAGE = os.environ.get("FTUNE_IMAGE", "ftune:0.1.0")

    def _task(job):
        j = JOBS[job]
        elastic = Elastic(nnodes=j["nnodes"], nproc_per_node=j["nproc_per_node"],
                          rdzv_configs={"timeout": 1200, "join_timeout": 900}) if j["nnodes"] > 1 else None
        res = Resources(gpu=str(j["gpus"]), cpu="48", mem=j["memory"], ephemeral_storage="200Gi")

        @task(task_config=elastic, requests=res, limits=res, pod_template=SHM, container_image=IMAGE, retries=3)
        def train(model: str, data: StructuredDataset) -> FlyteDirectory:
            # The dataset's location: a directory of Parquet files, which ftune reads as data.train
            # (a local path, or a mounted bucket; remote URIs need the platform to mount them).
            local = data.uri
            out = os.path.join(os.getcwd(), "out")
            return FlyteDirectory(run_job(job, model, local, out, os.path.join(os.getcwd(), "work")))

        train.__name__ = job.replace("-", "_")
        return train

    llama2_7b_full = _task("llama2-7b-full")
    llama2_13b_full = _task("llama2-13b-full")
    llama2_70b_qlora = _task("llama2-70b-qlora")

    @workflow
    def fine_tune(data: StructuredDataset) -> (FlyteDirectory, FlyteDirectory, FlyteDirectory):
        return (llama2_7b_full(model=JOBS["llama2-7b-full"]["model"], data=data),
                llama2_13b_full(model=JOBS["llama2-13b-full"]["model"], data=data),
                llama2_70b_qlora(model=JOBS["llama2-70b-qlora"]["model"], data=data))
