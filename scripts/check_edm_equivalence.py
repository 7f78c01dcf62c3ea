"""Max abs error of our networks against reference outputs of the official NVlabs/edm code.

  python scripts/check_edm_equivalence.py DIR      (DIR from scripts/make_edm_fixtures.py, tiny or --published)

Prints one line per case: max |ours - official| of the denoiser output over sigma in 0.002 .. 80, with and
without class labels (float32, CPU).
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gendistill.convert import testing  # noqa: E402  pylint: disable=g-import-not-at-top


def main(directory):
  worst = 0.0
  for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
    if os.path.basename(path).startswith("edm_format"):
      continue
    errors = testing.fixture_errors(path)
    worst = max(worst, errors["cond"], errors["uncond"])
    print(f"{os.path.basename(path)[:-4]:28s} max abs error: with labels {errors['cond']:.2e}, "
          f"without {errors['uncond']:.2e}; divided by max(1, sigma): {errors['cond_per_sigma']:.2e}, "
          f"{errors['uncond_per_sigma']:.2e}")
  print(f"worst {worst:.2e}")


if __name__ == "__main__":
  main(sys.argv[1])
