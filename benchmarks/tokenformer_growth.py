"""TokenFormer growth on the trained zoo model: how far each form of ``grow`` moves the logits.

1. Load ``models/tokenformer-recall`` in float64 and 64 rows of recall's test split (seed 0).
2. For 16, 64 and 256 new parameter tokens per Pattention, grow a copy with the scale factor kept
   (``preserve=True``, the function-preserving form) and with the paper's recomputed factor
   (``preserve=False``), and print the largest absolute logit change of each and their ratio.

Run: ``OMP_NUM_THREADS=1 python benchmarks/tokenformer_growth.py``.
"""

import torch

from workbench.architectures.growth import grow, logit_change
from workbench.store.model_files import load_model_folder
from workbench.tasks import make_task


def main() -> None:
    model = load_model_folder("models/tokenformer-recall").model.double().eval()
    tokens = make_task("recall").sample("test", 64, 0).tokens
    print("new tokens | kept factor: max logit change | paper's form | ratio")
    with torch.no_grad():
        for n in (16, 64, 256):
            kept = logit_change(model, tokens, grow, n_new=n, preserve=True)
            paper = logit_change(model, tokens, grow, n_new=n, preserve=False)
            print(f"{n:10d} | {kept:.2e} | {paper:.2f} | {paper / max(kept, 1e-300):.1e}")


if __name__ == "__main__":
    main()
