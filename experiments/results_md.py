"""Writing the experiments' markdown tables: regenerated from results, with the hand-written reading kept."""
import os

FINDINGS = "## Findings"


def write(path: str, lines) -> str:
  """Writes `lines` to `path`, keeping the '## Findings' section (and what follows) of the existing file."""
  text = "\n".join(lines).rstrip("\n") + "\n"
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    if FINDINGS in previous:
      text += "\n" + previous[previous.index(FINDINGS):].rstrip("\n") + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text
