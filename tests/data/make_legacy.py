"""Make tests/data/legacy-*: models saved by colddiff before the objective/pipeline refactor (commit edafa97), with
the images that code produced from them, so the refactored loaders can be compared with the old path."""
import torch, lightning as L, json, os, shutil
from safetensors.torch import save_file
import colddiff.degradations as cd
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.priors import GaussianNoisePrior, ChannelMeanPrior
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.export import export_model, load_model
out = "tests/data"
def net():
    return ConvNeXtUNet(in_channels=1, dim=4, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
results = {}
for name, deg, prior in (("noise", cd.GaussianNoise(6), GaussianNoisePrior()),
                         ("blur", cd.GaussianBlur(6, kernel_size=5, sigma=1.0, final_mean=True), ChannelMeanPrior(1))):
    torch.manual_seed(0)
    m = ColdDiffusion(deg, net(), prior=prior, image_size=16, channels=1, ema_start=0, ema_every=1, ema_decay=0.5,
                      val_sample_batches=0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), prior_fit_images=64)
    tr = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir="/tmp/legacy")
    tr.fit(m, EmbeddedMNISTDataModule(image_size=16, channels=1, batch_size=8, num_workers=0))
    path = f"{out}/legacy-{name}.ckpt"
    ckpt = torch.load("/dev/null") if False else None
    tr.save_checkpoint(path, weights_only=True)  # no optimiser states: small file
    export_model(m, f"{out}/legacy-{name}-export")
    model = load_model(path)
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack([EmbeddedMNISTDataModule(image_size=16, channels=1).make_dataset("test", __import__("colddiff.datasets", fromlist=["ImageTransform"]).ImageTransform(16, 1, train=False))[i] for i in range(4)])
    rec = model.reconstruct(x0, generator=torch.Generator().manual_seed(1))
    gen, _ = model.generate(4, torch.Generator().manual_seed(2))
    t = torch.tensor([1, 3, 5, 6])
    results[f"{name}.x0"] = x0
    results[f"{name}.restore"] = model.restore(rec.degraded, t)
    results[f"{name}.direct"] = rec.direct
    results[f"{name}.sampled"] = rec.sampled
    results[f"{name}.generated"] = gen
    results[f"{name}.generated_export"] = load_model(f"{out}/legacy-{name}-export").generate(4, torch.Generator().manual_seed(2))[0]
save_file({k: v.contiguous() for k, v in results.items()}, f"{out}/legacy-outputs.safetensors")
