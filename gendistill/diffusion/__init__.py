"""Pure diffusion math: preconditioning, training noise, samplers, guidance. Used by every objective."""
from gendistill.diffusion import noise, precond, samplers
from gendistill.diffusion.noise import expand
from gendistill.diffusion.samplers import euler_sampler, guided, heun_nfe, heun_sampler, karras_sigmas
