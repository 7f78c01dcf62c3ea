"""`fdistill`: f-divergence distribution matching (Xu, Nie, Vahdat 2025; docs/objectives/score_distillation.md).

The gradient of D_f(p || q_theta) through the diffused marginals is
  -E[h(r(x_t)) (grad log p_t - grad log q_theta,t)^T dx_t/dtheta],  r = p_t / q_theta,t,  h(r) = r^2 f''(r),
i.e. DMD's distribution-matching gradient with a per-sample weight h(r). The score difference is DMD's
normalised denoiser difference (dmd.py); the density ratio comes from the DMD2 classifier on the fake score's
bottleneck, trained with the non-saturating BCE losses (optimal logit ln p_t/q_t), evaluated at the DM loss's
own (x_t, sigma_t): r = clamp(exp(clamp(logit, -10, 10)), 0.1, 20), detached, and h normalised by its batch
mean, h / (mean h + 1e-6). Generator loss L_f-DM + 1e-3 L_G,adv; fake score and classifier as DMD2 (L_fake +
1e-2 L_D, joint clip 10), TTUR 5. Divergences (h up to the constant that the batch normalisation removes):
reverse_kl (h = 1: exactly DMD2 with a 1/(1 + 1e-6) factor), softened_rkl, js, squared_hellinger, forward_kl,
jeffreys, neyman_chi2 (score_common.F_DIVERGENCES).

Only NVIDIA's reimplementation is public; not implemented
here: the optional per-time-bin normalisation of r, and a classifier on the teacher's features (the head sits
on the fake score's bottleneck, as in DMD2).
"""
import functools

import ml_collections

from gendistill.objectives import base, dmd, register
from gendistill.objectives import score_common as sc


def default_config() -> ml_collections.ConfigDict:
  c = dmd.dmd2_default_config()
  c.gen_gan_weight = 1e-3
  c.update(dict(
      divergence="js",          # one of score_common.F_DIVERGENCES
      logit_clamp=10.0,
      ratio_min=0.1,
      ratio_max=20.0,
      normalize_h=True,         # h / (batch mean h + 1e-6)
  ))
  return c


@register("fdistill", default_config, dmd.roles)
def build(cfg, networks, spec, run: base.RunFacts) -> base.Objective:
  sc.f_divergence_weight(cfg.divergence)   # validates the name
  f_weight = functools.partial(dmd.f_divergence_weights, divergence=cfg.divergence, logit_clamp=cfg.logit_clamp,
                               ratio_min=cfg.ratio_min, ratio_max=cfg.ratio_max, normalize=cfg.normalize_h)
  return dmd.build_dmd_family(cfg, networks, spec, run, "fdistill", f_weight=f_weight)
