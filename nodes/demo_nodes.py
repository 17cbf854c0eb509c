"""PSLD_DemoModelLoader: the bundled Fashion-MNIST demo prior as MODEL, VAE and CONDITIONING (logic in
demo_model.py), so PSLD can be tried with nothing downloaded."""
from __future__ import annotations

from comfy_api.latest import io

from .demo_model import ANY, DEMO_WEIGHTS, NODE_ID, file_fingerprint, load_demo_prior, subject_options

CATEGORY = "image/restoration/PSLD/demo"


class PSLDDemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_ID,
            display_name="PSLD Demo Model Loader",
            category=CATEGORY,
            description=("Loads the small demo diffusion model bundled with the pack (gray 32x32 Fashion-MNIST "
                         "clothing: a latent diffusion prior with its own VAE and one token per class), to try PSLD "
                         "with nothing downloaded. Its MODEL, VAE and CONDITIONING work with every node that takes "
                         "an SD checkpoint's (KSampler, VAE Encode/Decode, the PSLD nodes). Use 32x32 images "
                         "(operator width and height 32); sampling takes seconds on a CPU."),
            inputs=[
                io.Combo.Input("subject", options=subject_options(), default=ANY,
                               tooltip="What the positive conditioning asks for: a Fashion-MNIST class, or 'any' "
                                       "(unconditional: the model's own prior over all classes, as in the PSLD "
                                       "paper). With 'any', cfg does nothing: use cfg 1.0 (half the cost)."),
            ],
            outputs=[
                io.Model.Output(display_name="model",
                                tooltip="The diffusion model (eps prediction, SD's noise schedule), for KSampler or "
                                        "the PSLD samplers. A copy: patching it never affects other runs."),
                io.Vae.Output(display_name="vae",
                              tooltip="The demo VAE: a 32x32 image <-> a 4x8x8 latent (4x smaller, where SD's is "
                                      "8x). Images are gray (R = G = B) in 0..1."),
                io.Conditioning.Output(display_name="positive",
                                       tooltip="The subject's class token, for the positive input of a sampler."),
                io.Conditioning.Output(display_name="negative",
                                       tooltip="The 'any' (unconditional) token, for the negative input. With cfg "
                                               "above 1 it steers samples towards the subject."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return file_fingerprint(DEMO_WEIGHTS)  # run again when the weights file is replaced

    @classmethod
    def execute(cls, *, subject) -> io.NodeOutput:
        prior = load_demo_prior(DEMO_WEIGHTS)
        positive = prior.conditioning(subject)  # checks the subject against the file's classes
        return io.NodeOutput(prior.model.clone(), prior.vae, positive, prior.conditioning(ANY))


NODES = [PSLDDemoModelLoader]
