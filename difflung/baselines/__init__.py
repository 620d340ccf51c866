"""GAN baselines of the Diff-Lung comparison: Pix2Pix and SPADE, conditioned on one-hot label masks.

    from difflung.baselines import GanTrainConfig, train_gan, load_generator, generate
    gen_dir = train_gan(Dataset(path), GanTrainConfig(model="spade-S", steps=300, batch_size=8), out_dir)
    G = load_generator(gen_dir)
    images = generate(G, labels, G.difflung_config["model"]["classes"], batch_size=16, device="cpu")
"""
from difflung.baselines.gan_train import GanTrainConfig, generate, load_generator, one_hot, read_loss_log, rng_scope, train_gan
from difflung.baselines.registry import BASELINES, baseline_name, build_models, model_config

__all__ = ["BASELINES", "GanTrainConfig", "baseline_name", "build_models", "generate",
           "load_generator", "model_config", "one_hot", "read_loss_log", "rng_scope", "train_gan"]
