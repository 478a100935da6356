"""StyleGAN2 (Karras et al. 2020) generator and discriminator with the official constructor arguments
and state_dict names: `mapping`, `synthesis`, `generator`, `discriminator`."""
