# %% [markdown]
# # A trained generator in a notebook: load, sample, rank by CLIP, style-mix
#
# `examples/notebook.ipynb` and `examples/notebook.py` hold the same cells (the script is the source;
# `python examples/sync_notebook.py` rewrites the notebook). Runs on a CPU;
# set `NETWORK` to a snapshot, an official `.pkl`, a URL, a training run folder or a published name (`ffhq`,
# `stylegan3-r-afhqv2-512x512`, ...) and `CLIP_MODEL` to a CLIP folder or a name (`ViT-B/32`,
# `openai/clip-vit-base-patch32`); names are downloaded once into `$SG2_CACHE_DIR`. The command-line
# equivalent of the ranking is `python -m stages.generate rank --network ... --prompt ... --clip ...`.

# %%
import os

import numpy as np
import torch

import models
from models.clip import load_clip

try:
    from IPython.display import display
except ImportError:  # run as a plain script: print what a notebook would show
    display = print

NETWORK = os.environ.get("SG2_NOTEBOOK_NETWORK", "ffhq")
CLIP_MODEL = os.environ.get("SG2_NOTEBOOK_CLIP", "ViT-B/32")
PROMPTS = ["a smiling face", "a face with glasses"]
SEEDS = list(range(int(os.environ.get("SG2_NOTEBOOK_SEEDS", "64"))))
TRUNC = 0.7     # truncation psi
TOP_K = 9
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# %% [markdown]
# ## Load
# `models.load_network(path)` returns the official dict (`G`, `D`, `G_ema`, ...); an open file works as with
# the official `legacy.load_network_pkl(f)`. Official pickles are imported without running code stored in them.

# %%
if os.path.isfile(NETWORK):
    with open(NETWORK, "rb") as f:
        G = models.load_network_pkl(f)["G_ema"]
else:
    G = models.load_network(NETWORK)["G_ema"]
G = G.to(device)
print(f"{type(G).__name__}: {G.img_resolution} px, z_dim {G.z_dim}, c_dim {G.c_dim}, {G.num_ws} ws")

# %% [markdown]
# ## Sample a grid
# Seeds map to latents as in the official `generate.py`; `G(z, c, truncation_psi, noise_mode)` is the official call.


# %%
def latents(seeds: list[int]) -> torch.Tensor:
    """z for each seed: np.random.RandomState(seed).randn(z_dim), the official rule."""
    z = np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds])
    return torch.from_numpy(z).float().to(device)


label = torch.zeros([1, G.c_dim], device=device)
if G.c_dim:
    label[:, 0] = 1  # a conditional network: class 0


@torch.no_grad()
def render(seeds: list[int], batch: int = 16) -> torch.Tensor:
    parts = []
    for i in range(0, len(seeds), batch):
        z = latents(seeds[i : i + batch])
        parts.append(G(z, label.expand(len(z), -1), truncation_psi=TRUNC, noise_mode="const").cpu())
    return torch.cat(parts)  # [N, C, H, W] in [-1, 1]


images = render(SEEDS)
models.grid(images[:32], nrow=8)

# %% [markdown]
# ## Rank by CLIP
# `clip.score(images, texts)` is CLIP's cosine similarity [images x texts], with OpenAI's preprocessing.

# %%
clip = load_clip(CLIP_MODEL, device=device)
scores = clip.score(images, PROMPTS).cpu()  # [N, P]
k = min(TOP_K, len(SEEDS))
for p, prompt in enumerate(PROMPTS):
    best = torch.argsort(scores[:, p], descending=True, stable=True)[:k]
    print(prompt, [(SEEDS[i], round(float(scores[i, p]), 3)) for i in best])
    display(models.grid(images[best], nrow=3))

# %% [markdown]
# ## Style mixing
# The first seed's ws with the coarse, middle or fine layers taken from the second seed (StyleGAN, Fig. 3).

# %%
with torch.no_grad():
    ws = G.mapping(latents(SEEDS[:2]), label.expand(2, -1), truncation_psi=TRUNC)  # [2, num_ws, w_dim]
    third = max(G.num_ws // 3, 1)
    mixes = []
    for styles in (range(0, third), range(third, 2 * third), range(2 * third, G.num_ws)):
        w = ws[:1].clone()
        w[:, styles] = ws[1, styles]
        mixes.append(G.synthesis(w, noise_mode="const").cpu())
    sources = G.synthesis(ws, noise_mode="const").cpu()
models.grid(torch.cat([sources, *mixes]), nrow=5)  # seed A, seed B, A with B's coarse / middle / fine styles
