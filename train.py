"""Train one LoRA skill from QA pairs and export it as a .lora.arrow card.

    python train.py                                   # the shipped example set, default SmolLM2
    python train.py data.path=QA.jsonl card.path=OUT.lora.arrow model=tiny lora.r=16 trainer.lr=1e-3
"""

import gc
import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")

from autodidact import quiet

quiet.early()  # before lightning/transformers/wandb load: their banners and warnings go to the run log

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from autodidact.errors import AutodidactError
    from autodidact.settings import check_train_config

    try:
        # Every section before torch/Lightning load (quiet.configure imports them): a typo costs a second.
        settings = check_train_config(cfg)
        quiet.configure(verbose=settings.run.verbose)
        # Lightning, torch and transformers are imported now (quiet.configure loads them): their ~10^6
        # objects live as long as the process, so take them out of the cyclic GC. Each full collection
        # then skips them, and so does the one at exit (~1.2 s of a train.py run on this machine).
        gc.freeze()
        from autodidact.train_skill import train

        summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except AutodidactError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if summary is not None:  # None: a ddp process other than the first
        print("\n".join(summary.lines()))


if __name__ == "__main__":
    main()
