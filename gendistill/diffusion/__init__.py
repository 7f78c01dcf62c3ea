"""Pure diffusion math: preconditioning, training noise, the denoising loss, samplers, guidance. Used by every
objective."""
from gendistill.diffusion import guidance, losses, noise, precond, samplers
from gendistill.diffusion.guidance import bind_denoiser, guided_apply
from gendistill.diffusion.noise import expand
from gendistill.diffusion.samplers import euler_sampler, heun_nfe, heun_sampler, karras_sigma, karras_sigmas
