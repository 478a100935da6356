"""StyleGAN3 (Karras et al. 2021, "Alias-Free Generative Adversarial Networks") generator with the
official constructor arguments and state_dict names: `filters` (lowpass design), `schedule` (per-layer
cutoffs, sampling rates, sizes, channels), `mapping`, `synthesis_input` (Fourier features),
`synthesis_layer`, `synthesis`, `generator`. The discriminator of StyleGAN3 is StyleGAN2's
(`models.stylegan2.discriminator`)."""
